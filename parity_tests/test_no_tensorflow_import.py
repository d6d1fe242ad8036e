"""The port and Morph never import TensorFlow: a short training runs where `import tensorflow`
fails, and its TensorBoard event file still holds the official scalars and rho histograms."""
import glob
import os
import subprocess
import sys

from parity_tests.conftest import ROOT
from parity_tests.test_torch_cli import TINY, make_data, tiny_cfg
from ugatit_common import options as opt


def _blocked_env(tmp_path):
    blocker = tmp_path / "blocked" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("TensorFlow is blocked for this test run")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), ROOT])}


def test_imports_do_not_pull_tensorflow(tmp_path):
    code = ("import sys, torch_port, torch_port.train, torch_port.translate, torch_port.events, morph, morph.train, "
            "morph.interpolate; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_training_without_tensorflow_writes_event_file(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    make_data(str(root))
    proc = subprocess.run([sys.executable, "-m", "torch_port"] + TINY + ["--iteration", "2", "--epoch", "1"],
                          cwd=root, capture_output=True, text=True, env=_blocked_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = glob.glob(os.path.join(root, "logs", opt.model_dir(tiny_cfg()), "events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(events[0], size_guidance={"scalars": 0, "histograms": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"Generator_loss", "Discriminator_loss", "G_A_cam", "D_B_loss"} <= scalars
    assert [e.step for e in acc.Scalars("Discriminator_loss")] == [1, 2]
    hist = [t for t in acc.Tags()["histograms"] if t.endswith("rho")]
    assert hist
    h = acc.Histograms(hist[0])[0].histogram_value
    assert h.num > 0 and h.min <= h.max and sum(h.bucket) == h.num


def test_training_with_tensorflow_installed_does_not_import_it(tmp_path):
    """TensorFlow importable (this environment has it): a port training run and a Morph one write
    their event files and never import it (tensorboard's own EventFileWriter would, through
    `tf.io.gfile`)."""
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        import pytest
        pytest.skip("TensorFlow is not installed: nothing could import it")
    make_data(str(tmp_path))
    code = ("import sys\n"
            "from torch_port.__main__ import main as port\n"
            "from morph.__main__ import main as morph\n"
            f"args = {TINY + ['--iteration', '1', '--epoch', '1']!r}\n"
            "assert port(args) == 0\n"
            "assert morph(['train'] + [a for a in args if a not in ('--phase',)]) == 0\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.stdout + proc.stderr)[-3000:]
    assert len(glob.glob(os.path.join(tmp_path, "logs", "*", "events.out.tfevents.*"))) == 2
