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
