r"""The one rule for what JSON cannot hold in a JSON file the project writes, so that strict
parsers (jq, JavaScript, Go, Rust's serde_json) read it and nothing is lost:

- a NaN or an infinity (JSON has no such number; Python writes `NaN` / `Infinity`) is written as
  `null`, and a dict at the top gets a `non_finite` field naming where each was (a JSON Pointer,
  RFC 6901) and what it was: {"/curve/3/worst": "Infinity", ...} (`NaN`, `Infinity`, `-Infinity`);
- a string holding bytes that are not UTF-8 (a file name, read by Python with surrogateescape:
  json would write lone `\udcXX` escapes, which serde_json refuses and Go turns into U+FFFD) is
  written with each such byte as the text `\xNN`, and the top dict's `non_utf8` field holds its
  exact bytes, base64, by where it is: {"/input": "L2RhdGEvY2F0/y5wbmc="}.

`restore` puts both back, for the project's readers. A dict key, or a string at the top, has no
place in those fields: its bytes are written as `\xNN` text alone."""
from __future__ import annotations

import base64
import json
import math
import re

FIELD = "non_finite"
BYTES_FIELD = "non_utf8"
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _name(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _token(key) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def as_text(s: str) -> str:
    """`s` with each byte that is not UTF-8 (surrogateescape's U+DC80-U+DCFF) as the text `\\xNN`,
    and any other lone surrogate as `\\udXXX`: valid Unicode, what a strict parser reads."""
    if not _SURROGATE.search(s):
        return s
    data = _bytes_of(s)
    if data is not None:
        return data.decode("utf-8", "backslashreplace")
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _bytes_of(s: str) -> bytes | None:
    """The bytes a file name `s` stands for (os.fsencode's), or None when it holds a lone surrogate
    that no byte gave (not a name read from the OS)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def _key(k):
    return as_text(k) if isinstance(k, str) else k


def _clean(obj, where: str, found: dict, raw: dict):
    if isinstance(obj, float) and not math.isfinite(obj):  # numpy's float64 too (a float subclass)
        found[where] = _name(obj)
        return None
    if isinstance(obj, str) and _SURROGATE.search(obj):
        data = _bytes_of(obj)
        if data is not None:
            raw[where] = base64.b64encode(data).decode("ascii")
        return as_text(obj)
    if isinstance(obj, dict):
        return {_key(k): _clean(v, f"{where}/{_token(_key(k))}", found, raw) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{where}/{i}", found, raw) for i, v in enumerate(obj)]
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps(obj, **kwargs) as strict JSON (allow_nan=False): non-finite floats as null,
    named in the top dict's `non_finite` field; strings with bytes that are not UTF-8 as `\\xNN`
    text, their bytes in the top dict's `non_utf8` field (a list or scalar at the top: the null or
    the text alone)."""
    found: dict = {}
    raw: dict = {}
    clean = _clean(obj, "", found, raw)
    if isinstance(clean, dict):
        clean = {**clean, **({FIELD: found} if found else {}), **({BYTES_FIELD: raw} if raw else {})}
    return json.dumps(clean, allow_nan=False, **kwargs)


def _place(data, where):
    """(container, key) of the JSON Pointer `where` in `data`; KeyError & co. where it is not there."""
    node = data
    keys = [k.replace("~1", "/").replace("~0", "~") for k in str(where).split("/")[1:]]
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    return node, (int(keys[-1]) if isinstance(node, list) else keys[-1])


def _name_of(b64) -> str | None:
    try:
        return base64.b64decode(str(b64), validate=True).decode("utf-8", "surrogateescape")
    except ValueError:
        return None


def restore(data):
    """A dict read from such a file with its non-finite numbers and its names' bytes back in place
    (the `non_finite` and `non_utf8` fields taken off); anything else as it is."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    fields = {f: data.pop(f) if isinstance(data.get(f), dict) else {} for f in (FIELD, BYTES_FIELD)}
    for field, entries in fields.items():
        for where, value in entries.items():
            try:
                node, last = _place(data, where)
                if field == FIELD and node[last] is None and value in _NAMES:
                    node[last] = _NAMES[value]
                elif field == BYTES_FIELD:
                    name = _name_of(value)
                    if name is not None and isinstance(node[last], str) and node[last] == as_text(name):
                        node[last] = name
            except (KeyError, IndexError, ValueError, TypeError):  # a hand-edited file: left as it is there
                continue
    return data
