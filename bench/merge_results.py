"""The merges inside bench/gpu_check.sh and bench/gpu_check_infer.sh, written as strict JSON
(ugatit_common.strict_json: a NaN / inf timing or loss as null, named in the top `non_finite`
field by where it is in the merged file, so nothing is lost and jq / JavaScript / Go / Rust read it).

    python bench/merge_results.py parts WORK OUT.json          # gpu_check.sh: WORK/*.json as one file
    python bench/merge_results.py infer JSON STEPS TESTS_LOG   # gpu_check_infer.sh: the steps added to JSON

Each writes OUT.json.tmp beside its file, then renames it over (a run cut mid-write keeps the last
whole merge)."""
from __future__ import annotations

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ (imported from a test too)
from workers import strict_json  # noqa: E402 - bench/workers.py


def _read(path: str):
    """A JSON file as the project's readers see it: its `non_finite` numbers back in place (a part
    written with Python's bare NaN is read too)."""
    with open(path) as fh:
        return strict_json().restore(json.load(fh))


def _write(path: str, data) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(strict_json().dumps(data, indent=1, default=str))
    os.replace(path + ".tmp", path)


def merge_parts(work: str, out: str) -> dict:
    """results.json: every JSON part in `work` under its name (a part cut mid-write is named,
    not fatal)."""
    parts = {}
    for p in sorted(glob.glob(os.path.join(work, "*.json"))):
        try:
            parts[os.path.basename(p)[:-5]] = _read(p)
        except (OSError, ValueError) as e:
            parts[os.path.basename(p)[:-5]] = {"unreadable": str(e)}
    _write(out, parts)
    return parts


def add_steps(path: str, steps: str, tests_log: str) -> dict:
    """infer.json with each step's exit code and seconds (`steps`: "NAME CODE SECONDS;...") and
    the tests' pytest summary line; the benchmark's own JSON kept (or its absence said)."""
    data = _read(path) if os.path.exists(path) else {"sections": {}, "errors": {"bench": "no JSON written"}}
    data["steps"] = {n: {"exit": int(c), "seconds": float(s)} for n, c, s in
                     (item.split() for item in steps.split(";") if item.strip())}
    with open(tests_log) as fh:
        tail = [ln for ln in fh.read().splitlines()
                if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s", ln)]
    data["steps"].setdefault("tests", {})["summary"] = tail[-1] if tail else "no pytest summary (timed out?)"
    _write(path, data)
    print("gpu_check_infer:", "; ".join(f"{n} exit {v['exit']} ({v['seconds']:.0f} s)"
                                        for n, v in data["steps"].items() if "exit" in v))
    print("tests:", data["steps"]["tests"]["summary"])
    return data


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["parts"] and len(argv) == 3:
        merge_parts(*argv[1:])
    elif argv[:1] == ["infer"] and len(argv) == 4:
        add_steps(*argv[1:])
    else:
        print("usage: merge_results.py parts WORK OUT.json | infer JSON STEPS TESTS_LOG", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
