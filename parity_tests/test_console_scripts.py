"""The installed commands (setup.cfg console_scripts) run the same entry points as `python -m`."""
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

COMMANDS = {"ugatit-tf": "tf_reference.__main__:main", "ugatit-torch": "torch_port.__main__:main",
            "ugatit-convert": "weights_convert:main", "ugatit-morph": "morph.__main__:main"}


def test_entry_points_are_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("ugatit-")}
    assert eps == COMMANDS
    for ep in entry_points(group="console_scripts"):
        if ep.name in COMMANDS:
            assert callable(ep.load())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_installed_command_runs(name, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.isfile(exe), f"{exe} missing: install the package (pip install -e .)"
    proc = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("module", ["torch_port", "tf_reference", "ugatit_common.demo", "ugatit_common.demo_data"])
def test_usage_errors_name_the_command_as_run(module, tmp_path):
    """`python -m torch_port --direction x`: argparse's usage and error lines name the command the
    user typed (they said `__main__.py: error: ...`)."""
    from parity_tests.conftest import ROOT
    proc = subprocess.run([sys.executable, "-m", module, "--direction" if module == "torch_port" else "--bogus", "x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"usage: python -m {module} ") and lines[-1].startswith(f"python -m {module}: error:"), \
        proc.stderr


@pytest.mark.parametrize("value", ["0", "-3"])
def test_the_demo_refuses_a_bad_iteration_before_any_work(value, tmp_path):
    """README command 1's `--iteration 0`: one `error:` line, exit 2, DIR not made (before: the data
    set was built, then the TF step failed with its own error line and the demo's second one)."""
    from parity_tests.conftest import ROOT
    proc = subprocess.run([sys.executable, "-m", "ugatit_common.demo", "run", "--iteration", value], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --iteration={value}: must be >= 1", proc.stderr
    assert not (tmp_path / "run").exists()
    helped = subprocess.run([sys.executable, "-m", "ugatit_common.demo", "--help"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ROOT}).stdout
    assert "of each model" not in helped and "of the official TF model" in " ".join(helped.split())


@pytest.mark.parametrize("argv", [["-m", "torch_port", "--bogus", "1"], ["-m", "morph", "train", "--bogus", "1"]])
def test_a_bad_flag_under_torchrun_is_said_by_rank_0_only(argv, tmp_path):
    """Under torchrun every rank parses the same flags: rank 0 prints argparse's usage and error,
    the others exit 2 silently (each rank printed them: the lines came once per process)."""
    from parity_tests.conftest import ROOT
    said = {}
    for rank in ("0", "1"):
        proc = subprocess.run([sys.executable] + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": ROOT, "WORLD_SIZE": "2", "RANK": rank})
        assert proc.returncode == 2
        said[rank] = proc.stderr
    assert "error: unrecognized arguments: --bogus 1" in said["0"] and said["1"] == ""


DEMO_STEP = """
import sys
from ugatit_common import cli_errors, demo
CHILD = '''
import sys, time
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(1.0)  # a step's own clean-up (its stop line, its folders, its run lock)
    print("step cleaned up", flush=True)
    sys.exit(130)
'''
sys.exit(cli_errors.run(lambda argv: demo.run([sys.executable, "-c", CHILD], "."), prog="python -m ugatit_common.demo"))
"""


def test_ctrl_c_in_the_demo_lets_the_running_step_end_its_own_way(tmp_path):
    """Ctrl-C in README command 1 reaches the demo and its running step (one process group): the
    demo's subprocess.run killed the step (SIGKILL) 0.25 s later, in the middle of its own Ctrl-C
    handling - no `stopped at step N` line, its run lock and owner files left behind. The demo now
    waits for the step to end (exit 130 after its clean-up), then says it was interrupted."""
    import signal

    from parity_tests.conftest import ROOT
    # SIGINT's default action in the child: a pytest-xdist worker ignores SIGINT, and an ignored
    # signal stays ignored across exec (Python then installs no KeyboardInterrupt handler)
    p = subprocess.Popen([sys.executable, "-c", DEMO_STEP], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while True:
            line = p.stdout.readline()
            assert line, ("the demo step ended before it was ready", p.wait(timeout=60), p.stderr.read())
            if line.strip() == "ready":
                break
        os.killpg(p.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert "step cleaned up" in out, (out, err)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted (Ctrl-C)", (p.returncode, err)



class _Step:
    """A stand-in for a demo step's Popen: its first wait (the demo's) is stopped by `stop`; the
    next waits with a timeout return (True) or time out (False) as `ends` says, in order; signals,
    waits and kills are recorded."""

    def __init__(self, stop, ends):
        self.stop, self.ends, self.calls = stop, list(ends), []

    def wait(self, timeout=None):
        from ugatit_common.cli_errors import Terminated
        if self.stop is not None:
            stop, self.stop = self.stop, None
            raise Terminated() if stop == "sigterm" else KeyboardInterrupt()
        self.calls.append(("wait", timeout))
        if timeout is not None and not self.ends.pop(0):
            raise subprocess.TimeoutExpired("step", timeout)
        return 130

    def send_signal(self, sig):
        self.calls.append(("signal", sig))

    def kill(self):
        self.calls.append(("kill", None))


@pytest.mark.parametrize("stop, ends, expected", [
    ("ctrl-c", [True], [("wait", 5)]),  # the terminal's Ctrl-C reached the step too: waited for
    ("ctrl-c", [False, True], [("wait", 5), ("signal", "SIGINT"), ("wait", "WAIT")]),  # the demo's alone
    ("sigterm", [True], [("signal", "SIGTERM"), ("wait", "WAIT")]),
    ("sigterm", [False], [("signal", "SIGTERM"), ("wait", "WAIT"), ("kill", None), ("wait", None)]),
])
def test_a_stopped_demo_stops_its_step_its_own_way(monkeypatch, stop, ends, expected):
    """demo.run stopped (Ctrl-C, SIGTERM) while its step runs: the step gets its own stop (waited
    for, SIGINT after 5 s, or SIGTERM passed on) and STEP_STOP_WAIT seconds to end before it is
    killed; the demo's stop is raised on after that."""
    import signal

    from ugatit_common import demo
    step = _Step(stop, ends)
    monkeypatch.setattr(demo.subprocess, "Popen", lambda *a, **k: step)
    with pytest.raises(KeyboardInterrupt):
        demo.run(["step"], cwd=".")
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", demo.STEP_STOP_WAIT: "WAIT"}
    got = [(what, names.get(arg, arg)) for what, arg in step.calls]
    assert got == expected, got
