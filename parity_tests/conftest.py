"""Shared fixtures (where the official golden bundle and manifests are), hypothesis profiles, and
the two test tiers.

Tiers: `pytest -q` runs the quick tier, every kind of criterion at small sizes; `pytest -q --full`
(or UGATIT_FULL_TIER=1) the full tier, which adds the tests marked `slow`: the same criteria at
more configurations, sizes or iterations, and the compiled fast paths. A quick run lists the
full-tier tests it left out as "deselected" (never as passed); a test named by its node id on the
command line runs in either tier."""
import collections
import os
import sys

import pytest
from hypothesis import settings

# cuBLAS reads its workspace setting when its first handle is made, before any test can set it:
# the exact fp32 CUDA tests run in deterministic mode, which needs a fixed workspace (as
# `torch_port.train.pick_device` sets for the command lines). No effect on a CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# inductor's cache per ATen CPU capability (the portability variants would load each other's kernels)
from torch_port.fast import separate_inductor_cache  # noqa: E402
from ugatit_common.cli_errors import tensorflow_installed  # noqa: E402 - a broken TF counts as installed

separate_inductor_cache()

FIXTURES = os.path.join(ROOT, "parity_tests", "fixtures")
GOLDEN = os.path.join(FIXTURES, "official_golden_light64")

# quick and reproducible for CI (the default: the same 8 examples on every run, so a red CI run
# reproduces locally); thorough and freshly random on request: HYPOTHESIS_PROFILE=thorough
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


@pytest.fixture(autouse=True)
def _torch2tf_meta_only_in_tf_tests(request, monkeypatch):
    """`weights_convert.py torch2tf` writes the checkpoint's .meta where TensorFlow is installed
    (tf_reference builds the official train graph: seconds per config). A test not marked `tf`
    runs in-process as on a machine without TensorFlow, the same everywhere: no .meta (the tests
    marked tf check it)."""
    if request.node.get_closest_marker("tf") is None:
        import weights_convert
        monkeypatch.setattr(weights_convert, "_meta_builder", lambda: (None, "TensorFlow not installed"))


FULL_TIER_ENV = "UGATIT_FULL_TIER"
# CI sets it: the tests marked tf then need TensorFlow (a usage error without it), never skipped
REQUIRE_TF_ENV = "UGATIT_REQUIRE_TF"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="the full tier: also the tests marked slow (the quick tier leaves them out)")


def full_tier(config) -> bool:
    return bool(config.getoption("--full")) or os.environ.get(FULL_TIER_ENV, "") not in ("", "0")


def pytest_report_header(config):
    lines = ["tier: full (every test)" if full_tier(config)
             else "tier: quick (tests marked slow are deselected; pytest --full runs them)"]
    if not tensorflow_installed():
        lines.append("TensorFlow: not installed here - the tests marked tf (tf_reference live) are skipped")
    return lines


def _tf_required() -> bool:
    return os.environ.get(REQUIRE_TF_ENV, "") not in ("", "0")


def _tf_items(items) -> list:
    return [item for item in items if item.get_closest_marker("tf") is not None]


def _skip_tf_tests_without_tensorflow(items) -> None:
    """A machine without TensorFlow (a GPU machine, a torch-only install): the tests that run
    tf_reference live are skipped, said as such; everything else runs. Where REQUIRE_TF_ENV is
    set (CI), a missing TensorFlow is a usage error instead (pytest_collection_finish), so no
    parity test is ever skipped there."""
    if tensorflow_installed() or _tf_required():
        return
    skip = pytest.mark.skip(reason="needs TensorFlow, not installed here (tf_reference runs the official graph)")
    for item in _tf_items(items):
        item.add_marker(skip)


def pytest_collection_finish(session):
    """REQUIRE_TF_ENV: the tests selected to run (after -m / -k and the tiers) that are marked tf
    need TensorFlow; without it, a usage error rather than skips."""
    if not _tf_required() or tensorflow_installed():
        return
    needed = _tf_items(session.items)
    if needed:
        message = (f"{REQUIRE_TF_ENV} is set, but TensorFlow is not installed: {len(needed)} tests "
                   f"marked tf need it (pip install -c constraints.txt -e .)")
        if hasattr(session.config, "workerinput"):
            # a pytest-xdist worker (-n 2): a usage error here reaches the controller as an
            # INTERNALERROR without its message, so each such test fails with it instead
            global _TF_REQUIRED_BUT_MISSING
            _TF_REQUIRED_BUT_MISSING = message
            return
        raise pytest.UsageError(message)


_TF_REQUIRED_BUT_MISSING = ""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _TF_REQUIRED_BUT_MISSING and item.get_closest_marker("tf") is not None:
        pytest.fail(_TF_REQUIRED_BUT_MISSING, pytrace=False)


def _named_on_command_line(config, nodeid: str) -> bool:
    """A node id given on the command line (path::test[param]) selects that test in either tier."""
    for arg in config.args:
        if "::" not in arg:
            continue
        path, _, rest = arg.partition("::")
        rel = os.path.relpath(os.path.abspath(path), str(config.rootpath)).replace(os.sep, "/")
        wanted = rel + "::" + rest
        if nodeid == wanted or nodeid.startswith(wanted + "[") or nodeid.startswith(wanted + "::"):
            return True
    return False


def _check_cuda_marker(items) -> None:
    """bench/gpu_check.sh selects the GPU tests with `-m cuda`: a test skipped for want of CUDA
    without that marker would never run anywhere. Checked where such skips are in force (a
    machine without CUDA); on a GPU machine a skip whose reason names CUDA is one for machines
    WITHOUT it (e.g. "a CUDA device is present") and must not stop the collection."""
    import torch
    if torch.cuda.is_available():
        return
    bad = [item.nodeid for item in items if item.get_closest_marker("cuda") is None
           and any("cuda" in str(m.kwargs.get("reason", "")).lower() and (not m.args or m.args[0])
                   for m in item.iter_markers("skipif"))]
    if bad:
        raise pytest.UsageError("CUDA-only tests without the `cuda` marker: " + ", ".join(bad))


# pytest-xdist (README command 2 and CI run `-n 2`): the workers collect and deselect, and the
# controller, which prints the summary, never hears of it, so a quick run would no longer say
# "N deselected". Each worker sends the ids it deselected; the controller adds them to its own
# tally once (every worker collects and deselects the same tests).
class _DeselectedOnWorker:
    """What pytest's terminal reporter counts for a deselected test, for one a worker deselected."""
    def __init__(self, nodeid: str):
        self.nodeid = nodeid


def pytest_deselected(items):
    if items and hasattr(items[0].config, "workeroutput"):
        items[0].config.workeroutput.setdefault("deselected", []).extend(item.nodeid for item in items)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    ids = getattr(node, "workeroutput", {}).get("deselected", [])
    config = node.config
    if ids and not getattr(config, "_ugatit_deselected_told", False):
        config._ugatit_deselected_told = True
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # as pytest's own pytest_deselected hook adds them: counted in the last line
            reporter.stats.setdefault("deselected", []).extend(_DeselectedOnWorker(i) for i in ids)


# The full tier in two workers (`--dist loadfile`, CI): pytest-xdist hands whole files out in the
# order most tests first, so the files that take minutes with few tests came last and one worker
# ran one alone while the other had finished. There the files below go first, longest first
# (the rest keep xdist's order). Minutes of one worker beside the other: a stale figure costs time,
# never a result. The quick tier keeps xdist's order.
FULL_TIER_LONG_FILES = {  # measured: AMD EPYC, .ci/run of 55a6295 (the chains: 3 since, about half)
    "test_free_run.py": 8.2, "test_train_compile.py": 7.0, "test_tf_console.py": 5.7, "test_nothing_lost.py": 5.1,
    "test_train_graphs.py": 3.4, "test_official_configurations.py": 3.3, "test_run_owner.py": 3.0,
    "test_results_pages.py": 2.6, "test_config_inference.py": 2.3, "test_outputs_guard.py": 2.2,
    "test_onnx.py": 2.2, "test_torch2tf_meta_files.py": 1.6, "test_network_parity.py": 1.6, "test_tiers.py": 1.5,
    "test_run_image_size.py": 1.3, "test_convert_cases.py": 1.3, "test_training_parity.py": 1.3,
    "test_tf_reference_golden.py": 1.3, "test_walkthrough.py": 1.1,
}


def pytest_configure(config):
    if full_tier(config) and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # (the controller's scheduler: files in collection order)


def _long_files_first(items) -> None:
    """Stable: files by FULL_TIER_LONG_FILES' minutes, then by number of tests (xdist's order)."""
    count = collections.Counter(item.nodeid.split("::")[0] for item in items)

    def key(item):
        path = item.nodeid.split("::")[0]
        return -FULL_TIER_LONG_FILES.get(os.path.basename(path), 0), -count[path]
    items.sort(key=key)


def pytest_collection_modifyitems(config, items):
    _check_cuda_marker(items)
    _skip_tf_tests_without_tensorflow(items)
    if full_tier(config):
        _long_files_first(items)
        return
    keep, drop = [], []
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        (drop if slow and not _named_on_command_line(config, item.nodeid) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
