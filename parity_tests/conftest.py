"""Shared fixtures: where the official golden bundle and manifests are, and hypothesis profiles."""
import os
import sys

import pytest
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FIXTURES = os.path.join(ROOT, "parity_tests", "fixtures")
GOLDEN = os.path.join(FIXTURES, "official_golden_light64")

# quick for CI (the default), thorough on request: pytest --hypothesis-profile=thorough
settings.register_profile("ci", max_examples=8, deadline=None)
settings.register_profile("thorough", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN
