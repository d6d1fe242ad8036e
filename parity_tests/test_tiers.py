"""The two test tiers (parity_tests/conftest.py): the quick tier leaves out exactly the tests marked
slow and says so; `--full` runs everything; a node id named on the command line runs in either; and
every suite keeps quick-tier tests, so a quick run still exercises every kind of criterion."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import pytest

from parity_tests.conftest import ROOT

# Suites that are full-tier only as a whole, and why (everything else keeps quick tests).
FULL_ONLY = {
    "test_train_compile.py": "inductor compiles 6 training graphs per run",
    "test_walkthrough.py": "the README walkthrough end to end",
}


@functools.lru_cache(maxsize=None)
def _collect(*args) -> tuple[list[str], str]:
    env = dict(os.environ)
    env.pop("UGATIT_FULL_TIER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = tuple(line.strip() for line in proc.stdout.splitlines() if "::" in line)
    return ids, proc.stdout


def _slow_ids() -> set[str]:
    ids, _ = _collect("--full", "-m", "slow", "parity_tests")
    return set(ids)


@pytest.mark.slow  # collects the suite three times
def test_quick_tier_deselects_exactly_the_slow_tests_and_full_runs_all():
    quick, out = _collect("parity_tests")
    full, _ = _collect("--full", "parity_tests")
    slow = _slow_ids()
    assert slow, "no test is marked slow: the full tier would equal the quick one"
    assert set(quick) == set(full) - slow
    assert f"({len(slow)} deselected)" in out, out[-500:]


def test_node_id_on_the_command_line_runs_in_the_quick_tier():
    """A slow test named by its node id is collected in the quick tier, and left out when its file
    is named. The slow test is this file's own: one small file collected, not the whole suite
    (test_two_workers_say_what_was_deselected runs this test twice more)."""
    assert test_quick_tier_deselects_exactly_the_slow_tests_and_full_runs_all.pytestmark[0].name == "slow"
    one = "parity_tests/test_tiers.py::test_quick_tier_deselects_exactly_the_slow_tests_and_full_runs_all"
    ids, _ = _collect(one)
    assert list(ids) == [one]
    in_file, _ = _collect("parity_tests/test_tiers.py")
    assert in_file and one not in in_file


def test_every_suite_keeps_quick_tests():
    quick, _ = _collect("parity_tests")
    files = {i.split("::")[0].split("/")[-1] for i in quick}
    suites = {f for f in os.listdir(os.path.join(ROOT, "parity_tests")) if f.startswith("test_") and f.endswith(".py")}
    missing = sorted(suites - files - set(FULL_ONLY))
    assert not missing, f"suites with no quick-tier test: {missing}"
    assert not (files & set(FULL_ONLY)), "a full-only suite has quick tests: update FULL_ONLY"


def test_a_gpu_machine_collects_the_cuda_tests(tmp_path):
    """On a machine with CUDA (simulated: torch.cuda.is_available() True before any test module
    is imported), bench/gpu_check.sh's selection `-m "cuda and not slow"` collects without a
    usage error and selects every test marked cuda (plus the cuda cases of tests parametrized over
    the devices present)."""
    (tmp_path / "fake_cuda_present.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("UGATIT_FULL_TIER", None)
    args = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "--full", "-m", "cuda and not slow"]
    gpu = subprocess.run(args + ["-p", "fake_cuda_present", "parity_tests"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert gpu.returncode == 0, gpu.stdout[-2000:] + gpu.stderr[-2000:]
    selected = {line.strip() for line in gpu.stdout.splitlines() if "::" in line}
    cuda_ids, _ = _collect("--full", "-m", "cuda and not slow", "parity_tests")
    extra = selected - set(cuda_ids)  # tests parametrized over the devices present gain a cuda case
    assert set(cuda_ids) <= selected and all("cuda" in i for i in extra), (set(cuda_ids) - selected, extra)


def test_without_tensorflow_the_tf_tests_are_skipped_unless_required(tmp_path):
    """A machine without TensorFlow (the GPU machine; simulated: `tensorflow` blocked in
    sys.modules before any test module is imported): the tests marked tf are skipped with the
    reason, the others run; with UGATIT_REQUIRE_TF set (CI) the run stops with a usage error
    instead, so CI can never pass on skipped parity."""
    (tmp_path / "no_tensorflow.py").write_text("import sys\nsys.modules['tensorflow'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("UGATIT_FULL_TIER", "UGATIT_REQUIRE_TF"):
        env.pop(name, None)
    tests = ["parity_tests/test_tf_bundle.py::test_checkpoint_state_read_by_tf",
             "parity_tests/test_tf_bundle.py::test_write_checkpoint_state_matches_tf_format"]
    args = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no_tensorflow", *tests]
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "1 passed, 1 skipped" in out, out[-2000:]
    assert "needs TensorFlow, not installed here" in out, out[-2000:]
    required = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(env, UGATIT_REQUIRE_TF="1"),
                              timeout=300)
    assert required.returncode == 4 and "UGATIT_REQUIRE_TF is set, but TensorFlow is not installed" in \
        required.stdout + required.stderr, (required.stdout + required.stderr)[-2000:]
    # in two pytest-xdist workers (README command 2, CI: -n 2) a worker's usage error would reach
    # the controller as an INTERNALERROR without its message: each tf test errors with it instead
    workers = subprocess.run(args + ["-n", "2", "--dist", "loadfile", "--basetemp", str(tmp_path / "w")], cwd=ROOT,
                             capture_output=True, text=True, env=dict(env, UGATIT_REQUIRE_TF="1"), timeout=300)
    assert workers.returncode == 1 and "1 passed, 1 error" in workers.stdout and \
        "UGATIT_REQUIRE_TF is set, but TensorFlow is not installed" in workers.stdout, \
        (workers.stdout + workers.stderr)[-2000:]
    # ... but only for tf tests selected to run: `-m "not tf"` runs the rest
    rest = subprocess.run(args + ["-m", "not tf"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(env, UGATIT_REQUIRE_TF="1"), timeout=300)
    assert rest.returncode == 0 and "1 passed, 1 deselected" in rest.stdout, (rest.stdout + rest.stderr)[-2000:]


def test_two_workers_say_what_was_deselected(tmp_path):
    """README command 2 and CI run the tests in two pytest-xdist workers (`-n 2`). The workers
    deselect (the tier's slow tests, -k / -m) and the controller prints the summary: the count
    each worker deselected must reach the last line, as in a run without workers (a quick run
    says what it left out). A file with slow and quick tests, one quick test selected by -k."""
    env = dict(os.environ)
    env.pop("UGATIT_FULL_TIER", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "parity_tests/test_tiers.py",
            "-k", "node_id_on_the_command_line"]
    lines = []
    for extra, temp in (([], "plain"), (["-n", "2", "--dist", "loadfile"], "workers")):
        proc = subprocess.run(args + extra + ["--basetemp", str(tmp_path / temp)], cwd=ROOT, capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines.append(re.findall(r"\d+ passed, \d+ deselected", proc.stdout))
    plain, workers = lines
    assert plain and plain == workers, (plain, workers)


def test_the_full_tier_hands_out_the_long_files_first(monkeypatch):
    """conftest's scheduling of the full tier in two workers: xdist's own order (files with most
    tests first) handed the files of few but long tests out last, one worker running one alone at
    the end. There the long files go first, longest first, the rest in xdist's order; xdist's
    reordering is off only in the full tier; every name in the table is a test file (a renamed
    one would silently lose its place)."""
    from types import SimpleNamespace

    from parity_tests import conftest
    for name in conftest.FULL_TIER_LONG_FILES:
        assert os.path.isfile(os.path.join(ROOT, "parity_tests", name)), name
    items = [SimpleNamespace(nodeid=f"parity_tests/{f}::t{i}") for f, n in
             (("test_a.py", 3), ("test_walkthrough.py", 1), ("test_b.py", 5), ("test_train_compile.py", 2))
             for i in range(n)]
    conftest._long_files_first(items)
    files = [i.nodeid.split("::")[0].split("/")[1] for i in items]
    assert files == ["test_train_compile.py"] * 2 + ["test_walkthrough.py"] + ["test_b.py"] * 5 + ["test_a.py"] * 3
    assert [i.nodeid for i in items[:2]] == ["parity_tests/test_train_compile.py::t0",
                                             "parity_tests/test_train_compile.py::t1"]  # within a file: as written
    monkeypatch.delenv("UGATIT_FULL_TIER", raising=False)
    for full, want in ((True, False), (False, True)):
        config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=True), getoption=lambda _, full=full: full)
        conftest.pytest_configure(config)
        assert config.option.loadscopereorder is want
