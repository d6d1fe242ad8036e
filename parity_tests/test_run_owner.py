"""Issue 19, parts 1 and 3: one owner per run folder, and a checkpoint's weights and state belong
together (README "Checkpoint policy").

Two-process lock tests: run 1 is a real training process (a subprocess, many tiny iterations);
once it holds its folders (`run_lock.held_by` names its pid) and has written a checkpoint, it is
paused with SIGSTOP, so the folders stay exactly as it left them (a checkpoint, maybe a save in
progress, a planted temp file standing for one) while run 2 tries: run 2 exits 2 with one
`error:` line naming the folder and run 1's pid, command and start time, and every file under
run 1's checkpoint, sample and log folders is unchanged (names and SHA-256). Then run 1 is
killed (SIGKILL) and the next run takes the folder at once and resumes from the last checkpoint.

Pairing tests: a converted TF checkpoint written over a run's weights file, a state file of
another run, of another step, with another config: each named, set aside into `unusable/`
intact, and the run resumed from the previous checkpoint - bit for bit the weights a run that
never saw the mismatched pair ends with (so nothing of it was trained on); exit 2 when there is
no other checkpoint. A NaN in the newest checkpoint (torch or TF): exit 2 naming the tensor,
nothing changed. Tiny models (light, 32 px, ch 2, n_dis 4)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from parity_tests.conftest import ROOT
from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from parity_tests.test_nothing_lost import (CFG, MORPH_TINY, PREFIX, TINY, ckdir, digest, make_data,
                                            one_error_line, port, steps, train_args)
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import run_lock

TF_TINY = [a for a in TINY if a not in ("--device", "cpu", "--threads", "1")]
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
LONG = train_args(100000, 1, 1)  # a run that outlives the test (it is killed)


def run_dirs(root, cfg=CFG, checkpoint_dir="checkpoint"):
    md = opt.model_dir(cfg)
    return [os.path.join(str(root), checkpoint_dir, md), os.path.join(str(root), "samples", md),
            os.path.join(str(root), "logs", md)]


def snapshot(folders):
    """{path: sha256} of every file under `folders` (subfolders included)."""
    out = {}
    for top in folders:
        for dirpath, _, names in os.walk(top):
            for n in names:
                p = os.path.join(dirpath, n)
                out[p] = digest(p)
    return out


def start(args, cwd, log_name):
    """A training process (stdout and stderr into a file: a full pipe would stall it)."""
    log = open(os.path.join(str(cwd), log_name), "w")
    p = subprocess.Popen([sys.executable, "-m"] + list(args), cwd=cwd, env=ENV, stdout=log,
                         stderr=subprocess.STDOUT)
    p.log_path = log.name
    log.close()
    return p


def log_of(p):
    with open(p.log_path) as fh:
        return fh.read()[-3000:]


def pause(p, timeout=60):
    """SIGSTOP `p` and wait until every thread of it is stopped: the signal is delivered
    asynchronously, so a snapshot taken right after `kill` could still see a write finish."""
    os.kill(p.pid, signal.SIGSTOP)
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            try:
                with open(f"/proc/{p.pid}/task/{tid}/stat") as fh:
                    states.append(fh.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # a thread that ended meanwhile
                pass
        if states and all(s in "tT" for s in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {p.pid} did not stop in {timeout} s")


def wait_holding(p, folders, need_checkpoint=True, timeout=240):
    """Until process `p` holds all `folders` (and has written a checkpoint into the first); then
    pause it (SIGSTOP): its folders stay as they are while run 2 tries."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert p.poll() is None, log_of(p)
        holders = [run_lock.held_by(f) for f in folders]
        if all(h is not None and h.pid == p.pid for h in holders) and (not need_checkpoint or complete(folders[0])):
            pause(p)
            return holders[0]
        time.sleep(0.1)
    raise AssertionError(f"run 1 did not take {folders} in {timeout} s: {log_of(p)}")


def complete(folder):
    """Steps of the complete checkpoints in `folder` (a save in progress has one file of two)."""
    return [f.step for f in policy.inventory(folder) if f.complete]


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)


def plant_temp_files(folders):
    """Stand-ins for run 1's saves in progress (the sweep of a second run deleted such a file)."""
    for folder, name in zip(folders, (".tmp-inflight.safetensors", ".tmp-inflight.png")):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(b"half a file")


def to_tf(weights, folder, step, tmp_path):
    """A TF checkpoint (with its Adam state) of a port checkpoint, put into `folder` as
    <prefix>.model-<step> (converted elsewhere, then moved in)."""
    import weights_convert as wc
    out = tmp_path / f"tf-{step}"
    assert wc.main(["torch2tf", weights, str(out / f"{PREFIX}.model-{step}")]) == 0
    for p in glob.glob(str(out / f"{PREFIX}.model-{step}.*")):
        shutil.move(p, os.path.join(folder, os.path.basename(p)))
    return os.path.join(folder, f"{PREFIX}.model-{step}")


def assert_refused(rc, err, folder, holder_pid):
    line = one_error_line(err)
    assert rc == 2, err
    assert os.path.relpath(folder) in line or folder in line, line
    assert f"pid {holder_pid}" in line and "started " in line and "command: " in line, line
    assert "in use by another run" in line
    return line


# -- one owner per run folder: torch_port ------------------------------------------------------------

def test_torch_port_run_refuses_a_second_run_then_a_killed_holder_frees_the_folder(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folders = run_dirs(tmp_path)
    p1 = start(["torch_port"] + LONG, tmp_path, "run1.log")
    try:
        holder = wait_holding(p1, folders)
        assert "python -m torch_port" in holder.command and holder.started
        plant_temp_files(folders)
        before = snapshot(folders)
        # run 2, a real process: the same command line (the collision of the issue: it swept run 1's temp file)
        proc = subprocess.run([sys.executable, "-m", "torch_port"] + train_args(3, 1, 1, "--seed", "1"), cwd=tmp_path,
                              env=ENV, capture_output=True, text=True, timeout=300)
        monkeypatch.chdir(tmp_path)
        assert_refused(proc.returncode, proc.stderr, "checkpoint/" + opt.model_dir(CFG), p1.pid)
        assert "Epoch:" not in proc.stdout                             # nothing started
        assert snapshot(folders) == before
        # --resume False would move run 1's checkpoints, samples and logs aside: refused, nothing moved
        rc, out, err = port(train_args(3, 1, 1, "--resume", "False"), monkeypatch, tmp_path, capsys)
        assert_refused(rc, err, "checkpoint/" + opt.model_dir(CFG), p1.pid)
        assert snapshot(folders) == before and "previous-run" not in out
        newest = max(complete(folders[0]))
    finally:
        kill(p1)
    # the kernel let the lock go with the process: the next run takes the folder at once and resumes
    assert run_lock.held_by(folders[0]) is None
    t0 = time.time()
    rc, out, err = port(train_args(newest + 1, 1, 1), monkeypatch, tmp_path, capsys)
    assert rc == 0, err
    assert f"Success to read {PREFIX}.model-{newest} (torch)" in out
    assert "temp file" in out and not os.path.exists(os.path.join(folders[0], ".tmp-inflight.safetensors"))
    # --iteration newest + 1 (not run 1's): the official resume position, batch `newest`, one iteration
    assert steps(folders[0])[-1] == newest + 1, (newest, steps(folders[0]))
    # a run that ended leaves no lock or owner file behind
    assert not [n for f in folders for n in os.listdir(f) if n.startswith(".ugatit-run")]
    print(f"killed holder -> next run done in {time.time() - t0:.1f} s")


def test_a_folder_an_output_is_being_written_into_is_refused(tmp_path, monkeypatch, capsys):
    """tf2torch (or an export) had checked that no run holds its output folder and was writing
    `.tmp-<pid>-*.safetensors` there (minutes, for a large checkpoint) when a training run took
    the folder: its sweep deleted that temp file as a killed save's (the converter then failed on
    a file gone), or the run trained beside a weights file about to appear. A run now refuses a
    folder holding a live output claim (output_guard.claim), naming the output and the command;
    the writer's own re-check after claiming covers the other order."""
    from ugatit_common import output_guard as guard
    make_data(tmp_path)
    folders = run_dirs(tmp_path)
    os.makedirs(folders[0])
    monkeypatch.chdir(tmp_path)
    out = os.path.join(folders[0], "converted.safetensors")
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time; from ugatit_common import output_guard as g\n"
                               "g.claim(sys.argv[1]); print('held', flush=True); time.sleep(600)", out],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        inflight = os.path.join(folders[0], f".tmp-{writer.pid}-abc.safetensors")  # its write in progress
        with open(inflight, "wb") as fh:
            fh.write(b"half a file")
        before = snapshot([os.path.join(str(tmp_path), d) for d in ("checkpoint", "samples", "logs")])
        for extra in ((), ("--resume", "False")):
            rc, out_, err = port(train_args(2, 1, 1, *extra), monkeypatch, tmp_path, capsys)
            line = one_error_line(err)
            assert rc == 2 and "converted.safetensors" in line and f"pid {writer.pid}" in line, line
            assert "Epoch:" not in out_ and os.path.exists(inflight)
            assert snapshot([os.path.join(str(tmp_path), d) for d in ("checkpoint", "samples", "logs")]) == before
            assert not os.path.exists(folders[1]) and not os.path.exists(folders[2])  # the folders it made: gone
    finally:
        kill(writer)
        writer.stdout.close()
    os.remove(inflight)
    assert guard.CLAIM in "".join(os.listdir(folders[0]))                   # the killed writer's claim: left, dead
    assert port(train_args(2, 1, 1), monkeypatch, tmp_path, capsys)[0] == 0   # the writer gone: the folder is free


def test_a_crashed_run_releases_its_folders_in_process(tmp_path, monkeypatch, capsys):
    """A run that ends with an error (here: no usable checkpoint) lets its folders go, so the
    same process (e.g. a notebook) can run again; the refusal names this very process."""
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    assert port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0
    with open(os.path.join(folder, f"{PREFIX}.model-2.state.pt"), "r+b") as fh:
        fh.truncate(50)
    rc, out, err = port(train_args(1, 2, 100), monkeypatch, tmp_path, capsys)
    assert rc == 2 and "none can be used" in one_error_line(err)
    assert run_lock.held_by(folder) is None
    with run_lock.own_folder(folder, "--checkpoint_dir"):
        rc, out, err = port(train_args(1, 2, 100), monkeypatch, tmp_path, capsys)
        assert_refused(rc, err, folder, os.getpid())


def test_sweeping_needs_the_owner_and_knows_every_temp_name(tmp_path):
    """The folder-changing steps need the folder's lock; a sweep without one (a test phase's
    results folder) leaves a folder another run holds alone; the temp names of every writer."""
    folder = str(tmp_path / "ck")
    temps = [".tmp-abc.safetensors", f"{PREFIX}.model-2.meta.tmp{'0a' * 16}", "checkpoint.tmp5f3e",
             f".{PREFIX}.model-3.data.k2_x9q1.tmp", ".checkpoint.a1b2c3.tmp", f"{PREFIX}.model-3_temp_abc",
             "checkpoint.tempstate123"]
    kept = [f"{PREFIX}.model-2.meta", f"{PREFIX}.model-2.index", "checkpoint", "latest", "x.tmp", "notes.txt"]
    os.makedirs(folder)
    for n in temps + kept:
        open(os.path.join(folder, n), "w").close()
    other = run_lock.acquire(str(tmp_path / "elsewhere"), "--checkpoint_dir")
    try:
        for call in (lambda: policy.move_previous_run(folder, None),
                     lambda: policy.move_previous_run(folder, other),        # another folder's lock
                     lambda: policy.sweep_temp(folder, owner=other),
                     lambda: policy.move_previous_outputs(folder, "old", other),
                     lambda: policy.set_aside(folder, policy.inventory(folder), "test", other)):
            with pytest.raises(run_lock.NotOwner):
                call()
    finally:
        other.release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ugatit_common import run_lock; "
                               "run_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)", folder],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert policy.sweep_temp(folder) == [] and all(os.path.exists(os.path.join(folder, n)) for n in temps)
    finally:
        kill(holder)
    with run_lock.own_folder(folder, "--checkpoint_dir") as owner:
        assert sorted(policy.sweep_temp(folder, owner=owner)) == sorted(temps)
    assert sorted(os.listdir(folder)) == sorted(kept)                      # lock and owner files gone too


def _hold(folders, command="python -m torch_port --dataset t"):
    """A process holding `folders` as a run would (run 1, standing still), until killed."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; from ugatit_common import run_lock as r\n"
                          "for f in sys.argv[2:]: r.acquire(f, command=sys.argv[1])\n"
                          "print('held', flush=True); sys.stdin.read()", command] + list(folders),
                         env=ENV, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_live_runs_folder_in_any_role_or_spelling_is_refused_leaving_nothing(tmp_path, monkeypatch, capsys):
    """Run 2's checkpoint folder differs, but its --sample_dir is run 1's checkpoint folder, or its
    --log_dir run 1's sample folder; or run 1's folder reached through a symlink or a trailing
    separator: refused naming the flag, and the refused run leaves nothing behind - not even the
    new checkpoint folder it had made and locked before it met the held one (it did)."""
    make_data(tmp_path)
    folders = run_dirs(tmp_path)
    os.symlink("checkpoint", str(tmp_path / "cklink"))
    holder = _hold(folders)
    try:
        before = snapshot(folders)
        for extra, flag, folder in (
                (["--checkpoint_dir", "cklink"], "--checkpoint_dir", "cklink/" + opt.model_dir(CFG)),
                (["--checkpoint_dir", "checkpoint" + os.sep], "--checkpoint_dir", "checkpoint/"),
                (["--checkpoint_dir", "new/ck", "--sample_dir", "checkpoint"], "--sample_dir", "checkpoint/"),
                (["--checkpoint_dir", "new/ck", "--sample_dir", "new/s", "--log_dir", "samples"], "--log_dir",
                 "samples/"),
                (["--checkpoint_dir", "new/ck", "--resume", "False", "--sample_dir", "checkpoint"], "--sample_dir",
                 "checkpoint/")):
            rc, out, err = port(train_args(2, 1, 1, *extra), monkeypatch, tmp_path, capsys)
            line = assert_refused(rc, err, folder, holder.pid)
            assert line.startswith(f"error: {flag} "), line
            assert not os.path.exists(str(tmp_path / "new")), extra        # nothing made, nothing left
            assert snapshot(folders) == before
    finally:
        kill(holder)
        holder.stdin.close()
        holder.stdout.close()


def test_a_lock_file_that_is_not_one_is_named(tmp_path, monkeypatch, capsys):
    """A folder (or a dangling link) where the lock file goes was reported as 'the folder is not
    writable' (it was): now the line names the lock file."""
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    os.makedirs(os.path.join(folder, run_lock.LOCK_NAME))
    rc, out, err = port(train_args(1, 1, 1), monkeypatch, tmp_path, capsys)
    line = one_error_line(err)
    assert rc == 2 and run_lock.LOCK_NAME in line and "move it away" in line and "not writable" not in line, line
    assert os.listdir(folder) == [run_lock.LOCK_NAME]


# -- morph ------------------------------------------------------------------------------------------

def test_morph_run_refuses_a_second_run(tmp_path, monkeypatch, capsys):
    from morph.__main__ import main as morph_main
    from morph.train import morph_paths
    make_data(tmp_path)
    paths = morph_paths(opt.config_from(CFG, morph_config="C", decay_flag=False))
    folders = [os.path.join(str(tmp_path), p) for p in (paths.checkpoint, paths.sample, paths.log)]
    args = ["train"] + MORPH_TINY + ["--epoch", "1", "--save_freq", "1"]
    p1 = start(["morph"] + args + ["--iteration", "100000"], tmp_path, "run1.log")
    try:
        wait_holding(p1, folders)
        plant_temp_files(folders)
        before = snapshot(folders)
        monkeypatch.chdir(tmp_path)
        for extra in ([], ["--resume", "False"]):       # --resume False would move its checkpoints and losses.jsonl
            capsys.readouterr()
            rc = morph_main(args + ["--iteration", "3"] + extra)
            line = assert_refused(rc, capsys.readouterr().err, paths.checkpoint, p1.pid)
            assert "python -m morph train" in line
            assert snapshot(folders) == before
    finally:
        kill(p1)


# -- tf_reference, and the two frameworks into one folder ------------------------------------------------

@pytest.mark.tf
def test_tf_reference_and_torch_port_refuse_each_other(tmp_path, monkeypatch, capsys):
    from tf_reference.__main__ import main as tf_main
    make_data(tmp_path)
    folders = run_dirs(tmp_path)
    assert port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0          # torch model-2
    to_tf(os.path.join(folders[0], f"{PREFIX}.model-2.safetensors"), folders[0], 2, tmp_path)  # and TF model-2
    tf_long = TF_TINY + ["--iteration", "100000", "--epoch", "1", "--save_freq", "1000", "--print_freq", "1000"]
    p1 = start(["tf_reference"] + tf_long, tmp_path, "tf1.log")
    try:
        holder = wait_holding(p1, folders, need_checkpoint=False)
        assert "python -m tf_reference" in holder.command
        plant_temp_files(folders)
        before = snapshot(folders)
        for extra in ([], ["--resume", "False"]):                                      # the port: refused
            rc, out, err = port(train_args(2, 1, 1, *extra), monkeypatch, tmp_path, capsys)
            assert_refused(rc, err, "checkpoint/" + opt.model_dir(CFG), p1.pid)
        capsys.readouterr()
        rc = tf_main(TF_TINY + ["--iteration", "2", "--epoch", "1", "--print_freq", "1000"])  # tf_reference too
        assert_refused(rc, capsys.readouterr().err, "checkpoint/" + opt.model_dir(CFG), p1.pid)
        assert snapshot(folders) == before
    finally:
        kill(p1)
    # and the other way round: the port holding, tf_reference refused
    other = run_dirs(tmp_path, checkpoint_dir="ck2")
    p2 = start(["torch_port"] + LONG + ["--checkpoint_dir", "ck2"], tmp_path, "torch1.log")
    try:
        wait_holding(p2, other)
        before = snapshot(other)
        capsys.readouterr()
        rc = tf_main(TF_TINY + ["--iteration", "2", "--epoch", "1", "--checkpoint_dir", "ck2"])
        assert_refused(rc, capsys.readouterr().err, "ck2/" + opt.model_dir(CFG), p2.pid)
        assert snapshot(other) == before
    finally:
        kill(p2)


# -- torchrun: rank 0 holds, the other ranks follow ----------------------------------------------------

def test_torchrun_rank_0_holds_the_folder(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    make_data(tmp_path, n_train=4)
    folder = ckdir(tmp_path)
    os.makedirs(folder)
    with open(os.path.join(folder, ".tmp-killed-save.safetensors"), "wb") as fh:  # swept once, by rank 0
        fh.write(b"x")
    p = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "torch_port"]
                         + train_args(30, 1, 1000), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    holders, commands = {}, []
    while p.poll() is None:
        h = run_lock.held_by(folder)
        # pid None: held, but its owner file (information only, written just after the lock is
        # taken and removed just before it is let go) not there at this instant - seen once in CI
        if h is not None and h.pid is not None and h.pid not in holders:
            commands.append(h.command)
            try:
                with open(f"/proc/{h.pid}/environ", "rb") as fh:
                    env = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v)
                holders[h.pid] = env.get(b"RANK")
            except OSError:
                holders[h.pid] = None
        time.sleep(0.05)
    out = p.stdout.read()
    assert p.returncode == 0, out[-3000:]                       # rank 1 did not fail
    assert list(holders.values()) == [b"0"], holders            # one holder all along: rank 0
    # "folder in use" names what to stop: torchrun, not the rank (torchrun would tear down the others)
    assert re.search(rf"\(rank 0 of 2 under torchrun, whose pid is {p.pid}\)$", commands[0]), commands
    assert re.search(r"Epoch: \[ *0\] \[ *29/ *30\]", out), out[-2000:]
    assert steps(folder) == [31] and run_lock.held_by(folder) is None
    assert not os.path.exists(os.path.join(folder, ".tmp-killed-save.safetensors"))


def test_sigterm_to_torchrun_stops_the_run_with_torchruns_own_options_in_the_resume_command(tmp_path):
    """SIGTERM to torchrun (a scheduler stopping the job) reaches the rank as SIGTERM: it stops as
    Ctrl-C does, and rank 0's line gives the resume command with torchrun's own options as they were
    given (`--standalone` was dropped: the printed command then failed to rendezvous)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    make_data(tmp_path, n_train=4)
    folder = ckdir(tmp_path)
    p = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "1", "-m", "torch_port"]
                         + train_args(2000, 1, 1), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not steps(folder):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    line = [ln for ln in out.splitlines() if ln.startswith("SIGTERM: stopped at step")]
    assert line and "resume with: torchrun --standalone --nproc_per_node 1 -m torch_port --light True" in line[0], \
        out[-3000:]


# -- weights and state belong together ---------------------------------------------------------------

def test_pairing_rule():
    """policy.pairing_problem on the files' records; checkpoints of earlier versions still pair."""
    cfg = {"ch": 2, "light": True, "seed": 0}
    import json
    meta = {"step": "3", "run": "r1", "kind": "morph", "config": json.dumps(cfg)}
    state = {"run": "r1", "step": 3, "counter": 3, "kind": "morph", "config": dict(cfg)}
    assert policy.pairing_problem(3, meta, state) is None
    assert policy.pairing_problem(3, {"step": "3"}, {"step": 3, "counter": 3}) is None       # before run ids
    assert policy.pairing_problem(3, meta, {k: v for k, v in state.items() if k != "run"}) is None  # earlier Morph loop
    old_cfg = dict(state, config={"ch": 2, "light": True})                                  # no seed recorded
    assert policy.pairing_problem(3, meta, old_cfg) is None
    bad = {"converted": ({"step": "3", "format": "pt", "source": "UGATIT.model-3", "ugatit_config": "{}"}, state),
           "other run": (meta, dict(state, run="r2")),
           "no run in weights": ({k: v for k, v in meta.items() if k != "run"}, state),
           "weights step": (dict(meta, step="2"), state),
           "state step": (meta, dict(state, step=2, counter=2)),
           "counter": (meta, dict(state, counter=4)),
           "kind": (dict(meta, kind="ugatit"), state),
           "config": (meta, dict(state, config=dict(cfg, ch=4)))}
    why = {k: policy.pairing_problem(3, m, s) for k, (m, s) in bad.items()}
    assert all(why.values()), why
    assert "tf2torch" in why["converted"] and "r2" in why["other run"] and "ch=2" in why["config"]
    assert "step 2" in why["weights step"] and "step 2" in why["state step"] and "step 4" in why["counter"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run with model-2 and model-3 (root "a"), another run's (root "b", seed 1), and what a run
    resumed from model-2 alone ends with (model-5 weights): the reference for "never trained on"."""
    from torch_port.__main__ import main
    from safetensors.torch import load_file
    base = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    try:
        for name, extra in (("a", []), ("b", ["--seed", "1"])):
            root = base / name
            make_data(root)
            os.chdir(root)
            assert main(train_args(2, 1, 1, *extra)) == 0
            assert steps(ckdir(root)) == [2, 3]
        ref = base / "ref"
        shutil.copytree(base / "a", ref)
        for sfx in (".safetensors", ".state.pt"):
            os.remove(os.path.join(ckdir(ref), f"{PREFIX}.model-3{sfx}"))
        os.chdir(ref)
        assert main(train_args(2, 2, 1)) == 0
        ref_weights = load_file(os.path.join(ckdir(ref), f"{PREFIX}.model-5.safetensors"))
    finally:
        os.chdir(cwd)
    return {"base": base, "ref": ref_weights}


def _copy_run(runs, tmp_path, name="a"):
    root = tmp_path / "run"
    shutil.copytree(runs["base"] / name, root)
    return root, ckdir(root)


def _converted_tf_weights(folder, tmp_path):
    """What `weights_convert.py tf2torch CK <folder>/UGATIT_light.model-3.safetensors` writes there:
    a TF checkpoint (here the run's own model-2, converted to TF) converted back."""
    import weights_convert as wc
    assert wc.main(["torch2tf", os.path.join(folder, f"{PREFIX}.model-2.safetensors"),
                    str(tmp_path / "tf" / f"{PREFIX}.model")]) == 0
    out = str(tmp_path / "converted.safetensors")
    assert wc.main(["tf2torch", str(tmp_path / "tf"), out]) == 0
    return out


def _tamper(kind, folder, runs, tmp_path):
    w3, s3 = (os.path.join(folder, f"{PREFIX}.model-3{sfx}") for sfx in (".safetensors", ".state.pt"))
    if kind == "converted TF weights":
        shutil.copy(_converted_tf_weights(folder, tmp_path), w3)
        return "tf2torch"
    if kind == "state of another run":
        shutil.copy(os.path.join(ckdir(runs["base"] / "b"), f"{PREFIX}.model-3.state.pt"), s3)
        return "run"
    if kind == "state of another step":
        shutil.copy(os.path.join(folder, f"{PREFIX}.model-2.state.pt"), s3)
        return "step 2"
    state = torch.load(s3, map_location="cpu", weights_only=True)     # another config, same run and step
    state["config"]["adv_weight"] = 2
    torch.save(state, s3)
    return "adv_weight"


@pytest.mark.parametrize("kind", ["converted TF weights", "state of another run", "state of another step",
                                  "another config"])
def test_a_mismatched_pair_is_set_aside_and_never_trained_on(kind, runs, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file
    root, folder = _copy_run(runs, tmp_path)
    reason = _tamper(kind, folder, runs, tmp_path)
    pair = {sfx: digest(os.path.join(folder, f"{PREFIX}.model-3{sfx}")) for sfx in (".safetensors", ".state.pt")}
    rc, out, err = port(train_args(2, 2, 1), monkeypatch, root, capsys)
    assert rc == 0, err
    assert f"{PREFIX}.model-3 (PyTorch)" in out and "not one checkpoint" in out and reason in out, out
    assert f"Success to read {PREFIX}.model-2 (torch)" in out
    for sfx, d in pair.items():                                       # set aside, intact
        assert digest(os.path.join(folder, policy.UNUSABLE, f"{PREFIX}.model-3{sfx}")) == d
    got = load_file(os.path.join(folder, f"{PREFIX}.model-5.safetensors"))
    assert got.keys() == runs["ref"].keys()
    assert all(torch.equal(got[k], runs["ref"][k]) for k in got)     # = resumed from model-2: nothing of model-3 used


def test_a_mismatched_pair_and_nothing_else_stops_with_exit_2(runs, tmp_path, monkeypatch, capsys):
    root, folder = _copy_run(runs, tmp_path)
    for sfx in (".safetensors", ".state.pt"):
        os.remove(os.path.join(folder, f"{PREFIX}.model-2{sfx}"))
    _tamper("state of another run", folder, runs, tmp_path)
    before = snapshot([folder])
    rc, out, err = port(train_args(2, 2, 1), monkeypatch, root, capsys)
    line = one_error_line(err)
    assert rc == 2 and "none can be used" in line and "not one checkpoint" in line and "run" in line
    assert snapshot([folder]) == before


# -- non-finite weights are never resumed ----------------------------------------------------------------

def test_a_nan_in_the_newest_torch_checkpoint_stops_the_resume(runs, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    root, folder = _copy_run(runs, tmp_path)
    w3 = os.path.join(folder, f"{PREFIX}.model-3.safetensors")
    with safe_open(w3, "pt") as f:
        meta = f.metadata()
    weights = load_file(w3)
    name = [n for n in sorted(weights) if n.endswith(".weight")][3]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, w3, metadata=meta)                              # same run, step and config: only the NaN
    before = snapshot([folder])
    rc, out, err = port(train_args(2, 2, 1), monkeypatch, root, capsys)
    line = one_error_line(err)
    assert rc == 2 and f"{PREFIX}.model-3 (PyTorch)" in line and repr(name) in line and "1 non-finite" in line
    assert snapshot([folder]) == before and "Epoch:" not in out


def test_a_nan_in_a_tf_checkpoint_stops_the_ports_resume(runs, tmp_path, monkeypatch, capsys):
    from ugatit_common.tf_checkpoint.bundle import BundleReader, BundleWriter
    root, folder = _copy_run(runs, tmp_path)
    prefix = to_tf(os.path.join(folder, f"{PREFIX}.model-3.safetensors"), folder, 8, tmp_path)
    with BundleReader(prefix) as r:
        arrays = {n: r.read(n).copy() for n in r.keys()}
    bad = sorted(n for n in arrays if n.endswith("/kernel") and "/Adam" not in n)[0]
    arrays[bad].reshape(-1)[:2] = [float("inf"), float("nan")]
    with BundleWriter(prefix) as w:
        for n, a in arrays.items():
            w.add(n, a)
    before = snapshot([folder])
    rc, out, err = port(train_args(2, 5, 1), monkeypatch, root, capsys)
    line = one_error_line(err)
    assert rc == 2 and f"{PREFIX}.model-8 (TensorFlow)" in line and "2 non-finite" in line, line
    assert snapshot([folder]) == before


# -- tf_reference on a full disk -----------------------------------------------------------------------

@pytest.mark.tf
@pytest.mark.slow
def test_tf_reference_disk_full_and_a_nan_checkpoint(tmp_path, monkeypatch, capsys):
    """The Saver writes the bundle and the `checkpoint` file, then the .meta graph through a temp
    file `<name>.meta.tmp<hex>`: the disk filling up there left that file and the line said 'last
    checkpoint: none' while model-2 was on disk. Now: no temp file, the line names model-2, and
    the next run resumes from it. Then a NaN in the newest checkpoint: exit 2 naming it."""
    from tf_reference.__main__ import main as tf_main
    from tensorflow.python.lib.io import file_io
    import tensorflow as tf
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    real = file_io.write_string_to_file

    def full_disk(filename, file_content):
        if ".meta.tmp" in str(filename):
            with open(filename, "wb") as fh:                           # a part written, then no space
                fh.write(b"\0" * 10)
            raise tf.errors.ResourceExhaustedError(None, None, f"{filename}; No space left on device")
        return real(filename, file_content)
    monkeypatch.setattr(file_io, "write_string_to_file", full_disk)
    capsys.readouterr()
    rc = tf_main(TF_TINY + ["--iteration", "3", "--epoch", "1", "--save_freq", "1", "--print_freq", "1000"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "No space left on device" in line and "stopped at step 1" in line, line
    assert f"last checkpoint: {PREFIX}.model-2, intact" in line
    assert not [n for n in os.listdir(folder) if ".tmp" in n or "_temp" in n], os.listdir(folder)
    assert steps(folder, "tf") == [2]
    monkeypatch.setattr(file_io, "write_string_to_file", real)
    capsys.readouterr()
    rc = tf_main(TF_TINY + ["--iteration", "3", "--epoch", "1", "--save_freq", "1", "--print_freq", "1000"])
    assert rc == 0 and f"Success to read {PREFIX}.model-2" in capsys.readouterr().out
    # a NaN in the newest checkpoint: tf_reference's restore refuses it too (here the test phase)
    from ugatit_common.tf_checkpoint.bundle import BundleReader, BundleWriter
    newest = max(steps(folder, "tf"))
    prefix = os.path.join(folder, f"{PREFIX}.model-{newest}")
    with BundleReader(prefix) as r:
        arrays = {n: r.read(n).copy() for n in r.keys()}
    bad = sorted(n for n in arrays if n.startswith("generator_B") and n.endswith("kernel"))[0]
    arrays[bad].reshape(-1)[0] = float("nan")
    with BundleWriter(prefix) as w:
        for n, a in arrays.items():
            w.add(n, a)
    capsys.readouterr()
    rc = tf_main(TF_TINY + ["--phase", "test"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and repr(bad) in line and "1 non-finite" in line, line
    # and the training resume, before it writes anything (no new event file in the log folder)
    logs = {os.path.join(d, n) for d, _, ns in os.walk(tmp_path / "logs") for n in ns}
    assert logs  # the two runs above wrote theirs
    rc = tf_main(TF_TINY + ["--iteration", "3", "--epoch", "2", "--save_freq", "1", "--print_freq", "1000"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "1 non-finite" in line, line
    assert {os.path.join(d, n) for d, _, ns in os.walk(tmp_path / "logs") for n in ns} == logs


def test_ctrl_c_while_a_lock_is_taken_leaves_no_lock_files(tmp_path, monkeypatch):
    """Ctrl-C landing while `acquire` writes the owner file (an export claiming its output, a run
    taking its folder): the lock is let go and its files removed - they were left behind, the
    output folder keeping `.<name>.ugatit-out.lock` after the command had said "interrupted"."""
    from ugatit_common import atomic

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic, "write_bytes_atomic", interrupted)
    for names in ({}, {"lock_name": ".e.onnx.ugatit-out.lock", "owner_name": ".e.onnx.ugatit-out.owner"}):
        with pytest.raises(KeyboardInterrupt):
            run_lock.acquire(str(tmp_path / "out"), **names)
        assert os.listdir(tmp_path / "out") == []
    monkeypatch.undo()
    with run_lock.acquire(str(tmp_path / "out")):  # and it can be taken again at once
        assert run_lock.held_by(str(tmp_path / "out")) is not None


# -- one results command per results folder -------------------------------------------------------------

def _photos(folder, n, seed):
    import cv2
    import numpy as np
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(os.path.join(folder, f"p{i:04d}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("command", ["torch_port test", "morph interpolate", "morph translate",
                                     pytest.param("tf_reference test", marks=pytest.mark.tf)])
def test_two_results_commands_never_share_a_results_folder(tmp_path, monkeypatch, capsys, command):
    """Two test phases (or Morph interpolate / translate commands) given one results folder at the
    same time both wrote into it: the second wrote its pictures over the first's of the same
    names while the first ran, and replaced its results page (which then listed the other run's
    pictures). Now a results command holds its results folder while it writes (`.ugatit-results.lock`,
    output_guard.own_result_folder): run 1, paused after its first picture, keeps every file as it
    was while run 2 is refused (one `error:` line naming --result_dir and run 1's pid, exit 2,
    nothing written); run 1 then ends normally, and the folder is free again."""
    from morph.__main__ import main as morph_main
    tf = command.startswith("tf_reference")
    make_data(tmp_path, n_test=400 if tf else 1)  # tf_reference's test phase translates the data set's test images
    monkeypatch.chdir(tmp_path)
    morph = command.startswith("morph")
    if tf:
        # its TF checkpoint: the port's first one converted (torch2tf), not tf_reference's own training
        # run (TF builds the train graph: ~30 s); without the .meta (the train graph again), which the
        # test phase never reads
        import weights_convert
        monkeypatch.setattr(weights_convert, "_meta_builder", lambda: (None, "not needed by the test phase"))
        assert port(train_args(1, 1, 1, "--checkpoint_dir", "port"), monkeypatch, tmp_path, capsys)[0] == 0
        os.makedirs(ckdir(tmp_path))
        to_tf(os.path.join(run_dirs(tmp_path, checkpoint_dir="port")[0], f"{PREFIX}.model-2.safetensors"),
              ckdir(tmp_path), 2, tmp_path)
        base = ["tf_reference", "--phase", "test"] + TF_TINY
        res = str(tmp_path / "res")
        first = os.path.join(opt.model_dir(CFG), "a2b", "*.png")
    elif morph:
        assert morph_main(["train"] + MORPH_TINY + ["--iteration", "1", "--epoch", "1", "--save_freq", "1"]) == 0
        [ck] = glob.glob(str(tmp_path / "checkpoint" / "*morphC"))
        verb = command.split()[1]
        base = ["morph", verb, "--checkpoint", ck, "--device", "cpu"] + (
            ["--steps", "2", "--samples", "1"] if verb == "interpolate" else ["--samples", "1", "--direction", "a2b"])
        res, first = str(tmp_path / "res"), "*.png"
    else:
        assert port(train_args(1), monkeypatch, tmp_path, capsys)[0] == 0
        base = ["torch_port", "--phase", "test"] + TINY
        res = str(tmp_path / "res")
        first = os.path.join(opt.model_dir(CFG), "a2b", "*.png")
    # run 1 must still be running when it is paused after its first picture: its pictures after that
    # one take >= 2 s alone (the port's 400 at ~5 ms each; interpolate's 100 at ~30 ms each)
    one, two = _photos(str(tmp_path / "one"), 100 if command == "morph interpolate" else 400, 1), \
        _photos(str(tmp_path / "two"), 3, 2)
    inputs = (lambda folder: []) if tf else (lambda folder: ["--input", folder])
    p = start(base + inputs(one) + ["--result_dir", res], tmp_path, "run1.log")
    try:
        t0 = time.time()
        while not glob.glob(os.path.join(res, first)):
            assert p.poll() is None, log_of(p)
            assert time.time() - t0 < 240, log_of(p)
            time.sleep(0.002)
        pause(p)
        assert p.poll() is None, "run 1 ended before it could be paused"
        before = snapshot([res])
        r = subprocess.run([sys.executable, "-m"] + base + inputs(two) + ["--result_dir", res], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and "--result_dir" in line and f"pid {p.pid}" in line, (r.returncode, r.stderr)
        assert snapshot([res]) == before
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
    assert p.wait(timeout=300) == 0, log_of(p)
    r = subprocess.run([sys.executable, "-m"] + base + inputs(two) + ["--result_dir", res], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not glob.glob(os.path.join(res, "**", ".ugatit-results.*"), recursive=True)


def test_training_never_takes_a_results_folder_being_written(tmp_path, monkeypatch, capsys):
    """`--sample_dir results --result_dir results` (samples beside the results) while a test phase
    of the same model was writing there: the training run took the folder as its sample folder,
    swept the test phase's temp files as a killed save's and, starting from scratch, moved its page
    aside as an older run's samples. Now a training run refuses a folder a results command holds
    (one `error:` line naming --sample_dir and that command's pid, exit 2, nothing changed)."""
    make_data(tmp_path)
    assert port(train_args(1), monkeypatch, tmp_path, capsys)[0] == 0
    one = _photos(str(tmp_path / "one"), 400, 1)
    res = tmp_path / "res"
    folder = res / opt.model_dir(CFG)
    p = start(["torch_port", "--phase", "test"] + TINY + ["--input", one, "--result_dir", str(res)], tmp_path,
              "test1.log")
    try:
        t0 = time.time()
        while not glob.glob(str(folder / "a2b" / "*.png")):
            assert p.poll() is None and time.time() - t0 < 240, log_of(p)
            time.sleep(0.002)
        pause(p)
        assert p.poll() is None, "the test phase ended before it could be paused"
        before = snapshot([str(res)])
        rc, out, err = port(train_args(1, 1, 1, "--sample_dir", str(res), "--checkpoint_dir", "ck2"), monkeypatch,
                            tmp_path, capsys)
        line = one_error_line(err)
        assert rc == 2 and "--sample_dir" in line and f"pid {p.pid}" in line, (rc, err)
        assert snapshot([str(res)]) == before and not os.path.exists(tmp_path / "ck2")
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
    assert p.wait(timeout=300) == 0, log_of(p)


def test_a_training_that_took_the_folder_after_the_check_refuses_the_results_command(tmp_path):
    """own_result_folder checks again, once it holds the results folder, for a training run that
    took the folder (or one above it) since check_result_folders: refused (OutputRefused naming the
    run), its results lock and the folder it made gone. The run here is this process's lock with
    another pid in its owner file (a lock of this very process is never taken for another run's)."""
    import json

    from ugatit_common import output_guard as og
    run = run_lock.acquire(str(tmp_path), "--sample_dir", "python -m torch_port --phase train")
    try:
        owner = os.path.join(str(tmp_path), run_lock.OWNER_NAME)
        with open(owner) as fh:
            info = json.load(fh)
        with open(owner, "w") as fh:
            json.dump(dict(info, pid=4194304), fh)  # above Linux's largest pid_max
        results = str(tmp_path / "results")
        with pytest.raises(og.OutputRefused, match="a folder of a running training .*pid 4194304"):
            with og.own_result_folder(results):
                pass
        assert not os.path.exists(results)
    finally:
        run.release()


def test_a_results_command_holds_its_own_lock_not_a_training_runs(tmp_path):
    """own_result_folder takes the results lock (`.ugatit-results.lock`), not the run lock of a
    training: while it writes, the folder is not taken for a running training's - another results
    folder inside it is allowed (check_result_folders) - and the holder is found as a results one."""
    from ugatit_common import output_guard as og
    results = str(tmp_path / "results")
    with og.own_result_folder(results):
        assert run_lock.held_by(results) is None
        holder = run_lock.held_by(results, run_lock.RESULTS_LOCK_NAME, run_lock.RESULTS_OWNER_NAME)
        assert holder is not None and holder.pid == os.getpid()
        og.check_result_folders([os.path.join(results, "sub")])
    assert not os.path.exists(results)
