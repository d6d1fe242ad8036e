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
import pytest

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


def strict_text_load(text: str):
    """strict_load, also refusing what serde_json refuses: a lone surrogate (`\\udcff`), which
    Python's json writes for a file name whose bytes are not UTF-8 (and Go reads as U+FFFD)."""
    data = strict_load(text)

    def walk(x):
        if isinstance(x, str):
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in x), f"a lone surrogate in {x!r}: {text[:200]}"
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(data)
    text.encode("utf-8")  # valid Unicode throughout
    return data


def test_names_that_are_not_utf8_are_valid_strict_json_and_lose_nothing():
    """A file name whose bytes are not UTF-8 (os.fsdecode keeps each bad byte as a lone surrogate)
    was written as `\\udcff`: Python, jq read it, serde_json refuses the file and Go reads U+FFFD
    (the byte lost). Now the text holds the byte as `\\xff` (valid Unicode, readable) and the top
    `non_utf8` field its exact bytes (base64) by where it is; restore gives back the very name
    (os.fsencode equal), and leaves alone a name that merely contains the text `\\xff`."""
    import base64
    cat, dog = os.fsdecode(b"/data/cat\xff.png"), os.fsdecode(b"caf\xc3\xa9-\xe9t\xe9")
    literal = "/data/cat\\xff.png"  # a valid name holding a backslash: not a byte, never changed
    obj = {"input": cat, "files": [literal, dog, "plain"], "nested": {"a/b": [{"name": cat}]},
           "worst": math.nan, "scalar": 3}
    text = strict_json.dumps(obj, indent=1)
    data = strict_text_load(text)
    assert data["input"] == literal and data["files"] == [literal, "café-\\xe9t\\xe9", "plain"], data
    assert data["nested"]["a/b"][0]["name"] == literal and data["worst"] is None
    assert set(data["non_utf8"]) == {"/input", "/files/1", "/nested/a~1b/0/name"}, data["non_utf8"]
    assert base64.b64decode(data["non_utf8"]["/input"]) == b"/data/cat\xff.png"
    assert base64.b64decode(data["non_utf8"]["/files/1"]) == b"caf\xc3\xa9-\xe9t\xe9"
    back = strict_json.restore(data)
    assert back["input"] == cat and back["files"] == [literal, dog, "plain"] and back["nested"]["a/b"][0]["name"] == cat
    assert os.fsencode(back["input"]) == b"/data/cat\xff.png" and math.isnan(back["worst"]) and back["scalar"] == 3
    assert "non_utf8" not in back and "non_finite" not in back
    # ensure_ascii=False (UTF-8 text): valid too, where json.dumps wrote a surrogate no encoder takes
    strict_text_load(strict_json.dumps(obj, ensure_ascii=False))
    # a key, or a string at the top, has no place in the fields: its bytes as `\xNN` text alone
    assert strict_text_load(strict_json.dumps({cat: 1})) == {literal: 1}
    assert strict_text_load(strict_json.dumps(cat)) == literal
    # a hand-edited entry that no longer fits the text is left as it is
    edited = dict(data, input="changed")
    assert strict_json.restore(edited)["input"] == "changed"


def test_the_run_record_keeps_a_name_that_is_not_utf8(tmp_path):
    """ugatit-run.json holds the run's flags (--checkpoint_dir, --dataset...): a folder name that is
    not UTF-8 made it a file serde_json refuses; now strict JSON, read back as the very name."""
    from ugatit_common import checkpoint_policy as policy
    from ugatit_common import options as opt
    folder = os.fsdecode(b"ck\xff")
    cfg = opt.config_from(light=True, img_size=32, dataset=os.fsdecode(b"d\xe9mo"), checkpoint_dir=folder)
    raw = policy.run_record_bytes(cfg, "test")
    data = strict_text_load(raw.decode("utf-8"))
    assert data["options"]["checkpoint_dir"] == "ck\\xff", data
    (tmp_path / policy.RUN_RECORD).write_bytes(raw)
    back = policy.read_run_record(str(tmp_path))
    assert back["options"]["checkpoint_dir"] == folder and back["options"]["dataset"] == cfg["dataset"]


def test_torch2tf_takes_an_equal_run_record_with_such_a_name_as_equal(tmp_path):
    """torch2tf compares the record it would write with the one in the output folder: its own was
    read without strict_json.restore, so a --dataset that is not UTF-8 (its `\\xNN` text against
    the name read back) made an equal record "another run's settings", refused."""
    import weights_convert as wc
    from ugatit_common import checkpoint_policy as policy
    from ugatit_common import options as opt
    cfg = opt.config_from(light=True, img_size=32, dataset=os.fsdecode(b"d\xe9mo"))
    recorded = {"img_size", "dataset", "light"}
    ours, _ = wc.run_record_plan(str(tmp_path), cfg, recorded, "src", overwrite=False, continued=False)
    (tmp_path / policy.RUN_RECORD).write_bytes(ours)
    assert wc.run_record_plan(str(tmp_path), cfg, recorded, "src", overwrite=False, continued=False) == (None, False)
    with pytest.raises(wc.ConversionError, match="records another run's settings"):  # another name: refused
        wc.run_record_plan(str(tmp_path), dict(cfg, dataset=os.fsdecode(b"d\xe8mo")), recorded, "src",
                           overwrite=False, continued=False)


def test_what_json_dumps_would_write_unstrict_is_cleaned_everywhere():
    """A tuple is written as a list, so its NaN is null and named too; a key that is not UTF-8 is
    `\\xNN` text in the pointer that names a value under it; a lone surrogate that no byte gave
    (not a name read from the OS) is `\\udXXX` text: the whole file stays strict JSON."""
    cat = os.fsdecode(b"cat\xff")
    data = strict_text_load(strict_json.dumps({"pair": (1.0, math.nan), cat: {"v": math.inf}, "odd": "a\ud800b"}))
    assert data["pair"] == [1.0, None] and data["odd"] == "a\\ud800b", data
    assert data["non_finite"] == {"/pair/1": "NaN", "/cat\\xff/v": "Infinity"}, data
    assert math.isnan(strict_json.restore(data)["pair"][1])


def test_restore_leaves_a_hand_edited_file_as_it_is():
    """`restore` puts back only what its fields still fit: a number edited in where a NaN was stays
    that number; a pointer that leads nowhere (into a scalar, a word as a list index) and fields
    that are no objects are left alone, never an exception."""
    edited = {"a": 1.5, "b": [None], "c": 3, "non_finite": {"/a": "NaN", "/b/x": "NaN", "/c/d/e": "NaN"}}
    assert strict_json.restore(edited) == {"a": 1.5, "b": [None], "c": 3}
    for odd in ("NaN", ["/a"], 3):
        assert strict_json.restore({"a": None, "non_finite": odd}) == {"a": None, "non_finite": odd}
