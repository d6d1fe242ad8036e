"""The one rule for a NaN or an infinity in a JSON file the project writes: JSON has no such
number (Python writes `NaN` / `Infinity`, which strict parsers - jq, JavaScript, Go, Rust -
refuse), so each is written as `null`, and a dict at the top gets a `non_finite` field naming
where each was (a JSON Pointer, RFC 6901) and what it was: {"/curve/3/worst": "Infinity", ...}
(`NaN`, `Infinity`, `-Infinity`). `restore` puts them back, for the project's readers."""
from __future__ import annotations

import json
import math

FIELD = "non_finite"
_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _name(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _token(key) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _clean(obj, where: str, found: dict):
    if isinstance(obj, float) and not math.isfinite(obj):  # numpy's float64 too (a float subclass)
        found[where] = _name(obj)
        return None
    if isinstance(obj, dict):
        return {k: _clean(v, f"{where}/{_token(k)}", found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{where}/{i}", found) for i, v in enumerate(obj)]
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps(obj, **kwargs) as strict JSON (allow_nan=False): non-finite floats as null,
    named in the top dict's `non_finite` field (a list or scalar at the top: null alone)."""
    found: dict = {}
    clean = _clean(obj, "", found)
    if found and isinstance(clean, dict):
        clean = {**clean, FIELD: found}
    return json.dumps(clean, allow_nan=False, **kwargs)


def restore(data):
    """A dict read from such a file with its non-finite numbers back in place (the `non_finite`
    field taken off); anything else as it is."""
    if not isinstance(data, dict) or not isinstance(data.get(FIELD), dict):
        return data
    data = dict(data)
    for where, name in data.pop(FIELD).items():
        node = data
        keys = [k.replace("~1", "/").replace("~0", "~") for k in str(where).split("/")[1:]]
        try:
            for k in keys[:-1]:
                node = node[int(k)] if isinstance(node, list) else node[k]
            last = int(keys[-1]) if isinstance(node, list) else keys[-1]
            if node[last] is None and name in _NAMES:
                node[last] = _NAMES[name]
        except (KeyError, IndexError, ValueError, TypeError):  # a hand-edited file: left as it is there
            continue
    return data
