"""Every JSON file the project writes is strict JSON (ugatit_common.strict_json): a NaN or an
infinity is `null`, named with what it was in the top object's `non_finite` field; nothing
writes `NaN` / `Infinity`, which Python reads and strict parsers (jq, JavaScript) refuse.
Before: free_run's curve of a blown-up run held `Infinity` / `NaN`, and so did free_run.json
and the benchmarks' results when a timing failed."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from ugatit_common import strict_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strict_load(text: str):
    """json.loads as a strict parser: NaN / Infinity / -Infinity are errors."""
    def refuse(constant):
        raise AssertionError(f"{constant} in strict JSON: {text[:200]}")
    return json.loads(text, parse_constant=refuse)


def blown_up() -> dict:
    """A free-run result (parity_tests/free_run.py's keys) whose training blew up."""
    return {"reference": "tf", "candidate": "port", "budget": 1e-9, "iterations": 2, "held": 1,
            "first_over": {"iteration": 2, "category": "weights", "value": math.inf},
            "seconds": 0.1, "curve": [{"iteration": 1, "worst": 1e-12},
                                      {"iteration": 2, "worst": np.float64("nan"), "weights": {"value": -math.inf}}]}


def test_non_finite_numbers_are_null_and_named():
    data = strict_load(strict_json.dumps(blown_up()))
    assert data["curve"][1]["worst"] is None and data["first_over"]["value"] is None
    assert data["non_finite"] == {"/first_over/value": "Infinity", "/curve/1/worst": "NaN",
                                  "/curve/1/weights/value": "-Infinity"}
    back = strict_json.restore(data)
    assert back["first_over"]["value"] == math.inf and math.isnan(back["curve"][1]["worst"])
    assert back["curve"][1]["weights"]["value"] == -math.inf and "non_finite" not in back
    assert back["curve"][0] == {"iteration": 1, "worst": 1e-12}
    # a finite result is written as json.dumps writes it, with no extra field
    finite = {"a": [1.5, 2], "b/c": {"~": 0.25}}
    assert strict_json.dumps(finite, indent=1) == json.dumps(finite, indent=1)
    odd = strict_load(strict_json.dumps({"a/b": {"~x": math.nan}}))
    assert odd["non_finite"] == {"/a~1b/~0x": "NaN"} and math.isnan(strict_json.restore(odd)["a/b"]["~x"])


def test_free_run_writes_a_blown_up_curve_as_strict_json(tmp_path, monkeypatch):
    from parity_tests import free_run, free_run_report
    monkeypatch.setattr(free_run, "prepare", lambda args: None)
    monkeypatch.setattr(free_run, "run", lambda args, prepared: blown_up())
    monkeypatch.chdir(tmp_path)
    assert free_run.main(["--json", "curve.json", "--iterations", "2"]) == 1
    data = strict_load(open("curve.json").read())
    assert data["non_finite"]["/curve/1/worst"] == "NaN"
    from parity_tests.harness import written_by_report  # a later --json there still knows it for a curve
    assert written_by_report(os.path.abspath("curve.json"), curve=True)
    assert strict_load(free_run_report.json_text(blown_up()))["curve"][1]["worst"] is None  # free_run.json


def test_the_benchmarks_results_are_strict_json(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from workers import check_json_out, write_json
    finally:
        sys.path.pop(0)
    path = str(tmp_path / "results.json")
    write_json(path, {"rows": [{"mode": "fp16", "seconds": math.nan}]}, indent=1)
    assert strict_load(open(path).read())["non_finite"] == {"/rows/0/seconds": "NaN"}
    assert check_json_out(path) is None  # replaced by the next run, as before
