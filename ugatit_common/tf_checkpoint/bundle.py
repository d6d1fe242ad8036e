"""Read and write TensorFlow V2 checkpoints ("tensor bundles") with numpy only.

A checkpoint is a prefix ``P`` with ``P.index`` (a LevelDB-style SSTable that maps tensor
names to serialized ``BundleEntryProto`` messages, plus a ``BundleHeaderProto`` under the
empty key) and data shards ``P.data-SSSSS-of-NNNNN`` holding raw little-endian C-order
tensor bytes.  The reader parses only the index up front and streams one tensor at a time,
verifying the masked CRC32C that TensorFlow stores for every tensor.  The writer streams
tensors straight to a temporary data file and atomically publishes ``P.index`` and
``P.data-00000-of-00001`` when finished.  No TensorFlow import anywhere.
"""

from __future__ import annotations

import ntpath
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..atomic import (file_mode, fsync_folder, recover_interrupted_writes, remove_quietly, temp_prefix,
                      write_temp_beside)

__all__ = [
    "CheckpointError",
    "resolve_prefix",
    "BundleReader",
    "BundleWriter",
    "write_checkpoint_state",
    "read_checkpoint_state",
    "tensor_info",
    "checkpoint_subfolders",
    "v1_file",
    "v1_error",
]


class CheckpointError(Exception):
    """A checkpoint could not be located, parsed, verified or written."""


# --------------------------------------------------------------------------------------
# CRC32C (Castagnoli), masked as in LevelDB / TensorFlow
# --------------------------------------------------------------------------------------

def _make_table() -> list[int]:
    """The byte table of CRC-32C (reflected polynomial 0x82F63B78)."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()
_CRC_TABLE_NP = np.array(_CRC_TABLE, dtype=np.uint32)
_LANE = 256            # bytes per lane of the vectorised fallback
_CHUNK_LANES = 16384   # lanes computed together (4 MiB)
_MIN_LANES = 64        # below 16 KiB the byte loop is as fast
_LANE_SHIFT: list[list[int]] | None = None  # 4 byte tables of "the register after _LANE zero bytes"


def _lane_shift_tables() -> list[list[int]]:
    """The register's image after _LANE zero bytes as 4 byte tables (the operator is linear
    over GF(2): the image of r is the XOR of the images of r's bytes). Built once; published by
    one assignment, so threads at worst build it twice."""
    global _LANE_SHIFT
    if _LANE_SHIFT is None:
        table = _CRC_TABLE
        cols = []
        for bit in range(32):  # the image of each basis bit
            c = 1 << bit
            for _ in range(_LANE):
                c = table[c & 0xFF] ^ (c >> 8)
            cols.append(c)
        tables = []
        for byte in range(4):
            t = []
            for b in range(256):
                v = 0
                for i in range(8):
                    if b >> i & 1:
                        v ^= cols[8 * byte + i]
                t.append(v)
            tables.append(t)
        _LANE_SHIFT = tables
    return _LANE_SHIFT


def _crc_extend_numpy(crc: int, data: Any) -> int:
    """Extend ``crc`` (unmasked) with ``data``, without google-crc32c (a machine without it: a GPU
    image, a platform without its wheel). CRC-32C is linear over GF(2): the register after lane
    B_i from register r is shift(r) ^ crc0(B_i), so the lanes' crc0 are computed side by side
    with numpy (one table step per byte column) and folded in order (Horner, by the 256-zero-byte
    shift). ~10x the byte loop's speed; the same value (tested against google-crc32c)."""
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        view = memoryview(data)
        buf = np.frombuffer(view if view.contiguous else view.tobytes(), dtype=np.uint8)
    reg = crc ^ 0xFFFFFFFF
    lanes = len(buf) // _LANE
    if lanes >= _MIN_LANES:
        z0, z1, z2, z3 = _lane_shift_tables()
        table = _CRC_TABLE_NP
        for start in range(0, lanes, _CHUNK_LANES):
            k = min(_CHUNK_LANES, lanes - start)
            columns = np.ascontiguousarray(buf[start * _LANE:(start + k) * _LANE].reshape(k, _LANE).T)
            regs = np.zeros(k, dtype=np.uint32)
            for column in columns:
                regs = table[(regs & 0xFF) ^ column] ^ (regs >> 8)
            for v in regs.tolist():
                reg = z0[reg & 0xFF] ^ z1[(reg >> 8) & 0xFF] ^ z2[(reg >> 16) & 0xFF] ^ z3[reg >> 24] ^ v
        buf = buf[lanes * _LANE:]
    table = _CRC_TABLE
    for b in buf.tobytes():
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


try:
    import google_crc32c as _gcrc

    def _crc_extend(crc: int, data: Any) -> int:
        """Extend ``crc`` (unmasked) with a read-only contiguous buffer (bytes or uint8 ndarray)."""
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        return _gcrc.extend(crc, data)

except ImportError:  # a machine without google-crc32c
    _gcrc = None
    _crc_extend = _crc_extend_numpy


_MASK_DELTA = 0xA282EAD8


def _mask(crc: int) -> int:
    """LevelDB CRC mask: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _unmask(masked: int) -> int:
    """Inverse of :func:`_mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------

DT_STRING = 7

try:  # ml_dtypes ships with TensorFlow and JAX; optional here
    import ml_dtypes as _ml_dtypes

    _BFLOAT16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except Exception:  # pragma: no cover
    _BFLOAT16 = None

# TensorFlow DataType enum -> little-endian numpy dtype (None: not a plain numeric type)
_TF_TO_NP: dict[int, np.dtype | None] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    7: None,  # DT_STRING
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    14: _BFLOAT16,  # DT_BFLOAT16
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_TF_NAMES = {
    1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16", 6: "DT_INT8",
    7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64", 10: "DT_BOOL", 11: "DT_QINT8",
    12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16", 15: "DT_QINT16", 16: "DT_QUINT16",
    17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF", 20: "DT_RESOURCE", 21: "DT_VARIANT",
    22: "DT_UINT32", 23: "DT_UINT64",
}
_NP_TO_TF: dict[tuple[str, int], int] = {}
for _code, _dt in _TF_TO_NP.items():
    if _dt is not None:
        _NP_TO_TF.setdefault((_dt.kind, _dt.itemsize), _code)


def _np_to_tf(dtype: np.dtype) -> int:
    """TensorFlow DataType code for a numpy dtype (0 if unsupported)."""
    if _BFLOAT16 is not None and dtype == _BFLOAT16:
        return 14
    if dtype.kind not in "fiucb":
        return 0
    return _NP_TO_TF.get((dtype.kind, dtype.itemsize), 0)


from .wire import (  # noqa: E402  (the protobuf wire format, shared with the .meta parser)
    _first, _parse_proto, _pb_bytes, _pb_fixed32, _pb_varint, _read_varint, _signed64, _write_varint,
)


@dataclass(frozen=True)
class _Entry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked


def _parse_entry(buf: bytes) -> _Entry:
    """Decode a BundleEntryProto."""
    f = _parse_proto(buf)
    if f.get(7):
        raise ValueError("partitioned (sliced) variables are not supported")
    dims: list[int] = []
    shape_buf = _first(f, 2, b"")
    if shape_buf:
        sf = _parse_proto(shape_buf)
        if _first(sf, 3, 0):
            raise ValueError("tensor with unknown rank")
        for dim_buf in sf.get(2, []):
            dims.append(_signed64(_first(_parse_proto(dim_buf), 1, 0)))
    return _Entry(
        dtype=_first(f, 1, 0),
        shape=tuple(dims),
        shard_id=_signed64(_first(f, 3, 0)),
        offset=_signed64(_first(f, 4, 0)),
        size=_signed64(_first(f, 5, 0)),
        crc32c=_first(f, 6, 0),
    )


def _encode_entry(e: _Entry) -> bytes:
    """Encode a BundleEntryProto (proto3: default-valued scalars omitted)."""
    shape = b"".join(_pb_bytes(2, _pb_varint(1, d) if d else b"") for d in e.shape)
    out = _pb_varint(1, e.dtype) + _pb_bytes(2, shape)
    if e.shard_id:
        out += _pb_varint(3, e.shard_id)
    if e.offset:
        out += _pb_varint(4, e.offset)
    if e.size:
        out += _pb_varint(5, e.size)
    if e.crc32c:
        out += _pb_fixed32(6, e.crc32c)
    return out


def _encode_header(num_shards: int) -> bytes:
    """Encode a BundleHeaderProto: little endian, version producer=1."""
    return _pb_varint(1, num_shards) + _pb_bytes(3, _pb_varint(1, 1))


# --------------------------------------------------------------------------------------
# SSTable (LevelDB table format as used by TensorFlow's lib/io/table)
# --------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER = 5
_DEFAULT_BLOCK_SIZE = 262144  # TF's table::Options default
_RESTART_INTERVAL = 16


def _parse_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    off, pos = _read_varint(buf, pos)
    size, pos = _read_varint(buf, pos)
    return off, size, pos


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode all (key, value) pairs of a block's contents (prefix-compressed entries)."""
    if len(block) < 4:
        raise ValueError("block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    data_end = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or data_end < 0:
        raise ValueError("bad restart array")
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    key = b""
    while pos < data_end:
        shared, pos = _read_varint(block, pos, data_end)
        non_shared, pos = _read_varint(block, pos, data_end)
        vlen, pos = _read_varint(block, pos, data_end)
        if shared > len(key) or pos + non_shared + vlen > data_end:
            raise ValueError("corrupted block entry")
        key = key[:shared] + bytes(block[pos:pos + non_shared])
        pos += non_shared
        out.append((key, bytes(block[pos:pos + vlen])))
        pos += vlen
    return out


class _BlockBuilder:
    """Builds one table block with prefix compression and restart points."""

    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""
        self.empty = True

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            limit = min(len(self.last_key), len(key))
            while shared < limit and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _write_varint(shared) + _write_varint(len(key) - shared) + _write_varint(len(value))
        self.buf += key[shared:] + value
        self.last_key = key
        self.counter += 1
        self.empty = False

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buf) + struct.pack(f"<{len(self.restarts)}I", *self.restarts) + struct.pack(
            "<I", len(self.restarts)
        )


def _build_table(items: list[tuple[bytes, bytes]], block_size: int = _DEFAULT_BLOCK_SIZE,
                 restart_interval: int = _RESTART_INTERVAL) -> bytes:
    """Serialize sorted (key, value) pairs as an uncompressed SSTable."""
    out = bytearray()

    def emit(contents: bytes) -> bytes:
        handle = _write_varint(len(out)) + _write_varint(len(contents))
        crc = _crc_extend(_crc_extend(0, contents), b"\x00")
        out.extend(contents)
        out.extend(b"\x00" + struct.pack("<I", _mask(crc)))
        return handle

    index = _BlockBuilder(1)
    block = _BlockBuilder(restart_interval)
    prev: bytes | None = None
    for key, value in items:
        if prev is not None and key <= prev:
            raise ValueError("table keys must be strictly increasing")
        prev = key
        block.add(key, value)
        if block.size_estimate() >= block_size:
            index.add(block.last_key, emit(block.finish()))
            block = _BlockBuilder(restart_interval)
    if not block.empty:
        index.add(block.last_key, emit(block.finish()))
    meta_handle = emit(_BlockBuilder(restart_interval).finish())
    index_handle = emit(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)
    out.extend(footer)
    return bytes(out)


def _read_table(path: str) -> list[tuple[bytes, bytes]]:
    """Read all (key, value) pairs of the SSTable at ``path``, verifying block CRCs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"index file {path}: cannot read ({exc})") from exc

    def fail(msg: str) -> CheckpointError:
        return CheckpointError(f"index file {path} is corrupted or not a TensorFlow V2 checkpoint index: {msg}")

    if len(data) < _FOOTER_LEN:
        raise fail(f"file is {len(data)} bytes, shorter than the {_FOOTER_LEN}-byte table footer")
    footer = data[-_FOOTER_LEN:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != _TABLE_MAGIC:
        raise fail(f"bad table magic 0x{magic:016x}")
    try:
        _moff, _msize, pos = _parse_handle(footer, 0)
        ioff, isize, _ = _parse_handle(footer, pos)
    except ValueError as exc:
        raise fail(f"bad footer ({exc})") from None

    def block(off: int, size: int, what: str) -> bytes:
        if off + size + _BLOCK_TRAILER > len(data) - _FOOTER_LEN:
            raise fail(f"{what} at offset {off} size {size} runs past the end of the file")
        contents = data[off:off + size]
        ctype = data[off + size]
        stored = struct.unpack_from("<I", data, off + size + 1)[0]
        actual = _mask(_crc_extend(_crc_extend(0, contents), data[off + size:off + size + 1]))
        if stored != actual:
            raise fail(f"{what} at offset {off}: block checksum mismatch "
                       f"(stored 0x{stored:08x}, computed 0x{actual:08x})")
        if ctype != 0:
            kind = {1: "snappy", 2: "zlib"}.get(ctype, f"type {ctype}")
            raise CheckpointError(f"index file {path}: {what} is {kind}-compressed; only uncompressed "
                                  "tables (what TensorFlow writes for checkpoints) are supported")
        return contents

    items: list[tuple[bytes, bytes]] = []
    try:
        for _ikey, handle in _block_entries(block(ioff, isize, "index block")):
            boff, bsize, _ = _parse_handle(handle, 0)
            items.extend(_block_entries(block(boff, bsize, "data block")))
    except ValueError as exc:
        raise fail(str(exc)) from None
    return items


# --------------------------------------------------------------------------------------
# locating checkpoints
# --------------------------------------------------------------------------------------

_DATA_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")
_CHECKPOINT_FILE_RE = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")  # one file of a TF checkpoint
# a text-format string in double or single quotes (TF writes double; its parser takes both)
_STATE_RE = re.compile(rb'^\s*(model_checkpoint_path|all_model_checkpoint_paths)\s*:\s*'
                       rb'(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\')\s*$')
# text-format C escapes (protobuf's CUnescape); octal (\NNN) and hex (\xHH) give one byte each
_SIMPLE_ESCAPES = {ord(k): v for k, v in {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", "f": b"\f",
                                          "v": b"\v", "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}.items()}
_ESCAPE_RE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)


def _unescape(raw: bytes) -> str:
    r"""A quoted text-format string's bytes with the C escapes undone, as a path str: UTF-8 with
    surrogateescape, so any bytes TF wrote (raw UTF-8 such as /home/张伟/..., Latin-1 bytes such
    as \xfc, octal escapes) name the file os.listdir would. ValueError for a bad escape."""
    def one(m: re.Match) -> bytes:
        if m.group(1):
            if int(m.group(1), 8) > 0xFF:
                raise ValueError(f"octal escape \\{m.group(1).decode()} is more than a byte")
            return bytes([int(m.group(1), 8)])
        if m.group(2):
            return bytes([int(m.group(2), 16)])
        c = m.group(3)[0]
        if c not in _SIMPLE_ESCAPES:
            raise ValueError(f"unknown escape \\{chr(c)}" if 0x20 < c < 0x7F else f"unknown escape of byte 0x{c:02x}")
        return _SIMPLE_ESCAPES[c]
    return _ESCAPE_RE.sub(one, raw).decode("utf-8", "surrogateescape")


def _escape(s: str) -> bytes:
    r"""A path (str, as os functions take it) as a quoted text-format string's bytes: its file-system
    bytes (os.fsencode), UTF-8 kept as it is (what TF writes), quotes, backslashes and control
    bytes escaped, and bytes that are not UTF-8 (b'bad\xff') as octal, so the file stays UTF-8."""
    raw = os.fsencode(s)
    out = bytearray()
    for ch in raw.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8, kept by surrogateescape
            out += b"\\%03o" % (o - 0xDC00)
        elif ch in '\\"':
            out += b"\\" + ch.encode()
        elif o < 0x20 or o == 0x7F:
            out += {"\n": b"\\n", "\r": b"\\r", "\t": b"\\t"}.get(ch, b"\\%03o" % o)
        else:
            out += ch.encode("utf-8")
    return bytes(out)


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # a drive letter or a UNC share


def read_checkpoint_state(folder: str) -> tuple[str | None, list[str]]:
    """Parse ``folder/checkpoint``: (model_checkpoint_path, all_model_checkpoint_paths) as written.
    Read as bytes: TF writes the paths' bytes as they are (not necessarily UTF-8)."""
    path = os.path.join(folder, "checkpoint")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint state file {path}: cannot read ({exc})") from exc
    model: str | None = None
    all_paths: list[str] = []
    if text.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (an editor's save on Windows)
        text = text[3:]
    for n, line in enumerate(text.splitlines(), 1):
        m = _STATE_RE.match(line)
        if not m:
            continue
        try:
            value = _unescape(m.group(2) if m.group(2) is not None else m.group(3))
        except ValueError as exc:
            raise CheckpointError(f"checkpoint state file {path}: line {n} cannot be parsed ({exc})") from None
        if m.group(1) == b"model_checkpoint_path":
            model = value
        else:
            all_paths.append(value)
    return model, all_paths


def _named_prefix(folder: str, model: str) -> str | None:
    r"""The prefix in `folder` that the state file's `model_checkpoint_path` names, or None. The
    official `load` restores `os.path.basename(model_checkpoint_path)` from the run folder, so a
    path from the machine that trained it is read from where the folder is now: an absolute one
    (`/home/...`: re-rooted even when that path exists here, so a copied folder is read with its
    own .meta and folder name), a Windows one (`D:\runs\...\UGATIT.model-N`, `D:/...`, `\\server\...`:
    no path here), a relative one with folders (`checkpoint/<model_dir>/UGATIT.model-N`). A relative
    name holding a backslash is a file name here (POSIX), not re-rooted."""
    moved = os.path.join(folder, os.path.basename(model))
    if os.path.isfile(moved + ".index"):  # this folder's, as the official load reads it
        return moved
    candidate = model if os.path.isabs(model) else os.path.join(folder, model)
    if os.path.isfile(candidate + ".index"):
        return candidate
    if _WINDOWS_ABSOLUTE.match(model):  # (a relative name with a backslash is a file name here)
        windows = os.path.join(folder, ntpath.basename(model))
        if os.path.isfile(windows + ".index"):
            return windows
    return None


def _is_v1_checkpoint(path: str) -> bool:
    """A TF1 V1-format checkpoint file (`Saver(write_version=V1)`: the tensors in one SSTable named
    by the prefix itself, `<prefix>` or `<prefix>-SSSSS-of-NNNNN`, beside no .index)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < _FOOTER_LEN:
                return False
            f.seek(-8, os.SEEK_END)
            return struct.unpack("<Q", f.read(8))[0] == _TABLE_MAGIC
    except OSError:
        return False


def v1_file(path: str) -> str | None:
    """`path` when it is a V1-format checkpoint file, its prefix's when it is that one's `.meta`; else None."""
    for p in (path, path[: -len(".meta")] if path.endswith(".meta") else None):
        if p and not os.path.isfile(p + ".index") and os.path.isfile(p) and _is_v1_checkpoint(p):
            return p
    return None


_V1_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}$")


def _v1_in(folder: str) -> list[str]:
    """The V1-format checkpoint files directly in `folder` (not a V2 .index / .data / .meta)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if not n.endswith((".index", ".meta")) and not _DATA_RE.search(n) and n != "checkpoint"
            and os.path.isfile(os.path.join(folder, n)) and _is_v1_checkpoint(os.path.join(folder, n))]


def v1_error(what: str) -> str:
    """The error for a V1-format checkpoint `what` (a file or a folder's files)."""
    return (f"{what} is a TensorFlow V1-format checkpoint (one file, no .index: tf.train.Saver(write_version=V1), "
            f"TensorFlow's default before 1.0), which is not read; expected the V2 format the official code writes "
            f"(<prefix>.index + <prefix>.data-00000-of-00001): restore it in TensorFlow with its .meta "
            f"(tf.compat.v1.train.import_meta_graph + restore) and save it again with tf.compat.v1.train.Saver()")


def _v1_named(folder: str, model: str) -> str | None:
    """The V1 file (or its first shard) the state file's path names, in `folder` or where it says."""
    for base in (os.path.join(folder, ntpath.basename(model)),  # here first, as _named_prefix
                 model if os.path.isabs(model) else os.path.join(folder, model)):
        for p in (base, base + "-00000-of-00001"):
            if os.path.isfile(p) and _is_v1_checkpoint(p):
                return p
        shards = sorted(n for n in (os.listdir(os.path.dirname(base)) if os.path.isdir(os.path.dirname(base)) else [])
                        if n.startswith(os.path.basename(base)) and _V1_SHARD_RE.search(n))
        if shards and _is_v1_checkpoint(os.path.join(os.path.dirname(base), shards[0])):
            return os.path.join(os.path.dirname(base), shards[0])
    return None


def _prefixes_in(folder: str) -> list[str]:
    return sorted(n[: -len(".index")] for n in os.listdir(folder) if n.endswith(".index"))


def prefix_by_name(path: str) -> str | None:
    """The prefix a TF checkpoint file's name (``<prefix>.index``, ``.meta``, ``.data-*``) names,
    whether or not it exists (an output to write); else None."""
    path = os.fsdecode(path)
    m = _CHECKPOINT_FILE_RE.search(path)
    return path[: m.start()] if m else None


def prefix_of_file(path: str) -> str | None:
    """The prefix of the TF checkpoint whose file (``.index``, ``.meta``, ``.data-*``) `path` is,
    when that prefix's ``.index`` is there; else None (a folder, a prefix, another file)."""
    prefix = prefix_by_name(path)
    if prefix is not None and os.path.isfile(path) and os.path.isfile(prefix + ".index"):
        return prefix
    return None


def resolve_prefix(path: str) -> str:
    """Turn a checkpoint folder, prefix, ``.index``, ``.data-*`` or ``.meta`` file into the checkpoint prefix.
    A write into that folder killed half way (weights_convert torch2tf) is rolled back first, so
    its old .index is never read with the new .data (ugatit_common.atomic). A folder's `checkpoint`
    state file names the prefix (_named_prefix); one that names none (empty, damaged: no
    model_checkpoint_path line) is read past as if absent: the folder's one prefix is read."""
    path = os.fsdecode(path)
    recover_interrupted_writes(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        unusable_state = ""
        if os.path.isfile(state):
            model, _ = read_checkpoint_state(path)
            if model:
                found = _named_prefix(path, model)
                if found:
                    return found
                v1 = _v1_named(path, model)
                if v1:
                    raise CheckpointError(v1_error(v1))
                here = _prefixes_in(path)
                instead = (f"; this folder holds {', '.join(here)}: give the prefix of the one you want "
                           f"({os.path.join(path, here[-1])})" if here else "; this folder holds no *.index")
                here_too = os.path.join(path, (ntpath if _WINDOWS_ABSOLUTE.match(model) else os.path).basename(model))
                looked = [here_too] if _WINDOWS_ABSOLUTE.match(model) else \
                    list(dict.fromkeys([model if os.path.isabs(model) else os.path.join(path, model), here_too]))
                missing = (f"{looked[0]}.index not found" if len(looked) == 1 else
                           f"neither {looked[0]}.index nor {looked[1]}.index found")
                raise CheckpointError(f"checkpoint state file {state} names {model!r}, but {missing}{instead}")
            unusable_state = " (its `checkpoint` state file names no checkpoint: no model_checkpoint_path line)"
        indexes = sorted(n for n in os.listdir(path) if n.endswith(".index"))
        where = (f"folder {path}{unusable_state}:" if unusable_state
                 else f"no `checkpoint` file in folder {path} and")
        if not indexes:
            v1 = _v1_in(path)
            if v1:
                raise CheckpointError(v1_error(os.path.join(path, v1[0])))
            raise CheckpointError(f"{where} no *.index: {_not_a_tf_folder(path)}" if unusable_state else
                                  f"no `checkpoint` file and no *.index in folder {path}: {_not_a_tf_folder(path)}")
        if len(indexes) > 1:
            raise CheckpointError(f"{where} several *.index files ({', '.join(indexes)}); pass the prefix of the "
                                  f"one you want")
        return os.path.join(path, indexes[0][: -len(".index")])
    prefix = prefix_of_file(path)  # .index, .data-*, or the graph file (.meta), as the port's --checkpoint takes them
    if prefix is not None:
        return prefix
    if _DATA_RE.search(path) and os.path.isfile(path):
        raise CheckpointError(f"data file {path}: its index {_DATA_RE.sub('', path)}.index not found")
    if os.path.isfile(path + ".index"):
        return path
    v1 = v1_file(path)
    if v1:
        raise CheckpointError(v1_error(v1))
    if os.path.exists(path):
        what = ""
        if path.lower().endswith((".safetensors", ".pt")):  # Morph's by its name (MorphUGATIT_<config>), as a folder's
            morph = os.path.basename(path).startswith("Morph")
            what = (" (a Morph-UGATIT checkpoint: it has no TensorFlow counterpart)" if morph
                    else " (a PyTorch file: convert it with weights_convert.py torch2tf)")
        raise CheckpointError(f"{path} is neither a checkpoint folder, a prefix, nor a .index/.data file{what}")
    raise CheckpointError(f"prefix {path}: {path}.index not found (no such file or folder; expected an official "
                          f"TensorFlow checkpoint folder or prefix)")


_PORT_WEIGHTS_RE = re.compile(r".+\.model-(\d+)\.safetensors$")


def _not_a_tf_folder(folder: str) -> str:
    """What a folder with no TF checkpoint holds instead, for the error: a port / Morph checkpoint
    (the other converter's input), checkpoint folders one level down (the parent given by mistake)."""
    names = sorted(os.listdir(folder))
    port = sorted((n for n in names if _PORT_WEIGHTS_RE.match(n)), key=lambda n: int(_PORT_WEIGHTS_RE.match(n)[1]))
    if port:
        convert = ("a Morph-UGATIT checkpoint has no TensorFlow counterpart" if port[-1].startswith("Morph")
                   else "weights_convert.py torch2tf converts it to one")
        return f"it holds a PyTorch checkpoint ({port[-1]}), not an official TensorFlow one ({convert})"
    runs = checkpoint_subfolders(folder)
    if runs:
        return f"its subfolders hold checkpoints; give one of them: {', '.join(map(repr, runs))}"
    return "expected an official TensorFlow checkpoint folder (<prefix>.index, <prefix>.data-*, `checkpoint`)"


def checkpoint_subfolders(folder: str) -> list[str]:
    """The subfolders of `folder` holding a checkpoint of either framework: what a user meant when
    giving the `--checkpoint_dir` parent instead of its `<model_dir>` run folder (named in the error)."""
    found = []
    for n in sorted(os.listdir(folder)):
        sub = os.path.join(folder, n)
        try:
            if os.path.isdir(sub) and any(m.endswith(".index") or _PORT_WEIGHTS_RE.match(m) for m in os.listdir(sub)):
                found.append(sub)
        except OSError:  # unreadable: not ours to judge
            continue
    return found


# --------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------

_CHUNK = 16 << 20  # bytes read (and checksummed) per step


class BundleReader:
    """Streaming reader of a TensorFlow V2 checkpoint; parses only the index on open."""

    def __init__(self, path: str) -> None:
        self.prefix: str = resolve_prefix(path)
        self.index_path = self.prefix + ".index"
        self._files: dict[int, Any] = {}
        items = _read_table(self.index_path)
        self._entries: dict[str, _Entry] = {}
        header: bytes | None = None
        for key, value in items:
            if key == b"":
                header = value
                continue
            name = key.decode("utf-8", "surrogateescape")
            try:
                self._entries[name] = _parse_entry(value)
            except ValueError as exc:
                raise CheckpointError(f"index file {self.index_path}: tensor {name!r}: {exc}") from None
        if header is None:
            raise CheckpointError(f"index file {self.index_path}: no bundle header (empty key); "
                                  "not a TensorFlow V2 checkpoint")
        try:
            h = _parse_proto(header)
            self.num_shards: int = _first(h, 1, 0)
            endianness = _first(h, 2, 0)
            version = _parse_proto(_first(h, 3, b""))
        except ValueError as exc:
            raise CheckpointError(f"index file {self.index_path}: bad bundle header ({exc})") from None
        if endianness not in (0, 1):
            raise CheckpointError(f"index file {self.index_path}: unknown endianness {endianness}")
        self._big_endian = endianness == 1
        min_consumer = _first(version, 2, 0)
        if min_consumer > 1 or 1 in version.get(3, []):
            raise CheckpointError(f"index file {self.index_path}: bundle version needs a newer reader "
                                  f"(min_consumer={min_consumer})")
        if self.num_shards < 1:
            raise CheckpointError(f"index file {self.index_path}: bad num_shards {self.num_shards}")
        for name, e in self._entries.items():
            if not 0 <= e.shard_id < self.num_shards or e.offset < 0 or e.size < 0:
                raise CheckpointError(f"index file {self.index_path}: tensor {name!r} has a bad "
                                      f"shard/offset/size ({e.shard_id}/{e.offset}/{e.size})")
        self._names = sorted(self._entries, key=lambda n: n.encode("utf-8", "surrogateescape"))

    # -- metadata ---------------------------------------------------------------------

    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BundleReader({self.prefix!r}, {len(self._names)} tensors)"

    def keys(self) -> list[str]:
        """Sorted tensor names (without the header key)."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._names)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"checkpoint {self.prefix}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name``."""
        return self._entry(name).shape

    def _np_dtype(self, name: str, e: _Entry) -> np.dtype | None:
        if e.dtype == DT_STRING:
            return None
        dt = _TF_TO_NP.get(e.dtype)
        if dt is None:
            raise CheckpointError(f"checkpoint {self.prefix}: tensor {name!r} has unsupported dtype "
                                  f"{_TF_NAMES.get(e.dtype, e.dtype)}")
        return dt.newbyteorder(">") if self._big_endian and dt.itemsize > 1 and dt.kind != "V" else dt

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype of tensor ``name`` (``object`` for DT_STRING)."""
        e = self._entry(name)
        dt = self._np_dtype(name, e)
        return np.dtype(object) if dt is None else dt.newbyteorder("=")

    def tf_dtype(self, name: str) -> str:
        """TensorFlow dtype name of tensor ``name`` (e.g. ``DT_FLOAT``)."""
        e = self._entry(name)
        return _TF_NAMES.get(e.dtype, str(e.dtype))

    def nbytes(self, name: str) -> int:
        """Bytes the tensor occupies in its data file."""
        return self._entry(name).size

    def data_path(self, shard_id: int = 0) -> str:
        """Path of data shard ``shard_id``."""
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    # -- data ---------------------------------------------------------------------------

    def _file(self, shard_id: int, name: str) -> Any:
        f = self._files.get(shard_id)
        if f is None:
            p = self.data_path(shard_id)
            try:
                f = open(p, "rb", buffering=0)
            except OSError as exc:
                raise CheckpointError(f"checkpoint {self.prefix}: tensor {name!r}: cannot open data file "
                                      f"{p} ({exc})") from exc
            self._files[shard_id] = f
        return f

    def _read_raw_into(self, name: str, e: _Entry, buf: np.ndarray, verify: bool) -> None:
        """Fill uint8 ``buf`` (len == e.size) from the shard, streaming the CRC."""
        p = self.data_path(e.shard_id)
        f = self._file(e.shard_id, name)
        f.seek(e.offset)
        crc = 0
        pos = 0
        mv = memoryview(buf)
        while pos < e.size:
            n = f.readinto(mv[pos:min(pos + _CHUNK, e.size)])
            if not n:  # the file's real length: a tensor may start past its end (seek does not fail there)
                raise CheckpointError(
                    f"tensor {name!r}: data file {p} is truncated: needed bytes {e.offset}..{e.offset + e.size} "
                    f"but the file ends after {os.fstat(f.fileno()).st_size}")
            if verify:
                crc = _crc_extend(crc, buf[pos:pos + n])
            pos += n
        if verify and _mask(crc) != e.crc32c:
            raise CheckpointError(
                f"tensor {name!r}: checksum mismatch in data file {p} (bytes {e.offset}..{e.offset + e.size}): "
                f"stored crc32c 0x{e.crc32c:08x}, computed 0x{_mask(crc):08x}; the checkpoint is corrupted")

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """Read one tensor (owned array of the stored dtype and shape), verifying its CRC32C."""
        e = self._entry(name)
        dt = self._np_dtype(name, e)
        if dt is None:
            return self._read_strings(name, e, verify)
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        if count * dt.itemsize != e.size:
            raise CheckpointError(f"index file {self.index_path}: tensor {name!r} of shape {e.shape} and dtype "
                                  f"{dt} should take {count * dt.itemsize} bytes, entry says {e.size}")
        out = np.empty(e.shape, dtype=dt)
        self._read_raw_into(name, e, out.reshape(-1).view(np.uint8), verify)
        if dt.byteorder == ">":
            out = out.astype(dt.newbyteorder("="))
        return out

    def read_raw(self, name: str, verify: bool = True) -> bytes:
        """The tensor's exact bytes in the data file (any dtype, including DT_STRING)."""
        e = self._entry(name)
        buf = np.empty(e.size, dtype=np.uint8)
        self._read_raw_into(name, e, buf, verify)
        return buf.tobytes()

    def _read_strings(self, name: str, e: _Entry, verify: bool) -> np.ndarray:
        """Decode a DT_STRING tensor (varint lengths, masked CRC of lengths, bytes) to an object array."""
        raw = self.read_raw(name, verify=False)
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        p = self.data_path(e.shard_id)
        try:
            pos = 0
            lengths = []
            crc = 0
            for _ in range(count):
                n, pos2 = _read_varint(raw, pos)
                lengths.append(n)
                crc = _crc_extend(crc, struct.pack("<I", n & 0xFFFFFFFF))  # TF checksums uint32 lengths
                pos = pos2
            stored_len_crc = struct.unpack_from("<I", raw, pos)[0]
            crc = _crc_extend(crc, raw[pos:pos + 4])
            pos += 4
            values = []
            for n in lengths:
                if pos + n > len(raw):
                    raise ValueError("string data runs past the tensor")
                values.append(raw[pos:pos + n])
                crc = _crc_extend(crc, raw[pos:pos + n])
                pos += n
        except (ValueError, struct.error) as exc:
            raise CheckpointError(f"tensor {name!r}: malformed string tensor in data file {p} ({exc})") from None
        if verify:
            if _mask(crc) != e.crc32c or stored_len_crc != _mask(_length_crc(lengths)):
                raise CheckpointError(f"tensor {name!r}: checksum mismatch in data file {p}; "
                                      "the checkpoint is corrupted")
        arr = np.empty(count, dtype=object)
        arr[:] = values
        return arr.reshape(e.shape)

    def items(self, verify: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, array) one tensor at a time, sorted by name."""
        for name in self._names:
            yield name, self.read(name, verify=verify)

    def info(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{name: (shape, dtype)} for every tensor."""
        return {n: (self.shape(n), self.dtype(n)) for n in self._names}

    def close(self) -> None:
        """Close any open data files."""
        files, self._files = self._files, {}
        for f in files.values():
            f.close()


def _length_crc(lengths: list[int]) -> int:
    crc = 0
    for n in lengths:
        crc = _crc_extend(crc, struct.pack("<I", n & 0xFFFFFFFF))
    return crc


def tensor_info(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of a checkpoint, reading only its index."""
    with BundleReader(path) as r:
        return r.info()


# --------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------


class BundleWriter:
    """Atomic single-shard checkpoint writer; tensors are streamed to disk as they are added."""

    def __init__(self, prefix: str, *, block_size: int = _DEFAULT_BLOCK_SIZE) -> None:
        self.prefix = os.path.abspath(os.fspath(prefix))
        self.index_path = self.prefix + ".index"
        self.data_path = self.prefix + ".data-00000-of-00001"
        self._block_size = block_size
        folder = os.path.dirname(self.prefix)
        os.makedirs(folder, exist_ok=True)
        # temp names carry the writer's pid and host: swept once it is gone (ugatit_common.atomic.sweep_dead_temps)
        fd, self._tmp_data = tempfile.mkstemp(prefix=temp_prefix(), suffix=".data.tmp", dir=folder)
        self._data = os.fdopen(fd, "wb")
        self._tmp_index: str | None = None
        self._entries: dict[str, _Entry] = {}
        self._offset = 0
        self._done = False
        self._prepared = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._prepared:  # the caller published prepare()'s files
            self._done = True
        elif exc_type is None and not self._done:
            self.finish()
        else:
            self.abort()

    def __del__(self) -> None:  # unfinished writer: leave nothing behind
        try:
            self.abort()
        except Exception:
            pass

    def add(self, name: str, array: Any) -> None:
        """Append tensor ``name`` (numpy array, scalar or CPU torch tensor) to the data file."""
        if self._done:
            raise CheckpointError(f"checkpoint {self.prefix}: writer already finished or aborted")
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"checkpoint {self.prefix}: tensor name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise CheckpointError(f"checkpoint {self.prefix}: duplicate tensor name {name!r}")
        if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor without importing torch
            array = array.detach().cpu().numpy()
        arr = np.asarray(array)
        code = _np_to_tf(arr.dtype)
        if code == 0:
            raise CheckpointError(f"checkpoint {self.prefix}: tensor {name!r}: unsupported dtype {arr.dtype}")
        if arr.dtype.kind != "V" and arr.dtype.itemsize > 1:
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        crc = 0
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK]
            crc = _crc_extend(crc, chunk)
            self._data.write(memoryview(chunk))
        self._entries[name] = _Entry(code, tuple(int(d) for d in arr.shape), 0, self._offset, flat.size, _mask(crc))
        self._offset += flat.size

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def finish(self) -> None:
        """Write the index, fsync and atomically rename: data file first, index last."""
        temps = self.prepare()
        try:
            for path, tmp in temps.items():
                os.replace(tmp, path)
            self._tmp_index = None
            fsync_folder(os.path.dirname(self.prefix))
        except BaseException:
            self.abort()
            raise
        self._done = True

    def prepare(self) -> dict:
        """Write the index and fsync both files, but rename nothing: {final path: temp file}, the
        data file first, for the caller to publish (with other files: ugatit_common.atomic.
        publish_together). Leaving the `with` block without an error then ends the writer; with
        one, the temp files not yet renamed are removed."""
        if self._done or self._prepared:
            raise CheckpointError(f"checkpoint {self.prefix}: writer already finished or aborted")
        try:
            self._data.flush()
            os.fsync(self._data.fileno())
            self._data.close()
            items = [(b"", _encode_header(1))]
            for name in sorted(self._entries, key=lambda n: n.encode("utf-8")):
                items.append((name.encode("utf-8"), _encode_entry(self._entries[name])))
            table = _build_table(items, self._block_size)
            folder = os.path.dirname(self.prefix)
            fd, self._tmp_index = tempfile.mkstemp(prefix=temp_prefix(), suffix=".index.tmp", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(table)
                f.flush()
                os.fsync(f.fileno())
            for tmp in (self._tmp_data, self._tmp_index):  # mkstemp's 0o600 -> what the umask allows
                os.chmod(tmp, file_mode())
        except BaseException:
            self.abort()
            raise
        self._prepared = True
        return {self.data_path: self._tmp_data, self.index_path: self._tmp_index}

    def abort(self) -> None:
        """Discard everything written so far (temporary files removed)."""
        if self._done:
            return
        self._done = True
        try:
            self._data.close()
        except Exception:
            pass
        for p in (self._tmp_data, self._tmp_index):
            if p:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def checkpoint_state_text(basename: str, all_basenames: list[str]) -> bytes:
    """The `checkpoint` state file's bytes; UnicodeEncodeError for a name no file can have
    (a lone surrogate that os.fsencode refuses), so a writer can check before committing."""
    return (b'model_checkpoint_path: "' + _escape(basename) + b'"\n'
            + b"".join(b'all_model_checkpoint_paths: "' + _escape(p) + b'"\n' for p in all_basenames))


def prepare_checkpoint_state(folder: str, basename: str, all_basenames: list[str] | None = None) -> str:
    """The ``folder/checkpoint`` file naming ``basename`` as the latest checkpoint, written to a
    temp file beside it (fsynced): its path, for the caller to rename or publish."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = list(all_basenames) if all_basenames is not None else []
    paths = [p for p in paths if p != basename] + [basename]  # TF keeps the latest last
    text = checkpoint_state_text(basename, paths)
    return write_temp_beside(folder, text, suffix=".tmp", name="checkpoint.")


def write_checkpoint_state(folder: str, basename: str, all_basenames: list[str] | None = None) -> None:
    """Atomically write ``folder/checkpoint`` naming ``basename`` as the latest checkpoint."""
    tmp = prepare_checkpoint_state(folder, basename, all_basenames)
    try:
        os.replace(tmp, os.path.join(os.fspath(folder), "checkpoint"))
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_folder(os.fspath(folder))
