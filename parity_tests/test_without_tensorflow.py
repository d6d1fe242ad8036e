"""The commands that run the official TF graph, on a machine without TensorFlow (the GPU machine,
a torch-only install): one `error:` line saying TensorFlow is needed and what to do, exit 2 - not
`internal error (ModuleNotFoundError ...)`, exit 1. TensorFlow is made unimportable in the child
process as an uninstalled package is (`import tensorflow` raises ModuleNotFoundError, find_spec
finds nothing), so these run the same with TensorFlow installed (CI) and without it."""
import importlib.util
import os
import subprocess
import sys

import pytest

from parity_tests.conftest import GOLDEN, ROOT


@pytest.fixture()
def no_tf_env(tmp_path):
    site = tmp_path / "no_tensorflow"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None  # as if not installed\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), ROOT]), "OMP_NUM_THREADS": "1"}


def _run(args, cwd, env):
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_tf_line(proc, prog):
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(err_lines) == 1, proc.stderr[-3000:]
    assert err_lines[0].startswith(f"error: {prog} ") and "TensorFlow is not installed here" in err_lines[0] \
        and "pip install tensorflow-cpu" in err_lines[0], err_lines
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]


def test_the_child_process_has_no_tensorflow(tmp_path, no_tf_env):
    code = ("import importlib.util\nassert importlib.util.find_spec('tensorflow') is None\n"
            "try:\n    import tensorflow\nexcept ModuleNotFoundError as e:\n    assert e.name == 'tensorflow'\n"
            "    print('ok')\n")
    proc = _run(["-c", code], tmp_path, no_tf_env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("phase", ["train", "test"])
def test_tf_reference_says_tensorflow_is_needed(tmp_path, no_tf_env, phase):
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), name="demo", size=32, n_train=2, n_test=1)
    proc = _run(["-m", "tf_reference", "--phase", phase, "--light", "True", "--dataset", "demo", "--img_size", "32",
                 "--ch", "4", "--n_dis", "4", "--iteration", "1", "--epoch", "1"], tmp_path, no_tf_env)
    _one_tf_line(proc, "python -m tf_reference")
    assert "python -m torch_port" in proc.stderr


def test_demo_says_tensorflow_is_needed_before_any_work(tmp_path, no_tf_env):
    proc = _run(["-m", "ugatit_common.demo", "demo_run"], tmp_path, no_tf_env)
    _one_tf_line(proc, "the demo")
    assert "python -m torch_port --demo" in proc.stderr and "python -m morph demo" in proc.stderr
    assert not os.path.exists(tmp_path / "demo_run")  # nothing built, nothing half-done


def test_parity_report_says_tensorflow_is_needed(tmp_path, no_tf_env):
    proc = _run(["-m", "parity_tests.report", os.path.join(GOLDEN, "init"), str(tmp_path / "out"),
                 "--img_size", "64", "--fast_paths", "none"], tmp_path, no_tf_env)
    _one_tf_line(proc, "python -m parity_tests.report")
    assert not os.path.exists(tmp_path / "out")  # the folder it claimed is released


def test_free_run_says_tensorflow_is_needed_and_runs_without_it_against_itself(tmp_path, no_tf_env):
    proc = _run(["-m", "parity_tests.free_run", "--iterations", "1"], tmp_path, no_tf_env)
    _one_tf_line(proc, "python -m parity_tests.free_run")
    assert "--perturb" in proc.stderr
    proc = _run(["-m", "parity_tests.free_run", "--iterations", "1", "--perturb", "1e-15", "--quiet"], tmp_path,
                no_tf_env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_broken_tensorflow_is_not_called_missing():
    """Only `import tensorflow` failing for want of the package is 'not installed' (one line, exit
    2); a missing TF submodule or dependency of an installed TF is a broken install (an internal
    error with its traceback), and so is an unrelated error raised while handling one."""
    from ugatit_common.cli_errors import tensorflow_missing
    installed = importlib.util.find_spec("tensorflow") is not None
    assert tensorflow_missing(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")) is not installed
    assert not tensorflow_missing(ModuleNotFoundError("x", name="tensorflow.python.pywrap_tensorflow"))
    assert not tensorflow_missing(ModuleNotFoundError("x", name="keras"))
    try:
        try:
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        except ModuleNotFoundError:
            raise KeyError("unrelated")  # noqa: B904 - raised while handling: its context, not its cause
    except KeyError as e:
        assert not tensorflow_missing(e)
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
    assert tensorflow_missing(wrapped) is not installed


def test_torch2tf_without_tensorflow_writes_no_meta_and_says_so(tmp_path, no_tf_env):
    """torch2tf writes the checkpoint's .meta (the official train graph) with TensorFlow; without
    it the checkpoint is written as before, without a .meta, one note line on stderr saying so and
    where tf2torch will take the settings from, exit 0."""
    from parity_tests.test_convert_cases import _meta_port
    src = _meta_port(tmp_path / "port")
    proc = _run([os.path.join(ROOT, "weights_convert.py"), "torch2tf", src, str(tmp_path / "tf" / "m")], tmp_path,
                no_tf_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: no .meta written (TensorFlow not installed)") \
        and "tf2torch" in notes[0] and "smoothing" in notes[0], proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "tf")) == ["checkpoint", "m-3.data-00000-of-00001", "m-3.index",
                                                       "ugatit-run.json"]
