"""A training run (the port, Morph, tf_reference) that takes over the folders of a run that was
killed (its lock files left behind, its pid dead: ugatit_common/run_lock.py) went on silently. Now
it says so in one `note:` line naming the folder(s) and the killed run's pid - only then: not on a
clean start, not after a run that ended normally."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from parity_tests.conftest import ROOT
from parity_tests.test_nonfinite_and_flags import CFG, MORPH_CFG, TRAIN
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

# a child that takes a training run's three folders as a run does, says "ready" and is SIGKILLed:
# no clean-up runs (as a lent machine's timeout, an OOM killer)
KILLED_RUN = """
    import os, signal, sys
    from ugatit_common import checkpoint_policy as policy
    from ugatit_common import options as opt
    policy.own_run(opt.Paths(checkpoint=sys.argv[1], result="unused", log=sys.argv[2], sample=sys.argv[3]))
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(paths) -> int:
    """Run and SIGKILL a process holding `paths` (an options.Paths); its pid."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_RUN), paths.checkpoint, paths.log, paths.sample],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    return int(r.stdout.split()[0])


def _notes(out):
    return [ln for ln in out.splitlines() if "took over" in ln]


def _port(root):
    from torch_port.__main__ import main
    return main(TRAIN + ["--iteration", "1", "--epoch", "1"]), opt.run_paths(dict(CFG))


def _morph(root):
    from morph.__main__ import main
    from morph.train import morph_paths
    rc = main(["train", "--config", "C", "--dataset", "t", "--light", "True", "--img_size", "32", "--ch", "2",
               "--n_dis", "4", "--augment_flag", "False", "--iteration", "1", "--epoch", "1", "--print_freq", "100",
               "--save_freq", "100", "--device", "cpu", "--threads", "1"])
    return rc, morph_paths(dict(MORPH_CFG))


@pytest.mark.parametrize("trainer", [_port, _morph], ids=["port", "morph"])
def test_a_run_taking_over_a_killed_runs_folders_says_so_once(trainer, tmp_path, monkeypatch, capsys):
    root = str(tmp_path)
    make_demo_dataset(root, "t", size=32, n_train=1, n_test=1)
    monkeypatch.chdir(root)
    # a clean start: no note
    rc, paths = trainer(root)
    out = capsys.readouterr()
    assert rc == 0, out.err[-800:]
    assert not _notes(out.out + out.err)
    # after a run that ended normally: none either
    rc, _ = trainer(root)
    out = capsys.readouterr()
    assert rc == 0 and not _notes(out.out + out.err), out.err[-800:]
    # the folders of a killed run: one line naming the checkpoint folder and the killed run's pid
    pid = _killed_run(paths)
    assert os.path.exists(os.path.join(paths.checkpoint, ".ugatit-run.owner"))
    rc, _ = trainer(root)
    out = capsys.readouterr()
    assert rc == 0, out.err[-800:]
    notes = _notes(out.out + out.err)
    assert len(notes) == 1 and notes[0].startswith("note: "), notes
    assert repr(paths.checkpoint) in notes[0] and f"pid {pid}" in notes[0], notes[0]
    assert "--sample_dir" in notes[0] and "--log_dir" in notes[0], notes[0]  # its three folders, one line


def test_a_lock_file_without_an_owner_file_is_named_without_a_pid(tmp_path):
    """The lock file alone (a run killed between taking the lock and writing its owner file):
    taken over, said with the pid unknown - unless it is this young (another command opening it
    this very moment), when it is not said (run_lock's sweep_dead rule)."""
    from ugatit_common import checkpoint_policy as policy
    from ugatit_common import run_lock
    paths = opt.Paths(checkpoint=str(tmp_path / "c"), result="r", log=str(tmp_path / "l"), sample=str(tmp_path / "s"))
    for folder in (paths.checkpoint, paths.log, paths.sample):
        os.makedirs(folder)
    lock = os.path.join(paths.checkpoint, run_lock.LOCK_NAME)
    open(lock, "w").close()
    logged = []
    with policy.own_run(paths, log=logged.append):
        pass
    assert logged == []  # a lock file made a moment ago: not taken for a dead run's
    open(lock, "w").close()
    os.utime(lock, (1e9, 1e9))  # made long ago
    with policy.own_run(paths, log=logged.append):
        pass
    assert len(logged) == 1 and repr(paths.checkpoint) in logged[0] and "pid unknown" in logged[0], logged
    assert "--sample_dir" not in logged[0], logged


@pytest.mark.tf
@pytest.mark.slow  # TensorFlow builds the train graph (~30 s)
def test_tf_reference_taking_over_a_killed_runs_folders_says_so_once(tmp_path, monkeypatch, capsys):
    from tf_reference.__main__ import main
    root = str(tmp_path)
    make_demo_dataset(root, "t", size=32, n_train=1, n_test=1)
    monkeypatch.chdir(root)
    args = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--augment_flag",
            "False", "--iteration", "1", "--epoch", "1", "--print_freq", "100", "--save_freq", "100"]
    paths = opt.run_paths(dict(CFG))
    pid = _killed_run(paths)
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err[-800:]
    notes = _notes(out.out + out.err)
    assert len(notes) == 1 and repr(paths.checkpoint) in notes[0] and f"pid {pid}" in notes[0], notes


# a run holding its folder forks a child (as the DataLoader does for --num_workers N), says both pids
# and waits; the test SIGKILLs the run while the child lives on (until its stdin closes)
FORKING_RUN = """
    import os, sys
    from ugatit_common import run_lock
    lock = run_lock.acquire(sys.argv[1])
    child = os.fork()
    if child == 0:
        sys.stdin.read()  # alive until the test closes the pipe
        lock.release()    # a child's release (a forgotten lock): must leave the folder's files alone
        os._exit(0)
    print(os.getpid(), child, flush=True)
    sys.stdin.read()
"""


def _wait_gone(pid):
    """Until process `pid` (an orphan: not ours to reap) has exited - gone or a zombie."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not exit")


def test_a_killed_runs_forked_workers_never_keep_its_folder_locked(tmp_path):
    """A forked child shares its parent's open lock file, and a flock lasts until every copy is
    closed: after a SIGKILL of the run, its DataLoader workers (still alive for seconds) kept the
    folder locked, and the next run was refused naming the dead run's pid ('wait for it to end').
    Now the folder is free the moment the run dies, whatever its children do, and a child never
    removes the lock files of the folder's next holder."""
    from ugatit_common import run_lock
    folder = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FORKING_RUN), folder], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    child, lock = None, None
    try:
        run_pid, child = map(int, p.stdout.readline().split())
        assert run_lock.held_by(folder).pid == run_pid
        p.kill()
        p.wait(timeout=60)
        os.kill(child, 0)  # the worker is still alive
        lock = run_lock.acquire(folder)  # raised FolderInUse before
        assert lock.taken_over is not None and lock.taken_over.pid == run_pid
    finally:
        p.stdin.close()  # the worker reads EOF, calls its release() and exits
        if child is not None:
            _wait_gone(child)
    try:
        # the child's release() of its forgotten lock removed nothing of the folder's new holder
        assert sorted(os.listdir(folder)) == sorted([run_lock.OWNER_NAME, run_lock.LOCK_NAME])
        assert run_lock.held_by(folder).pid == os.getpid()
    finally:
        lock.release()
