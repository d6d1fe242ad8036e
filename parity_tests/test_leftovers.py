"""What a killed command, a failed test phase or a report rerun used to leave behind: claim files of
a killed writer, a killed benchmark's work folder, the empty folders of a failed test phase, an
earlier report's files beside a new one. Each is removed (or set aside) by the next run, and only
what its dead owner made: never a live command's, never a user's file, never a folder that was
there before or holds anything."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from parity_tests.conftest import ROOT
from parity_tests.test_nonfinite_and_flags import CFG, _run, error_line, overflow  # noqa: F401 - a fixture
from ugatit_common import options as opt

BENCH = os.path.join(ROOT, "bench")


def _python(code: str, *args, wait=True, **kw):
    """Run `code` in a fresh interpreter with this checkout importable."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + BENCH)
    argv = [sys.executable, "-c", textwrap.dedent(code), *args]
    if wait:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, **kw)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, **kw)


# code for a child that claims output files like a converter, then says "ready" (and is killed, or sleeps)
CLAIMER = """
    import os, signal, sys, time
    from ugatit_common import output_guard
    for path in sys.argv[2:]:
        output_guard.claim(path)
    print("ready", flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no clean-up: as a lent machine's timeout, an OOM killer
    time.sleep(120)
"""


NO_PID = 4194304  # above Linux's largest pid_max: no process has it


def _wait_ready(proc):
    assert proc.stdout.readline().strip() == "ready"


def test_a_killed_commands_claim_files_go_with_the_next_command_and_a_live_ones_stay(tmp_path, capsys):
    """A converter or export killed while it held its output's claim left `.<name>.ugatit-out.lock`
    and `.owner` for good (the next command with another output name never took them over). The
    next command writing into that folder removes them, saying so in one line; the claim of a
    command still running stays, whatever pids the owner files name (a pid may be reused: the
    flock decides), and a user's files there are untouched."""
    from ugatit_common import output_guard as og
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".hidden.lock").write_text("mine too")  # a user's dotfile that is no claim
    dead = _python(CLAIMER, "kill", str(out / "old.onnx"))
    assert dead.returncode == -signal.SIGKILL and dead.stdout.strip() == "ready", dead.stderr
    live = _python(CLAIMER, "sleep", str(out / "busy.onnx"), wait=False)
    try:
        _wait_ready(live)
        names = sorted(os.listdir(out))
        assert ".old.onnx.ugatit-out.lock" in names and ".old.onnx.ugatit-out.owner" in names, names
        # pid reuse both ways: the dead claim names a live pid (this one), the live claim a dead one
        for name, pid in ((".old.onnx.ugatit-out.owner", os.getpid()), (".busy.onnx.ugatit-out.owner", NO_PID)):
            info = json.loads((out / name).read_text())
            (out / name).write_text(json.dumps(dict(info, pid=pid)))
        capsys.readouterr()
        og.check_outputs([(str(out / "new.onnx"), "onnx")], [], False)
        printed = capsys.readouterr().out
        try:
            lines = [ln for ln in printed.splitlines() if "claim files" in ln]
            assert len(lines) == 1 and "(old.onnx)" in lines[0] and f"pid {os.getpid()}" in lines[0], printed
            assert "busy.onnx" not in lines[0]
            assert sorted(os.listdir(out)) == sorted([".busy.onnx.ugatit-out.lock", ".busy.onnx.ugatit-out.owner",
                                                      ".new.onnx.ugatit-out.lock", ".new.onnx.ugatit-out.owner",
                                                      ".hidden.lock", "notes.txt"])
            # the live command's claim still holds: a second command given its output is refused, naming it
            with pytest.raises(og.OutputRefused, match="being written by another command"):
                og.claim(str(out / "busy.onnx"))
        finally:
            og.release_claims()
    finally:
        live.kill()
        live.wait()
    assert sorted(os.listdir(out)) == sorted([".busy.onnx.ugatit-out.lock", ".busy.onnx.ugatit-out.owner",
                                              ".hidden.lock", "notes.txt"])  # busy's: killed just now, not swept yet
    assert og.sweep_dead_claims(str(out), log=None) == [".busy.onnx.ugatit-out.lock"]
    assert sorted(os.listdir(out)) == [".hidden.lock", "notes.txt"]


def test_a_claim_taken_while_the_sweep_runs_is_never_lost(tmp_path):
    """The sweep removes a dead claim while holding its flock (as a release does): an `acquire`
    that opened the old file meanwhile sees it replaced and locks a fresh one, so the claim it
    then holds is the one at the path (held_by finds it)."""
    from ugatit_common import run_lock
    from ugatit_common.output_guard import _claim_owner
    folder = str(tmp_path)
    for _ in range(20):
        left = _python("""
            import os, signal, sys
            from ugatit_common import output_guard
            output_guard.claim(sys.argv[1])
            os.kill(os.getpid(), signal.SIGKILL)
        """, os.path.join(folder, "x.onnx"))
        assert left.returncode == -signal.SIGKILL
        racer = _python("""
            import sys
            from ugatit_common import output_guard
            output_guard.claim(sys.argv[1])
            print("ready", flush=True)
            sys.stdin.readline()
        """, os.path.join(folder, "x.onnx"), wait=False, stdin=subprocess.PIPE)
        run_lock.sweep_dead(folder, _claim_owner)
        _wait_ready(racer)
        try:
            holder = run_lock.held_by(folder, ".x.onnx.ugatit-out.lock", ".x.onnx.ugatit-out.owner")
            assert holder is not None and holder.pid == racer.pid, (holder, os.listdir(folder))
            assert run_lock.sweep_dead(folder, _claim_owner) == []
        finally:
            racer.stdin.close()
            racer.wait()


def test_a_claim_made_anew_between_the_sweeps_open_and_its_lock_stays(tmp_path, monkeypatch):
    """The race above made certain: between the sweep's open of a dead claim's lock file and its
    flock, the dead claim is released and another command claims the output anew (a new lock file
    at the path, held). The sweep, holding the old file's lock, sees the path is another file now
    and leaves the new claim alone (removing it would let a third command write the same output)."""
    import types

    from ugatit_common import run_lock
    from ugatit_common.output_guard import _claim_owner
    folder = str(tmp_path)
    lock, owner = ".x.onnx.ugatit-out.lock", ".x.onnx.ugatit-out.owner"
    for name in (lock, owner):  # a dead claim: nobody holds its flock, made long ago
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("{}")
        os.utime(os.path.join(folder, name), (1e9, 1e9))
    real, held = run_lock.fcntl, []

    def flock(fd, op):
        if not held:  # the sweep's flock of the old file: first the claim is made anew
            held.append(None)
            for name in (lock, owner):
                os.remove(os.path.join(folder, name))
            held.append(run_lock.acquire(folder, "x.onnx", lock_name=lock, owner_name=owner))
        return real.flock(fd, op)
    monkeypatch.setattr(run_lock, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=real.LOCK_EX,
                                                                 LOCK_NB=real.LOCK_NB, LOCK_SH=real.LOCK_SH,
                                                                 LOCK_UN=real.LOCK_UN))
    try:
        assert run_lock.sweep_dead(folder, _claim_owner) == []
        monkeypatch.setattr(run_lock, "fcntl", real)
        holder = run_lock.held_by(folder, lock, owner)
        assert holder is not None and holder.pid == os.getpid(), os.listdir(folder)
    finally:
        monkeypatch.setattr(run_lock, "fcntl", real)
        if held[1:]:
            held[1].release()


def test_a_fresh_claim_lock_without_its_owner_file_is_not_swept(tmp_path):
    """A claim's lock file alone, made a moment ago, is a command between its open and its flock
    (its owner file comes next): the sweep leaves it. The same file made long ago is a command
    killed there: swept."""
    from ugatit_common import run_lock
    from ugatit_common.output_guard import _claim_owner
    lock = tmp_path / ".x.onnx.ugatit-out.lock"
    lock.write_text("")
    assert run_lock.sweep_dead(str(tmp_path), _claim_owner) == [] and lock.exists()
    os.utime(lock, (1e9, 1e9))
    assert [n for n, _ in run_lock.sweep_dead(str(tmp_path), _claim_owner)] == [lock.name]
    assert not lock.exists()


def test_a_users_file_named_like_a_claim_without_the_dot_is_not_swept(tmp_path):
    """Only `.<output>.ugatit-out.lock` is a claim: a user's old `mine.ugatit-out.lock` (no leading
    dot) and a bare `.ugatit-out.lock` are no claim's lock files and stay."""
    from ugatit_common import output_guard as og
    for name in ("mine.ugatit-out.lock", ".ugatit-out.lock"):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (1e9, 1e9))
    assert og.sweep_dead_claims(str(tmp_path), log=None) == []
    assert sorted(os.listdir(tmp_path)) == [".ugatit-out.lock", "mine.ugatit-out.lock"]


# -- the benchmarks' work folders ----------------------------------------------------------------------

def test_a_killed_benchmarks_work_folder_goes_with_the_next_run(tmp_path):
    """bench/work_folders.py: a work folder whose run was killed (its `.owner.lock` free) is removed
    by the next run of that prefix, said in one line; a running one's (held) stays, as do a folder
    without the lock file (named), another prefix's and a user's folder of another name."""
    sys.path.insert(0, BENCH)
    try:
        from work_folders import work_folder, sweep
    finally:
        sys.path.remove(BENCH)
    tmp = str(tmp_path)
    live = work_folder("bench_x_", tmp, log=None)  # (a new one sweeps first: made before the killed one)
    killed = _python("""
        import os, signal, sys
        from work_folders import work_folder
        w = work_folder("bench_x_", sys.argv[1])
        open(os.path.join(w.name, "cache.bin"), "wb").write(b"0" * 1000)
        print(w.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp)
    dead = killed.stdout.strip()
    assert killed.returncode == -signal.SIGKILL and os.path.isdir(dead), killed.stderr
    for name in ("bench_x_abc123", "bench_xy_abc12345", "bench_x_user_folder_of_mine"):
        os.mkdir(os.path.join(tmp, name))
    said = []
    assert sweep("bench_x_", tmp, log=said.append) == [dead]
    assert len(said) == 2 and "removed 1 work folder(s)" in said[0] and dead in said[0], said
    assert os.path.join(tmp, "bench_x_abc123") in said[1] and "left alone" in said[1], said
    assert sorted(os.listdir(tmp)) == sorted([os.path.basename(live.name), "bench_x_abc123", "bench_xy_abc12345",
                                              "bench_x_user_folder_of_mine"])
    live.cleanup()
    assert not os.path.exists(live.name)


@pytest.mark.skipif(shutil.which("flock") is None, reason="bench/gpu_check.sh holds its work folder with flock(1)")
def test_gpu_check_removes_the_work_folder_of_a_killed_run(tmp_path):
    """bench/gpu_check.sh killed (SIGKILL: a lent machine's lease ending) skipped its `trap rm -rf`
    and left TMPDIR/gpu_check_XXXXXX (the inductor cache) for good. Its next run removes it, in one
    line; a work folder held by a run still going stays. Here the first step's python (PY, a
    wrapper) kills the script; on this CPU machine the next run stops at its device step."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    wrapper = tmp_path / "py"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # bench/work_folders.py runs as it is; the device step kills the script (its grandparent) and exits
        case "$1" in bench/*) exec {sys.executable} "$@";; esac
        if [ -n "$KILL_SCRIPT" ]; then kill -9 "$(awk '{{print $4}}' /proc/$PPID/stat)"; exit 1; fi
        exec {sys.executable} "$@"
    """))
    wrapper.chmod(0o755)
    env = dict(os.environ, TMPDIR=str(tmp), PY=str(wrapper))
    script = os.path.join(ROOT, "bench", "gpu_check.sh")
    first = subprocess.run(["bash", script, str(tmp_path / "out1")], env=dict(env, KILL_SCRIPT="1"),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stderr)
    left = [n for n in os.listdir(tmp) if n.startswith("gpu_check_")]
    assert len(left) == 1 and ".owner.lock" in os.listdir(tmp / left[0]), left

    def held(lock):
        return subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0

    deadline = time.time() + 20
    while held(tmp / left[0] / ".owner.lock"):  # until the killed script's step processes have ended too
        assert time.time() < deadline
        time.sleep(0.05)
    busy = tmp / "gpu_check_busy99"  # a run still going (its lock held)
    busy.mkdir()
    holder = subprocess.Popen(["flock", str(busy / ".owner.lock"), "sleep", "60"])
    try:
        while not held(busy / ".owner.lock"):
            assert time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run(["bash", script, str(tmp_path / "out2")], env=env, capture_output=True, text=True,
                                timeout=120)
    finally:
        holder.kill()
        holder.wait()
    said = [ln for ln in (second.stdout + second.stderr).splitlines() if "work folder(s)" in ln]
    assert len(said) == 1 and left[0] in said[0] and "gpu_check_busy99" not in said[0], second.stdout + second.stderr
    assert sorted(os.listdir(tmp)) == ["gpu_check_busy99"]  # the second run's own work folder went at its exit


# -- a failed test phase leaves no empty folder it made ------------------------------------------------

def _folders(root):
    return sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))


def test_a_failed_test_phase_or_morph_command_removes_the_empty_folders_it_made(overflow, tmp_path, capsys,  # noqa: F811
                                                                                 monkeypatch):
    """The port's test phase and Morph translate / interpolate failing before their first picture
    (here: an overflowing translation, exit 2) left `--result_dir`, `<model_dir>` and `a2b/` empty
    behind. Now those it made go; a folder that was there before stays, even empty, and so does
    one that holds anything."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "o")
    shutil.copytree(overflow, root)
    monkeypatch.chdir(root)
    photo = os.path.join("dataset", "t", "testA")
    os.makedirs("was_here/empty")
    os.makedirs("was_here/full")
    with open("was_here/full/mine.txt", "w") as fh:
        fh.write("mine")
    before = _folders(root)
    for result_dir in ("new/deeper", "was_here", "was_here/empty", "was_here/full"):
        cases = [(port_main, ["--phase", "test", "--input", photo, "--device", "cpu", "--result_dir", result_dir,
                              "--checkpoint", "huge"]),
                 (morph_main, ["translate", "--direction", "a2b", "--checkpoint", "mhuge", "--input", photo,
                               "--device", "cpu", "--result_dir", result_dir + "/m"]),
                 (morph_main, ["interpolate", "--steps", "2", "--samples", "1", "--checkpoint", "mhuge", "--input",
                               photo, "--device", "cpu", "--result_dir", result_dir + "/m"])]
        for main, argv in cases:
            rc, got = _run(main, argv, capsys)
            assert rc == 2 and "non-finite value" in error_line(got.err), (argv, got.err[-800:])
            assert _folders(root) == before, argv
    assert open("was_here/full/mine.txt").read() == "mine"
    # the control: a test phase that writes its pictures keeps its folders
    rc, got = _run(port_main, ["--phase", "test", "--input", photo, "--device", "cpu", "--result_dir", "new/ok",
                               "--checkpoint", "big"], capsys)
    assert rc == 0, got.err[-800:]
    assert os.listdir(os.path.join("new", "ok", opt.model_dir(CFG), "a2b"))


def test_ctrl_c_removes_the_empty_folders_made_and_keeps_the_others(tmp_path):
    """made_folders on Ctrl-C (KeyboardInterrupt, no Exception) as on an error: the folders made
    through it that are still empty go, up to the topmost one it made; a folder that was there
    before and one that holds a file stay."""
    from ugatit_common import made_folders
    (tmp_path / "was_there").mkdir()
    with pytest.raises(KeyboardInterrupt), made_folders.removed_on_failure() as made:
        made.make(str(tmp_path / "was_there" / "new" / "a2b"))
        made.make(str(tmp_path / "kept" / "a2b"))
        (tmp_path / "kept" / "a2b" / "picture.png").write_bytes(b"x")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["kept", "was_there"] and os.listdir(tmp_path / "was_there") == []
    assert os.listdir(tmp_path / "kept" / "a2b") == ["picture.png"]


def test_a_parent_made_for_the_first_of_two_sibling_folders_goes_too(tmp_path):
    """made.make(result/new/a2b), then made.make(result/new/b2a): `new` was made for a2b (b2a's
    own chain is b2a alone: `new` existed by then). A failure left `new` empty behind: a2b's
    chain, removed first, stopped at `new` while b2a was still in it. All go now, deepest first."""
    from ugatit_common import made_folders
    (tmp_path / "result").mkdir()
    with pytest.raises(ValueError), made_folders.removed_on_failure() as made:
        made.make(str(tmp_path / "result" / "new" / "a2b"))
        made.make(str(tmp_path / "result" / "new" / "b2a"))
        raise ValueError
    assert os.listdir(tmp_path / "result") == []


@pytest.mark.tf
@pytest.mark.slow  # TensorFlow builds the test graph (~20 s)
def test_a_failed_tf_reference_test_phase_removes_the_empty_folders_it_made(overflow, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys):
    import weights_convert as wc
    from tf_reference.__main__ import main as tf_main
    from parity_tests.test_nonfinite_and_flags import TINY, _model_dir
    root = str(tmp_path / "o")
    shutil.copytree(os.path.join(overflow, "dataset"), os.path.join(root, "dataset"))
    assert wc.main(["torch2tf", os.path.join(overflow, "huge"), os.path.join(_model_dir(root), "UGATIT_light.model-3"),
                    "--weights_only"]) == 0
    os.makedirs(os.path.join(root, "kept"))
    monkeypatch.chdir(root)
    before = _folders(root)
    for result_dir in ("fresh/results", "kept"):
        rc, got = _run(tf_main, ["--phase", "test", "--result_dir", result_dir] + TINY[:-2], capsys)
        assert rc == 2 and "non-finite value" in error_line(got.err), got.err[-800:]
        assert _folders(root) == before


# -- a report rerun: the earlier run's other files are set aside, never beside the new report ---------

EVERY = ("parity_report.md", "parity_report.html", "fast_paths.md", "fast_paths.html", "free_run.json")
CURVE = {"reference": "tf", "candidate": "torch_port", "budget": 1e-9, "curve": []}  # a free-run curve's keys


def _earlier_report(out, names):
    """Files of an earlier report run by `names` (as these commands start them), dated an hour ago."""
    from parity_tests.harness import PAGE_HEAD
    text = {"parity_report.md": "# U-GAT-IT parity report\nearlier\n",
            "parity_report.html": PAGE_HEAD + "<h1>U-GAT-IT parity report</h1>earlier",
            "fast_paths.md": "# Fast-path fidelity\nearlier\n",
            "fast_paths.html": PAGE_HEAD + "<h1>Fast-path fidelity</h1>earlier",
            "free_run.json": json.dumps(CURVE)}
    os.makedirs(out, exist_ok=True)
    then = time.time() - 3600
    for n in names:
        p = os.path.join(out, n)
        with open(p, "w") as fh:
            fh.write(text[n])
        os.utime(p, (then, then))
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(int(then)))


def _stub_rows():
    return {"generator_B:image": dict(torch_name="generator_B:image", shape=(1, 3, 64, 64), max_abs=0.0, max_rel=0.0,
                                      ok=True, output=True)}


def test_a_report_rerun_sets_the_earlier_runs_other_files_aside(golden_dir, tmp_path, capsys, monkeypatch):
    """`python -m parity_tests.report` rerun without --free_run, or with `--fast_paths none`, left the
    earlier run's free_run.json / fast_paths.* beside the new report, read as this run's. They are
    moved (computed results: never removed) into OUT_DIR/earlier-report-<their time>/, said in one
    line; a user's file by such a name stays where it is. The comparison itself is stubbed (this
    checks which files the folder holds)."""
    from parity_tests import harness, report
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: _stub_rows())
    ckpt = os.path.join(golden_dir, "final")
    out = str(tmp_path / "r")
    stamp = _earlier_report(out, EVERY)
    capsys.readouterr()
    assert report.main([ckpt, out, "--img_size", "64", "--fast_paths", "none"]) == 0
    printed = capsys.readouterr().out
    aside = os.path.join(out, "earlier-report-" + stamp)
    lines = [ln for ln in printed.splitlines() if "earlier run's" in ln]
    assert len(lines) == 1 and "fast_paths.md, fast_paths.html, free_run.json" in lines[0] and aside in lines[0], printed
    assert sorted(os.listdir(out)) == ["earlier-report-" + stamp, "parity_report.html", "parity_report.md"]
    assert sorted(os.listdir(aside)) == ["fast_paths.html", "fast_paths.md", "free_run.json"]
    assert "earlier" in open(os.path.join(aside, "fast_paths.md")).read()
    assert "earlier" not in open(os.path.join(out, "parity_report.md")).read()
    # again: nothing of an earlier run is left beside it, nothing more is moved; a user's free_run.json stays
    with open(os.path.join(out, "free_run.json"), "w") as fh:
        fh.write('{"my": "notes"}')
    assert report.main([ckpt, out, "--img_size", "64", "--fast_paths", "none"]) == 0
    assert "earlier run's" not in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["earlier-report-" + stamp, "free_run.json", "parity_report.html",
                                       "parity_report.md"]


def test_fast_paths_sets_an_earlier_reports_other_files_aside(golden_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    """`python -m parity_tests.fast_paths CKPT OUT_DIR` into a folder holding an earlier parity
    report: the report's table (its fast-path columns from another run) and free_run.json go into
    earlier-report-<time>/ (a second set of the same time gets `_1`); the new fast_paths.* stay."""
    from parity_tests import fast_paths
    ckpt = os.path.join(golden_dir, "final")
    out = str(tmp_path / "f")
    stamp = _earlier_report(out, EVERY)
    os.makedirs(os.path.join(out, "earlier-report-" + stamp))  # taken: the next name is used
    capsys.readouterr()
    assert fast_paths.main([ckpt, out, "--img_size", "64", "--paths", "bf16"]) == 0
    printed = capsys.readouterr().out
    aside = os.path.join(out, f"earlier-report-{stamp}_1")
    assert [ln for ln in printed.splitlines() if "earlier run's" in ln] == [
        f"note: parity_report.md, parity_report.html, free_run.json in {out} were an earlier run's (written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.strptime(stamp, '%Y%m%d-%H%M%S'))}), not this run's: moved into "
        f"{aside}"], printed
    assert sorted(os.listdir(out)) == sorted(["earlier-report-" + stamp, f"earlier-report-{stamp}_1",
                                              "fast_paths.html", "fast_paths.md"])
    assert sorted(os.listdir(aside)) == ["free_run.json", "parity_report.html", "parity_report.md"]
    assert "earlier" not in open(os.path.join(out, "fast_paths.md")).read()


@pytest.mark.tf  # tf2torch --report asks for TensorFlow before any work (the comparison is stubbed here)
def test_tf2torch_report_sets_an_earlier_reports_other_files_aside(golden_dir, tmp_path, capsys, monkeypatch):
    """`weights_convert.py tf2torch --report DIR` writes parity_report.* only: an earlier report's
    fast_paths.* and free_run.json there are set aside, said in one line."""
    import weights_convert as wc
    from parity_tests import harness
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg, seed=0, **k: _stub_rows())
    out = str(tmp_path / "rep")
    stamp = _earlier_report(out, EVERY)
    capsys.readouterr()
    assert wc.main(["tf2torch", os.path.join(golden_dir, "final"), str(tmp_path / "w.safetensors"), "--img_size",
                    "64", "--report", out]) == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if "earlier run's" in ln]
    assert len(lines) == 1 and lines[0].startswith("note: fast_paths.md, fast_paths.html, free_run.json in "), printed
    assert sorted(os.listdir(out)) == ["earlier-report-" + stamp, "parity_report.html", "parity_report.md"]
    assert sorted(os.listdir(os.path.join(out, "earlier-report-" + stamp))) == ["fast_paths.html", "fast_paths.md",
                                                                                 "free_run.json"]
