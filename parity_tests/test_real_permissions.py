"""File permissions and `ulimit -n` met for real, not monkeypatched.

Permissions: as root (CI) every file is readable, so the commands run here without the
capabilities that bypass permission checks (`setpriv --inh-caps=-all --bounding-set=-all`: still
uid 0, the files' owner, so `chmod 000` applies to it as to any user, and the interpreter under
/root stays reachable, which it is not for `nobody`); not root: run as they are.
Open files: the soft RLIMIT_NOFILE lowered in a child process to the lowest free descriptor
(+ a few), so the next opens fail with EMFILE.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from parity_tests.conftest import ROOT
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

TINY = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4",
        "--augment_flag", "False", "--device", "cpu", "--threads", "1", "--print_freq", "1000", "--save_freq", "1", "--epoch", "1"]
CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def _unprivileged() -> list[str]:
    """The command prefix that makes file permissions apply to a child (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux `setpriv` is not installed: file permissions cannot apply")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


@pytest.fixture
def as_user(tmp_path):
    """Run `python -m ...` in tmp_path without the privilege to read or write past permissions;
    proven to bite on a `chmod 000` file first (else skipped, naming why)."""
    prefix = _unprivileged()
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    proc = subprocess.run(prefix + [sys.executable, "-c", f"open({str(probe)!r}).read()"], capture_output=True,
                          text=True, timeout=60)
    probe.unlink()
    if proc.returncode == 0 or "PermissionError" not in proc.stderr:
        pytest.skip(f"permissions do not apply to the child here ({' '.join(prefix)}: {proc.stderr.strip()[-300:]})")

    def run(*args, **env):
        return subprocess.run(prefix + [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=dict(ENV, **env))
    return run


def _error_line(proc) -> str:
    """The one `error:` line of a failed command, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if re.match(r"(\S[^:]*: )?error: ", ln)]  # "python -m X sub: error:"
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_checkpoint_file_the_user_may_not_read_stops_and_nothing_is_set_aside(tmp_path, as_user):
    """The newest checkpoint's weights `chmod 000`: the test phase translated with the older one
    and a training run moved the newest into `unusable/` and trained on from the older, both with
    exit 0, as if the file were damaged ("FileNotFoundError: No such file or directory", the
    safetensors library's words for EACCES). Now both stop: one line naming the file and that it
    is not readable, exit 2, the folder as it was; once readable, the run resumes from it."""
    make_demo_dataset(str(tmp_path), "t", size=32, n_train=2, n_test=1)
    first = as_user("-m", "torch_port", *TINY, "--iteration", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = os.path.join(tmp_path, "checkpoint", opt.model_dir(CFG))
    newest = policy.inventory(folder)[0]
    weights = newest.weights
    before = sorted(os.listdir(folder))
    os.chmod(weights, 0)
    try:
        for args in (["--phase", "test"], ["--iteration", "4"]):
            line = _error_line(as_user("-m", "torch_port", *TINY, *args))
            assert repr(os.path.relpath(weights, tmp_path)) in line and "is not readable" in line, line
            assert sorted(os.listdir(folder)) == before, args  # nothing set aside, nothing written
        assert not os.path.exists(os.path.join(tmp_path, "results"))
    finally:
        os.chmod(weights, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    resumed = as_user("-m", "torch_port", *TINY, "--iteration", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Success to read {os.path.basename(newest.base)} " in resumed.stdout, resumed.stdout[-2000:]


def test_a_checkpoint_load_failing_on_the_open_files_limit_is_not_skipped(tmp_path):
    """`ulimit -n` reached while the newest checkpoint is read (torch's "unable to open file ...:
    Too many open files", or EMFILE) was "unusable (CheckpointCorrupt: ...)": the older one was
    used and a training run set the newest aside. Now it stops (CannotRead) naming the limit."""
    for step in (1, 2):
        for part in ("safetensors", "state.pt"):
            (tmp_path / f"UGATIT_light.model-{step}.{part}").write_bytes(b"x")
    failures = [OSError(errno.EMFILE, "Too many open files"),
                RuntimeError("unable to open file <x> in read-only mode: Too many open files (24)")]
    for failure in failures:
        def load(found):
            if found.step == 2:
                raise failure
            return "older"
        with pytest.raises(policy.CannotRead) as e:
            policy.choose(str(tmp_path), load, "train", log=lambda *a: None)
        assert "UGATIT_light.model-2" in str(e.value) and "limit on open files" in str(e.value), str(e.value)
    damaged = policy.choose(str(tmp_path), lambda f: (_ for _ in ()).throw(ValueError("bad")) if f.step == 2 else "older",
                            "weights", log=lambda *a: None)
    assert damaged[1] == "older"  # a damaged one is still skipped for the older


_AT_THE_LIMIT = r"""
import os, resource, sys
sys.path.insert(0, os.environ["PYTHONPATH"])
import glob
from torch_port.data import ImageFolderDataset, infinite_loader
from ugatit_common.cli_errors import check_writable_folder
from ugatit_common import run_lock
how, where = sys.argv[1], sys.argv[2]
ds = ImageFolderDataset(sorted(glob.glob(os.path.join(where, "dataset", "t", "trainA", "*"))), 32, False)
free = os.dup(0)  # the lowest free descriptor: with the soft limit a little above it, a few opens succeed
os.close(free)
resource.setrlimit(resource.RLIMIT_NOFILE, (free + {"workers": 4, "workers-1": 1, "workers-10": 10}.get(how, 0),
                                            resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    if how.startswith("workers"):
        next(infinite_loader(ds, 1, num_workers=2))
    elif how == "folder":
        check_writable_folder(os.path.join(where, "out"), "--log_dir")
    else:
        run_lock.acquire(os.path.join(where, "locked"), "--sample_dir")
    print("no error")
except OSError as e:
    print(type(e).__name__, e)
    print("hook restored:", sys.unraisablehook is sys.__unraisablehook__)
"""


@pytest.mark.parametrize("how", ["workers", "workers-1", "workers-10", "folder", "lock"])
def test_the_open_files_limit_is_named_as_such(tmp_path, how):
    """`ulimit -n` reached by the DataLoader's worker processes (their pipes and semaphores) was a
    bare "[Errno 24] Too many open files", then an "Exception ignored in ... __del__" traceback
    block from the half-started loader; met proving an output folder writable, or taking its
    lock, it was "--log_dir 'logs/...' is not writable: Too many open files", which sends the user
    after the folder's permissions. Now each is one error naming the limit. (The workers met the
    limit at 3 points: 1 and 10 descriptors free are where the loader's teardown failed, checked
    on torch 2.13; the hook that hides it is this call's alone.)"""
    make_demo_dataset(str(tmp_path), "t", size=32, n_train=2, n_test=1)
    proc = subprocess.run([sys.executable, "-c", _AT_THE_LIMIT, how, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    out = proc.stdout.strip()
    assert out.startswith("OSError [Errno 24] "), (out, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    assert "not writable" not in out, out
    assert "hook restored: True" in out, out
    if how.startswith("workers"):
        assert "too many open files (ulimit -n " in out and "lower --num_workers" in out, out
    else:
        assert "limit on open files per process was reached (`ulimit -n`: " in out, out
        assert ("--log_dir" if how == "folder" else "--sample_dir") in out, out


@pytest.mark.parametrize("argv", [[], ["--num_workers", "2"], ["--num_workers=2"]],
                         ids=["no-workers-flag", "workers", "workers="])
def test_a_librarys_own_error_for_the_open_files_limit_is_one_clear_line(capsys, argv):
    """torch's DataLoader says EMFILE in a RuntimeError ("Too many open files. Communication with
    the workers is no longer possible..."): that was an internal error (exit 1). Now it is the one
    line naming the limit, exit 2; it suggests lowering --num_workers only where the command line
    has that flag (tf_reference, whose TF reader meets the limit, has none)."""
    from ugatit_common import cli_errors

    def fn(argv):
        raise RuntimeError("Too many open files. Communication with the workers is no longer possible. Please "
                           "increase the limit using `ulimit -n` in the shell")
    assert cli_errors.run(fn, argv, prog="python -m torch_port") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: [Errno 24] too many open files (ulimit -n "), err
    assert ("lower --num_workers" in err[0]) == bool(argv), err


def test_the_systems_open_files_limit_and_an_already_named_limit_are_one_clear_line(capsys):
    """ENFILE (the system's table full) is the same machine limit as EMFILE: one line, exit 2, not
    an internal error; an error that already says the limit (machine_limits.limit_error, naming
    the file or flag it met) keeps its own words instead of the generic ones."""
    from ugatit_common import cli_errors
    from ugatit_common.machine_limits import limit_error

    def system_full(argv):
        raise OSError(errno.ENFILE, "Too many open files in system")
    assert cli_errors.run(system_full, [], prog="python -m torch_port") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "too many open files" in err[0], err
    # the whole system's table: `ulimit -n` (this process's limit) is no way out there
    assert "ulimit -n" not in err[0] and "fs.file-max" in err[0], err
    # the same when the data loader's workers meet it (the line names them, and --num_workers)
    from ugatit_common.machine_limits import too_many_open_files
    e = too_many_open_files("the data loader's 4 worker processes", code=errno.ENFILE)
    assert e.errno == errno.ENFILE and "ulimit -n" not in str(e) and "4 worker processes" in str(e), e
    assert "lower --num_workers" in str(e) and "fs.file-max" in str(e), e
    assert cli_errors.run(lambda argv: (_ for _ in ()).throw(e), ["--num_workers", "4"], prog="python -m torch_port") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {e}"], err

    def named(argv):
        raise limit_error(OSError(errno.EMFILE, "Too many open files"), "cannot write a file in --log_dir 'logs'")
    assert cli_errors.run(named, [], prog="python -m torch_port") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write a file in --log_dir 'logs'" in err[0] and "limit on open files" in err[0], err


@pytest.mark.parametrize("command", [
    ["-m", "torch_port", "--phase", "test", "--checkpoint", "w.safetensors", "--input", "in.png"],
    ["-m", "torch_port", "export", "w.safetensors", "a.onnx", "--direction", "a2b"],
    [os.path.join(ROOT, "weights_convert.py"), "torch2tf", "w.safetensors", "tf/UGATIT_light.model"],
    [os.path.join(ROOT, "weights_convert.py"), "tf2onnx", "w.safetensors", "a.onnx", "--direction", "a2b"],
], ids=["test-phase", "export", "torch2tf", "tf2onnx"])
def test_a_weights_file_the_user_may_not_read_is_named_as_such(tmp_path, as_user, command):
    """A `.safetensors` given by name that the user may not read was "not a readable safetensors
    file (FileNotFoundError: No such file or directory: ...)" (the library's words for EACCES) or a
    bare "[Errno 13] Permission denied: ..." (torch2tf). Now: the file, and that it is not
    readable by this user; nothing written."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x10" + b"\0" * 7 + b"{}" + b" " * 14)  # content never reached
    weights.chmod(0)
    (tmp_path / "in.png").write_bytes(b"")  # the test phase checks its input first
    before = sorted(os.listdir(tmp_path))
    line = _error_line(as_user(*command))
    assert "'w.safetensors' is not readable by this user (Permission denied)" in line, line
    assert sorted(os.listdir(tmp_path)) == before


def test_a_checkpoint_folder_made_read_only_during_a_run(tmp_path, as_user):
    """`chmod 555` on the run's checkpoint folder between two saves: the save's error named the
    temp file it was creating ("[Errno 13] Permission denied: '.../.tmp-123-x.safetensors'"), a name
    the user never chose. Now the line names the folder and that it is not writable, with the
    last checkpoint (intact) and the resume command; no temp file is left, and once writable the
    run resumes from that checkpoint."""
    make_demo_dataset(str(tmp_path), "t", size=32, n_train=2, n_test=1)
    folder = os.path.join(tmp_path, "checkpoint", opt.model_dir(CFG))
    args = [*TINY, "--iteration", "60", "--save_freq", "10"]
    prefix = _unprivileged()
    proc = subprocess.Popen(prefix + [sys.executable, "-m", "torch_port", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not policy.inventory(folder) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.chmod(folder, 0o555)  # later saves (steps 21 .. 61) fail
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.chmod(folder, 0o755)
    line = _error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert line.startswith(f"error: the folder {folder!r} is not writable (Permission denied)"), line
    kept = policy.inventory(folder)[0]
    assert f"last checkpoint: {os.path.basename(kept.base)}, intact; resume with: " in line, line
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")], os.listdir(folder)
    resumed = as_user("-m", "torch_port", *args[:-4], "--iteration", str(kept.step + 1), "--save_freq", "10")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Success to read {os.path.basename(kept.base)} " in resumed.stdout, resumed.stdout[-2000:]


@pytest.mark.parametrize("mode", [0o000, 0o444, 0o300], ids=["none", "read-only", "no-read"])
@pytest.mark.parametrize("required", [True, False], ids=["train", "test-phase"])
def test_a_data_set_folder_the_user_may_not_list_is_named_as_such(tmp_path, as_user, mode, required):
    """A data set folder without read or search permission: glob found nothing in it, so the test
    phase translated the other domain alone (exit 0), and training said "[Errno 13] Permission
    denied: ..." (chmod 000) or, for a folder without search permission, skipped every file as "a
    link that leads to no file" and then "holds no files". Now: one error naming the folder and
    the permission it lacks."""
    make_demo_dataset(str(tmp_path), "t", size=32, n_train=2, n_test=1)
    folder = os.path.join("dataset", "t", "testA")
    os.chmod(tmp_path / folder, mode)
    try:
        proc = as_user("-c", "import sys; from ugatit_common import options as opt\n"
                             "try:\n"
                             f"    print(opt.domain_files({{'dataset': 't'}}, 'testA', required={required}))\n"
                             "except opt.OptionError as e:\n"
                             "    print('OptionError', e)")
    finally:
        os.chmod(tmp_path / folder, 0o755)
    assert proc.stdout.startswith(f"OptionError dataset folder {os.path.join('.', folder)!r} is not readable by this "
                                  f"user (Permission denied)"), (proc.stdout, proc.stderr[-2000:])
    assert "warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("mode", [0o000, 0o444], ids=["none", "read-only"])
def test_an_input_folder_the_user_may_not_list_is_named_as_such(tmp_path, as_user, mode):
    """`--input FOLDER` without search permission (chmod 444): every photo was "a link that leads
    to no file", then "none of the folder's 2 file(s) is named *.*". Now one error naming the
    folder and the permission it lacks (chmod 000 was already named, now in the same words)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    photos.chmod(mode)
    try:
        proc = as_user("-c", "from torch_port.translate import input_files\nfrom ugatit_common import options as opt\n"
                             "try:\n    print(input_files('photos'))\n"
                             "except opt.OptionError as e:\n    print('OptionError', e)")
    finally:
        photos.chmod(0o755)
    assert proc.stdout.startswith("OptionError --input folder 'photos' is not readable by this user (Permission "
                                  "denied)"), (proc.stdout, proc.stderr[-2000:])
    assert "warning" not in proc.stderr, proc.stderr


def test_a_compile_cache_folder_the_user_may_not_write_is_named_before_compiling(tmp_path, as_user):
    """`--compile True` where inductor's cache folder is not writable (a `/tmp/torchinductor_<user>`
    another user made in the shared /tmp, here TORCHINDUCTOR_CACHE_DIR read-only): the first
    compile failed as "internal error (InductorError: PermissionError: ...)", exit 1. Now one
    line naming the folder and the way out, before anything is compiled or written."""
    make_demo_dataset(str(tmp_path), "t", size=32, n_train=2, n_test=1)
    first = as_user("-m", "torch_port", *TINY, "--iteration", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    cache = tmp_path / "inductor-cache"
    cache.mkdir(mode=0o555)
    try:
        proc = as_user("-m", "torch_port", *TINY, "--phase", "test", "--compile", "True",
                       TORCHINDUCTOR_CACHE_DIR=str(cache))
    finally:
        cache.chmod(0o755)
    line = _error_line(proc)
    assert line.startswith(f"error: torch.compile's cache folder {str(cache)!r} is not writable: Permission denied: "
                           f"set TORCHINDUCTOR_CACHE_DIR"), line
    assert not os.listdir(cache) and not os.path.exists(tmp_path / "results")


def test_an_unreadable_tf_meta_is_still_read_past(tmp_path, as_user):
    """The readers read past a `.meta` they cannot read (a note; the settings come from the run
    record and the weights): the readability check before a load (CannotRead) must not stop on
    one, only on the `.index` / `.data` files the load needs."""
    for part in ("index", "data-00000-of-00001", "meta"):
        (tmp_path / f"UGATIT_light.model-2.{part}").write_bytes(b"x")
    (tmp_path / "UGATIT_light.model-2.meta").chmod(0)
    proc = as_user("-c", "from ugatit_common import checkpoint_policy as policy\n"
                         "found, content = policy.choose('.', lambda f: 'loaded', 'weights', prefer='tf')\n"
                         "print(found.name, content)")
    assert proc.stdout.strip() == "UGATIT_light.model-2 (TensorFlow) loaded", (proc.stdout, proc.stderr[-2000:])
    (tmp_path / "UGATIT_light.model-2.index").chmod(0)
    proc = as_user("-c", "from ugatit_common import checkpoint_policy as policy\n"
                         "try:\n    policy.choose('.', lambda f: 'loaded', 'weights', prefer='tf')\n"
                         "except policy.CannotRead as e:\n    print('CannotRead', e)")
    assert proc.stdout.startswith("CannotRead checkpoint file './UGATIT_light.model-2.index' is not readable"), \
        (proc.stdout, proc.stderr[-2000:])


def test_another_users_lock_file_left_behind_is_taken_over_not_called_unwritable(tmp_path, as_user):
    """A killed run of another user leaves its lock file behind, mode 0644, theirs: this user may
    not write it. `acquire` opened it read-write only, so a folder this user may write was "not
    writable: Permission denied". A flock needs no write access: the lock file is opened read-only,
    a dead holder's lock is taken over and a live one's is named as in use."""
    from ugatit_common import run_lock
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / run_lock.LOCK_NAME
    lock.write_bytes(b"")
    (folder / run_lock.OWNER_NAME).write_text('{"pid": 999999999, "command": "x", "started": "then", "host": "h"}')
    lock.chmod(0o444)  # another user's file as this user sees it: readable, not writable
    take = ("-c", "from ugatit_common import run_lock, options\n"
                  "try:\n l = run_lock.acquire('run')\nexcept options.OptionError as e:\n print('refused:', e); raise SystemExit(2)\n"
                  "print('taken over from', l.taken_over.pid); l.release()")
    proc = as_user(*take)
    assert proc.returncode == 0 and "taken over from 999999999" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert not lock.exists()  # released as any run's lock
    lock.write_bytes(b"")
    lock.chmod(0o444)
    import fcntl
    with open(lock, "rb") as held:  # a live holder
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = as_user(*take)
    assert proc.returncode == 2 and "in use by another run" in proc.stdout and "not writable" not in proc.stdout, \
        (proc.stdout, proc.stderr[-2000:])


def test_a_lock_file_left_in_a_folder_the_user_may_not_write_is_still_not_writable(tmp_path, as_user):
    """The read-only open of a lock file this user may not write (the test above) is only for a
    folder this user may write: in one they may not (another user's run folder), the run is
    refused as "not writable" before it starts, not let take a lock it can never remove and run
    on until its first save fails; the folder is left as it was."""
    from ugatit_common import run_lock
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / run_lock.LOCK_NAME
    lock.write_bytes(b"")
    lock.chmod(0o444)
    folder.chmod(0o555)
    try:
        proc = as_user("-c", "from ugatit_common import run_lock, options\n"
                             "try:\n run_lock.acquire('run')\nexcept options.OptionError as e:\n print('refused:', e)\n")
    finally:
        folder.chmod(0o755)
    assert proc.stdout.startswith("refused: checkpoint folder 'run' is not writable: "), (proc.stdout, proc.stderr[-2000:])
    assert os.listdir(folder) == [run_lock.LOCK_NAME]


def test_a_lock_file_that_is_a_link_to_a_file_the_user_may_not_write_is_refused(tmp_path, as_user):
    """The read-only open of a lock file this user may not write never follows a link: a link by
    the lock file's name (to another user's file) is no lock file this program wrote; it is
    named (move it away), not flocked in its target's place."""
    from ugatit_common import run_lock
    folder = tmp_path / "run"
    folder.mkdir()
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("theirs")
    theirs.chmod(0o444)
    (folder / run_lock.LOCK_NAME).symlink_to(theirs)
    proc = as_user("-c", "from ugatit_common import run_lock, options\n"
                         "try:\n run_lock.acquire('run')\nexcept options.OptionError as e:\n print('refused:', e)\n")
    assert proc.stdout.startswith("refused: checkpoint folder 'run': its lock file ") and "move it away" in proc.stdout, \
        (proc.stdout, proc.stderr[-2000:])
    assert os.listdir(folder) == [run_lock.LOCK_NAME] and theirs.read_text() == "theirs"


def test_machine_limit_reads_the_errno_the_words_and_the_errors_a_library_wrapped():
    """machine_limits.machine_limit: EMFILE / ENFILE / ENOMEM as an OSError's errno; EMFILE and
    ENFILE also by the OS's words in a library's own error (the longer "... in system" is ENFILE,
    not EMFILE); found through a wrapping error's cause or context, however deep; a cycle of
    contexts without one ends (None). Memory only as an errno: a message saying "out of memory"
    is no machine limit here (the device's out of memory has its own handling)."""
    from ugatit_common.machine_limits import limit_text, machine_limit
    assert machine_limit(OSError(errno.EMFILE, "x")) == errno.EMFILE
    assert machine_limit(OSError(errno.ENOMEM, "Cannot allocate memory")) == errno.ENOMEM
    assert limit_text(errno.ENOMEM) == "the machine ran out of memory"
    assert machine_limit(RuntimeError("unable to open: Too many open files in system")) == errno.ENFILE
    assert machine_limit(RuntimeError("unable to open: Too many open files (24)")) == errno.EMFILE
    assert machine_limit(RuntimeError("CUDA out of memory")) is None and machine_limit(None) is None

    def wrapped(inner, how):
        try:
            try:
                raise inner
            except OSError as e:
                if how == "cause":
                    raise ValueError("cannot read x") from e
                raise KeyError("x")  # during handling: the context
        except Exception as outer:  # noqa: BLE001
            return outer
    for how in ("cause", "context"):
        assert machine_limit(wrapped(OSError(errno.ENFILE, "x"), how)) == errno.ENFILE, how
    deep = RuntimeError("loader failed")
    deep.__cause__ = wrapped(OSError(errno.EMFILE, "x"), "cause")
    assert machine_limit(deep) == errno.EMFILE
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert machine_limit(a) is None


_CHOOSE = """
import sys
from ugatit_common import checkpoint_policy as policy
try:
    found, content = policy.choose('.', lambda f: 'read', sys.argv[1], log=print)
    print('chose', found.step, content)
except policy.CannotRead as e:
    print('CannotRead', e)
"""


def test_a_test_phase_needs_only_a_torch_checkpoints_weights_readable(tmp_path, as_user):
    """choose checks that the files it reads are readable before loading: a test phase
    (need="weights") reads a port checkpoint's weights alone, so its `.state.pt` unreadable is no
    reason to stop; a training run (need="train") reads both and stops, naming the state file."""
    for part in ("safetensors", "state.pt"):
        (tmp_path / f"UGATIT_light.model-3.{part}").write_bytes(b"x")
    state = tmp_path / "UGATIT_light.model-3.state.pt"
    state.chmod(0)
    weights = as_user("-c", _CHOOSE, "weights")
    train = as_user("-c", _CHOOSE, "train")
    assert weights.stdout.strip() == "chose 3 read", (weights.stdout, weights.stderr[-2000:])
    assert train.stdout.startswith("CannotRead checkpoint file './UGATIT_light.model-3.state.pt' is not readable"), \
        (train.stdout, train.stderr[-2000:])


def test_check_readable_names_the_open_files_limit_met_opening_the_file(tmp_path):
    """check_readable's own open meeting `ulimit -n` (EMFILE) is CannotRead naming the limit and
    the file, not left for a library to call the file missing or damaged."""
    path = tmp_path / "UGATIT_light.model-3.safetensors"
    path.write_bytes(b"x")
    code = ("import os, resource, sys\n"
            "from ugatit_common import checkpoint_policy as policy\n"
            "free = os.dup(0); os.close(free)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "try:\n policy.check_readable(sys.argv[1])\n print('no error')\n"
            "except policy.CannotRead as e:\n print('CannotRead', e.errno, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, env=ENV)
    out = proc.stdout.strip()
    assert out.startswith(f"CannotRead {errno.EMFILE} cannot read checkpoint file {str(path)!r}: the limit on open "
                          f"files per process was reached"), (out, proc.stderr[-2000:])


_PORT_READERS = """
from torch_port import checkpoint as c
from ugatit_common import checkpoint_policy as p
for read in (lambda: c.find_latest('.'), lambda: c.safetensors_keys('UGATIT_light.model-2.safetensors'),
             lambda: c.load_any('UGATIT_light.model-2.safetensors')):
    try:
        read()
        print('no error')
    except p.CannotRead as e:
        print('CannotRead', e)
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_the_port_readers_stop_at_weights_the_user_may_not_read(tmp_path, as_user):
    """find_latest (load_any of a port folder), safetensors_keys (torch2tf's look at its input)
    and load_any of the weights file meet newest weights `chmod 000`: CannotRead naming the file,
    never "skipping unreadable checkpoint" for an older one, nor "not a readable safetensors file"
    as if it were damaged."""
    for step in (1, 2):
        for part in ("safetensors", "state.pt"):
            (tmp_path / f"UGATIT_light.model-{step}.{part}").write_bytes(b"x")
    (tmp_path / "UGATIT_light.model-2.safetensors").chmod(0)
    proc = as_user("-c", _PORT_READERS)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, (proc.stdout, proc.stderr[-2000:])
    for line in lines:
        assert line.startswith("CannotRead weights file '") and "UGATIT_light.model-2.safetensors' is not readable" \
            in line, (lines, proc.stderr[-2000:])


def test_a_lock_file_gets_the_mode_the_umask_gives(tmp_path):
    """run_lock makes its lock file 0o666 minus the umask, as any file the user writes: another
    user of a shared folder (group-writable, umask 002) may open it to take over a killed run's
    lock, or at least read-only with a 022 umask - a 0o600 file made that "not writable" for them."""
    from ugatit_common import run_lock
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        before = os.umask(umask)
        try:
            lock = run_lock.acquire(str(tmp_path / oct(umask)))
        finally:
            os.umask(before)
        try:
            assert stat.S_IMODE(os.stat(tmp_path / oct(umask) / run_lock.LOCK_NAME).st_mode) == mode, oct(umask)
        finally:
            lock.release()
