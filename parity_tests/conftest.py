"""Shared fixtures: where the official golden bundle and manifests are, and hypothesis profiles."""
import os
import sys

import pytest
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# inductor's cache per ATen CPU capability (the portability variants would load each other's kernels)
from torch_port.fast import separate_inductor_cache  # noqa: E402

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
