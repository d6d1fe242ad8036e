"""The protobuf wire format, just what TensorFlow's checkpoint protos need (numpy only).

`parse_proto(buf)` turns one serialized message into {field number: [raw values]}: varints as
ints, fixed64/fixed32 as unsigned ints, length-delimited fields as bytes (a nested message, a
string or a packed repeated field: the caller knows which). The bundle reader/writer
(BundleEntryProto, BundleHeaderProto) and the MetaGraphDef parser share it.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np


def _read_varint(buf: bytes, pos: int, limit: int | None = None) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, new_pos)."""
    end = len(buf) if limit is None else limit
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _write_varint(value: int) -> bytes:
    """Encode a non-negative integer (negative: two's complement 64-bit) as a varint."""
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _parse_proto(buf: bytes) -> dict[int, list[Any]]:
    """Parse a serialized protobuf message into {field_number: [raw values]}."""
    fields: dict[int, list[Any]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            val = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            val = bytes(buf[pos:pos + n])
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            val = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if field == 0:
            raise ValueError("field number 0")
        fields.setdefault(field, []).append(val)
    return fields


def _signed64(v: int) -> int:
    """Reinterpret an unsigned 64-bit varint as int64."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _first(fields: dict[int, list[Any]], num: int, default: Any = 0) -> Any:
    """Last occurrence wins for scalar fields, as in protobuf."""
    vals = fields.get(num)
    return vals[-1] if vals else default


def _pb_varint(field: int, value: int) -> bytes:
    return _write_varint(field << 3) + _write_varint(value)


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _write_varint((field << 3) | 2) + _write_varint(len(value)) + value


def _pb_fixed32(field: int, value: int) -> bytes:
    return _write_varint((field << 3) | 5) + struct.pack("<I", value)


def _pb_fixed64(field: int, value: int) -> bytes:
    return _write_varint((field << 3) | 1) + struct.pack("<Q", value)


# -- repeated scalar fields (packed or not) ---------------------------------------------------

def repeated_varints(values: list[Any]) -> list[int]:
    """A repeated int field's values as signed ints: packed (bytes) or one varint per entry."""
    out: list[int] = []
    for v in values:
        if isinstance(v, bytes):
            pos = 0
            while pos < len(v):
                x, pos = _read_varint(v, pos)
                out.append(_signed64(x))
        else:
            out.append(_signed64(v))
    return out


def repeated_fixed(values: list[Any], dtype: str) -> list[float]:
    """A repeated float ('<f4', fixed32) or double ('<f8', fixed64) field, packed or not."""
    out: list[float] = []
    size = np.dtype(dtype).itemsize
    for v in values:
        if isinstance(v, bytes):
            if len(v) % size:
                raise ValueError(f"packed {dtype} field of {len(v)} bytes")
            out.extend(float(x) for x in np.frombuffer(v, dtype))
        else:
            out.append(float(np.frombuffer(struct.pack("<I" if size == 4 else "<Q", v), dtype)[0]))
    return out
