"""ugatit_common.tf_checkpoint.bundle (re-exported as torch_port.tf_bundle): numpy-only TensorFlow V2
checkpoint reader/writer, checked against TF itself."""

from __future__ import annotations

import gc
import os
import shutil
import struct
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ugatit_common.tf_checkpoint import bundle as tb  # noqa: E402
from ugatit_common.tf_checkpoint.bundle import (  # noqa: E402
    BundleReader,
    BundleWriter,
    CheckpointError,
    resolve_prefix,
    tensor_info,
    write_checkpoint_state,
)


def _golden_root() -> Path:
    for cand in (REPO / "parity_tests" / "fixtures" / "official_golden_light64",
                 REPO.parent / "shared" / "reference" / "official_golden_light64"):
        if (cand / "init").is_dir() and (cand / "final").is_dir():
            return cand
    pytest.skip("official_golden_light64 fixtures not found")


@pytest.fixture(params=["init", "final"])
def golden(request) -> Path:
    return _golden_root() / request.param


def _tf():
    import tensorflow as tf  # (tests marked tf: skipped by conftest where TF is absent)
    return tf


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _prefix_files(prefix: Path) -> list[str]:
    return sorted(p.name for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))


def _count_data_blocks(index_path: str) -> int:
    raw = Path(index_path).read_bytes()
    _, _, pos = tb._parse_handle(raw[-48:], 0)
    ioff, isize, _ = tb._parse_handle(raw[-48:], pos)
    return len(tb._block_entries(raw[ioff:ioff + isize]))


# ----------------------------------------------------------------------------------------
# 1. golden official checkpoints vs tf.train.load_checkpoint
# ----------------------------------------------------------------------------------------


@pytest.mark.tf
def test_golden_matches_tf_load_checkpoint(golden: Path) -> None:
    tf = _tf()
    with BundleReader(str(golden)) as r:
        ck = tf.train.load_checkpoint(str(golden))
        shapes = ck.get_variable_to_shape_map()
        dtypes = ck.get_variable_to_dtype_map()
        assert sorted(shapes) == r.keys()
        assert len(r.keys()) > 700
        for name in r.keys():
            ref = ck.get_tensor(name)
            got = r.read(name)
            assert tuple(shapes[name]) == r.shape(name) == got.shape, name
            assert np.dtype(dtypes[name].as_numpy_dtype) == r.dtype(name) == got.dtype, name
            assert _same(ref, got), name
            assert r.nbytes(name) == ref.nbytes


def test_golden_reader_without_tf(golden: Path) -> None:
    with BundleReader(str(golden)) as r:
        keys = r.keys()
        assert keys == sorted(keys) and "" not in keys and len(keys) > 700
        assert any("Adam" in k for k in keys)
        assert r.prefix.endswith("UGATIT.model-0" if golden.name == "init" else "UGATIT.model-3")
        total = 0
        for name, arr in r.items():  # verifies every CRC
            assert arr.dtype == np.float32 and arr.shape == r.shape(name) and arr.flags.owndata
            total += arr.nbytes
        assert total == os.path.getsize(r.data_path(0))
    info = tensor_info(str(golden))
    assert list(info) == keys


def test_resolve_prefix_forms(tmp_path: Path) -> None:
    golden = _golden_root() / "init"
    prefix = str(golden / "UGATIT.model-0")
    assert resolve_prefix(str(golden)) == prefix
    assert resolve_prefix(prefix) == prefix
    assert resolve_prefix(prefix + ".index") == prefix
    assert resolve_prefix(prefix + ".data-00000-of-00001") == prefix
    with pytest.raises(CheckpointError, match="no `checkpoint` file and no \\*.index in folder"):
        resolve_prefix(str(tmp_path))
    with pytest.raises(CheckpointError, match="index not found"):
        resolve_prefix(str(tmp_path / "nothing"))
    # folder without a `checkpoint` file but with one *.index
    for f in golden.iterdir():
        if f.name != "checkpoint":
            shutil.copy(f, tmp_path / f.name)
    assert resolve_prefix(str(tmp_path)) == str(tmp_path / "UGATIT.model-0")
    # `checkpoint` file naming a missing checkpoint
    write_checkpoint_state(str(tmp_path), "UGATIT.model-9")
    with pytest.raises(CheckpointError, match="UGATIT.model-9.index not found"):
        resolve_prefix(str(tmp_path))
    # absolute path from another machine: re-rooted into this folder
    write_checkpoint_state(str(tmp_path), "/elsewhere/run/UGATIT.model-0")
    assert resolve_prefix(str(tmp_path)) == str(tmp_path / "UGATIT.model-0")
    # a folder trained on Windows: its path is not one here, the checkpoint is in this folder
    for windows in ("D:\\runs\\UGATIT_demo\\UGATIT.model-0", "D:/runs/UGATIT_demo/UGATIT.model-0",
                    "\\\\server\\runs\\UGATIT.model-0"):
        write_checkpoint_state(str(tmp_path), windows)
        assert resolve_prefix(str(tmp_path)) == str(tmp_path / "UGATIT.model-0"), windows
    # a name here that merely holds a backslash is not re-rooted to another checkpoint
    write_checkpoint_state(str(tmp_path), "odd\\UGATIT.model-0")
    with pytest.raises(CheckpointError, match="index not found"):
        resolve_prefix(str(tmp_path))
    # absolute path of a folder that still exists (this one is a copy): read the copy
    write_checkpoint_state(str(tmp_path), prefix)
    assert resolve_prefix(str(tmp_path)) == str(tmp_path / "UGATIT.model-0")
    copy = tmp_path / "copy"
    copy.mkdir()
    write_checkpoint_state(str(copy), prefix)  # not here: the absolute path is used as written
    assert resolve_prefix(str(copy)) == prefix


def test_write_checkpoint_state_matches_tf_format(tmp_path: Path) -> None:
    golden = _golden_root() / "init"
    write_checkpoint_state(str(tmp_path), "UGATIT.model-0")
    assert (tmp_path / "checkpoint").read_bytes() == (golden / "checkpoint").read_bytes()
    write_checkpoint_state(str(tmp_path), "m-2", ["m-0", "m-1"])
    assert tb.read_checkpoint_state(str(tmp_path)) == ("m-2", ["m-0", "m-1", "m-2"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temp files left


@pytest.mark.tf
def test_checkpoint_state_read_by_tf(tmp_path: Path) -> None:
    tf = _tf()
    with BundleWriter(str(tmp_path / "model-5")) as w:
        w.add("x", np.ones(3, np.float32))
    write_checkpoint_state(str(tmp_path), "model-5", ["model-1", "model-5"])
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model-5")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model-1", "model-5"]


# ----------------------------------------------------------------------------------------
# 2. checkpoints written by TensorFlow
# ----------------------------------------------------------------------------------------


def _saver_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "generator_A/conv_0/kernel": rng.standard_normal((7, 7, 3, 16)).astype(np.float32),
        "generator_A/conv_0/kernel/Adam": rng.standard_normal((7, 7, 3, 16)).astype(np.float32),
        "generator_A/big": rng.standard_normal((600, 700)).astype(np.float32),  # 1.6 MB > a table block
        "d64": rng.standard_normal((3, 5)),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(4, 2), dtype=np.int32),
        "i64": rng.integers(-2**62, 2**62, size=(5,), dtype=np.int64),
        "b": np.array([[True, False, True]]),
        "u8": rng.integers(0, 255, size=(2, 3, 4), dtype=np.uint8),
        "f16": rng.standard_normal((9,)).astype(np.float16),
        "beta1_power": np.float32(0.5),  # scalar
        "global_step": np.int64(1234),
    }


@pytest.mark.tf
def test_reads_tf_saver_checkpoint(tmp_path: Path) -> None:
    tf = _tf()
    values = _saver_values()
    prefix = str(tmp_path / "ckpt" / "model.ckpt-7")
    with tf.Graph().as_default():
        for name, val in values.items():
            tf.compat.v1.Variable(val, name=name)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saved = saver.save(sess, prefix)
    assert saved == prefix
    with BundleReader(str(tmp_path / "ckpt")) as r:  # via the `checkpoint` file TF wrote
        assert r.prefix == prefix
        assert r.keys() == sorted(values)
        for name, val in values.items():
            got = r.read(name)
            assert _same(np.asarray(val), got), name
            assert r.dtype(name) == np.asarray(val).dtype and r.shape(name) == np.shape(val)


@pytest.mark.tf
def test_reads_tf_savev2_many_keys_and_strings(tmp_path: Path) -> None:
    """Thousands of long shared-prefix keys: the index spans several table blocks; plus DT_STRING."""
    tf = _tf()
    # the varying part first: little prefix sharing, so the index outgrows TF's 256 KiB table block
    names = [f"v{i:04d}/generator_B/decoder/up_resblock_{i // 40}/layer_with_a_rather_long_name/kernel/Adam_1"
             for i in range(3000)]
    vals = [np.full((2,), i, np.float32) for i in range(len(names))]
    strs = np.array([[b"a", b"bcd"], [b"", b"x" * 300]], dtype=object)
    prefix = str(tmp_path / "many")
    # in a graph and session: another test may have switched this process to TF1 graph mode
    with tf.Graph().as_default():
        save = tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names + ["_CHECKPOINTABLE_OBJECT_GRAPH", "strs"],
                                 shape_and_slices=[""] * (len(names) + 2),
                                 tensors=[tf.constant(v) for v in vals] + [tf.constant(b"graph-bytes"),
                                                                           tf.constant(strs)])
        with tf.compat.v1.Session() as sess:
            sess.run(save)
    assert _count_data_blocks(prefix + ".index") >= 2
    with BundleReader(prefix) as r:
        assert r.keys() == sorted(names + ["_CHECKPOINTABLE_OBJECT_GRAPH", "strs"])
        for name, val in zip(names, vals):
            assert _same(val, r.read(name))
        assert r.tf_dtype("strs") == "DT_STRING" and r.dtype("strs") == np.dtype(object)
        assert r.read("_CHECKPOINTABLE_OBJECT_GRAPH")[()] == b"graph-bytes"
        assert r.read("strs").tolist() == strs.tolist()


# ----------------------------------------------------------------------------------------
# 3. BundleWriter output read by TF and by BundleReader
# ----------------------------------------------------------------------------------------


def _writer_values() -> dict[str, np.ndarray]:
    vals = dict(_saver_values())
    rng = np.random.default_rng(1)
    vals.update({
        "i8": rng.integers(-128, 127, size=(3, 3), dtype=np.int8),
        "i16": rng.integers(-2**15, 2**15 - 1, size=(4,), dtype=np.int16),
        "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "fortran": np.asfortranarray(rng.standard_normal((5, 4)).astype(np.float32)),
        "zz/" + "deep/" * 30 + "name": np.float64(np.pi),
    })
    return vals


@pytest.mark.tf
def test_writer_output_read_by_tf(tmp_path: Path) -> None:
    tf = _tf()
    vals = _writer_values()
    # small table blocks so the index has many data blocks and restart points
    extra = {f"layer_{i:03d}/weights/Adam_1": np.full((i % 4,), i, np.int32) for i in range(200)}
    prefix = str(tmp_path / "out" / "UGATIT.model-1")
    with BundleWriter(prefix, block_size=256) as w:
        for name, v in {**vals, **extra}.items():
            w.add(name, v)
    assert _count_data_blocks(prefix + ".index") > 10
    ck = tf.train.load_checkpoint(prefix)
    shapes = ck.get_variable_to_shape_map()
    dtypes = ck.get_variable_to_dtype_map()
    assert sorted(shapes) == sorted({**vals, **extra})
    with BundleReader(prefix) as r:
        for name, v in {**vals, **extra}.items():
            want = np.asarray(v).astype(np.asarray(v).dtype.newbyteorder("="))
            ref = ck.get_tensor(name)
            assert tuple(shapes[name]) == want.shape and np.dtype(dtypes[name].as_numpy_dtype) == want.dtype
            assert _same(np.asarray(ref), want), name
            assert _same(r.read(name), want), name


@pytest.mark.tf
def test_golden_round_trip_read_by_tf(tmp_path: Path) -> None:
    tf = _tf()
    golden = _golden_root() / "final"
    prefix = str(tmp_path / "UGATIT.model-3")
    with BundleReader(str(golden)) as r, BundleWriter(prefix) as w:
        for name, arr in r.items():
            w.add(name, arr)
    ck = tf.train.load_checkpoint(prefix)
    ref = tf.train.load_checkpoint(str(golden))
    assert sorted(ck.get_variable_to_shape_map()) == sorted(ref.get_variable_to_shape_map())
    for name in ref.get_variable_to_shape_map():
        assert _same(ck.get_tensor(name), ref.get_tensor(name)), name


def test_golden_round_trip(tmp_path: Path, golden: Path) -> None:
    prefix = tmp_path / "rt" / "UGATIT.model"
    with BundleReader(str(golden)) as r:
        with BundleWriter(str(prefix)) as w:
            for name in reversed(r.keys()):  # any insertion order: the index is sorted on finish
                w.add(name, r.read(name))
        with BundleReader(str(prefix)) as r2:
            assert r2.keys() == r.keys()
            for name in r.keys():
                assert r2.read_raw(name) == r.read_raw(name), name
                assert _same(r2.read(name), r.read(name))
    assert _prefix_files(prefix) == ["UGATIT.model.data-00000-of-00001", "UGATIT.model.index"]
    assert sorted(os.listdir(prefix.parent)) == ["UGATIT.model.data-00000-of-00001", "UGATIT.model.index"]


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with BundleWriter(str(tmp_path / "p")) as w:
        w.add("a", np.zeros(2))
        with pytest.raises(CheckpointError, match="duplicate tensor name 'a'"):
            w.add("a", np.zeros(2))
        with pytest.raises(CheckpointError, match="unsupported dtype"):
            w.add("s", np.array(["x"]))
        with pytest.raises(CheckpointError, match="non-empty"):
            w.add("", np.zeros(1))
    with BundleReader(str(tmp_path / "p")) as r:
        assert r.keys() == ["a"]
        with pytest.raises(CheckpointError, match="no tensor named 'b'"):
            r.read("b")


def test_writer_accepts_torch_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    t = torch.randn(3, 4, requires_grad=True)
    with BundleWriter(str(tmp_path / "p")) as w:
        w.add("t", t)
        w.add("s", torch.tensor(2, dtype=torch.int64))
    with BundleReader(str(tmp_path / "p")) as r:
        assert _same(r.read("t"), t.detach().numpy())
        assert r.read("s").shape == () and r.read("s").dtype == np.int64 and r.read("s") == 2


# ----------------------------------------------------------------------------------------
# 4. corruption
# ----------------------------------------------------------------------------------------


def _copy_golden(tmp_path: Path) -> str:
    src = _golden_root() / "final"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
        os.chmod(tmp_path / f.name, 0o644)
    return str(tmp_path / "UGATIT.model-3")


def test_flipped_data_byte_names_tensor(tmp_path: Path) -> None:
    prefix = _copy_golden(tmp_path)
    with BundleReader(prefix) as r:
        victim = max(r.keys(), key=r.nbytes)
        e = r._entries[victim]
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.seek(e.offset + e.size // 2)
        b = f.read(1)
        f.seek(e.offset + e.size // 2)
        f.write(bytes([b[0] ^ 0x10]))
    with BundleReader(prefix) as r:
        with pytest.raises(CheckpointError, match="checksum mismatch") as ei:
            r.read(victim)
        assert repr(victim) in str(ei.value) and data in str(ei.value)
        r.read(victim, verify=False)  # explicit opt-out still reads
        for name in r.keys():  # every other tensor is intact
            if name != victim:
                r.read(name)


def test_truncated_data_names_tensor(tmp_path: Path) -> None:
    prefix = _copy_golden(tmp_path)
    with BundleReader(prefix) as r:
        last = max(r.keys(), key=lambda n: r._entries[n].offset)
        e = r._entries[last]
    data = prefix + ".data-00000-of-00001"
    os.truncate(data, e.offset + e.size - 1)
    with BundleReader(prefix) as r:
        with pytest.raises(CheckpointError, match="truncated") as ei:
            r.read(last)
        assert repr(last) in str(ei.value) and data in str(ei.value)


def test_truncated_data_says_where_the_file_really_ends(tmp_path: Path) -> None:
    """A data file cut before a tensor's start: the message gives the file's real length (it gave
    the tensor's offset, "ends after 351504" for a 5000-byte file)."""
    prefix = _copy_golden(tmp_path)
    with BundleReader(prefix) as r:
        last = max(r.keys(), key=lambda n: r._entries[n].offset)
        e = r._entries[last]
    data = prefix + ".data-00000-of-00001"
    os.truncate(data, e.offset // 2)
    size = os.path.getsize(data)
    with BundleReader(prefix) as r:
        with pytest.raises(CheckpointError, match="truncated") as ei:
            r.read(last)
    assert f"the file ends after {size}" in str(ei.value), str(ei.value)


def test_corrupted_index_names_index_file(tmp_path: Path) -> None:
    prefix = _copy_golden(tmp_path)
    index = prefix + ".index"
    raw = bytearray(Path(index).read_bytes())
    # a byte inside the table's data block
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0x01
    Path(index).write_bytes(flipped)
    with pytest.raises(CheckpointError, match="checksum mismatch") as ei:
        BundleReader(prefix)
    assert index in str(ei.value)
    # a broken footer magic
    bad = bytearray(raw)
    bad[-1] ^= 0xFF
    Path(index).write_bytes(bad)
    with pytest.raises(CheckpointError, match="magic") as ei:
        BundleReader(prefix)
    assert index in str(ei.value)
    # truncated index
    Path(index).write_bytes(raw[:30])
    with pytest.raises(CheckpointError) as ei:
        BundleReader(prefix)
    assert index in str(ei.value)
    # not a table at all
    Path(index).write_bytes(b"hello world" * 100)
    with pytest.raises(CheckpointError) as ei:
        BundleReader(prefix)
    assert index in str(ei.value)


def test_compressed_block_rejected(tmp_path: Path) -> None:
    table = bytearray(tb._build_table([(b"", tb._encode_header(1))]))
    # first block starts at 0; its handle is the first entry of the index block -> find via footer
    footer = bytes(table[-48:])
    off, size, pos = tb._parse_handle(footer, 0)
    ioff, isize, _ = tb._parse_handle(footer, pos)
    index_entries = tb._block_entries(bytes(table[ioff:ioff + isize]))
    boff, bsize, _ = tb._parse_handle(index_entries[0][1], 0)
    table[boff + bsize] = 1  # snappy
    crc = tb._crc_extend(tb._crc_extend(0, bytes(table[boff:boff + bsize])), b"\x01")
    table[boff + bsize + 1:boff + bsize + 5] = struct.pack("<I", tb._mask(crc))
    (tmp_path / "c.index").write_bytes(table)
    with pytest.raises(CheckpointError, match="snappy-compressed") as ei:
        BundleReader(str(tmp_path / "c"))
    assert str(tmp_path / "c.index") in str(ei.value)


def test_crc_mask_roundtrip() -> None:
    for v in (0, 1, 0xFFFFFFFF, 0x12345678, 0xA282EAD8):
        assert tb._unmask(tb._mask(v)) == v
    assert tb._crc_extend(0, b"123456789") == 0xE3069283  # CRC-32C check value
    assert tb._crc_extend_numpy(0, b"123456789") == 0xE3069283


def _crc32c_bitwise(c: int) -> int:
    """One byte's worth of CRC-32C register steps by the definition, a bit at a time (reflected
    polynomial 0x82F63B78)."""
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c


_REFERENCE_TABLE = [_crc32c_bitwise(i) for i in range(256)]


def _crc32c_bytewise(crc: int, data: bytes) -> int:
    """CRC-32C byte by byte from the table of the definition above: the reference where
    google-crc32c is absent."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _REFERENCE_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_crc_without_google_crc32c_equals_it() -> None:
    """The fallback for machines without google-crc32c (the GPU image has none): lanes computed
    side by side and folded in order give the CRC-32C value (google-crc32c's where installed,
    else the bit-by-bit definition) at every length around the lane, threshold and chunk sizes,
    from any starting value, for bytes, memoryviews (strided too) and arrays."""
    try:
        import google_crc32c
        reference = google_crc32c.extend
    except ImportError:
        reference = _crc32c_bytewise
    assert _crc32c_bytewise(0, b"123456789") == 0xE3069283  # the reference itself: the check value
    rng = np.random.default_rng(0)
    lane, least, chunk = tb._LANE, tb._LANE * tb._MIN_LANES, tb._LANE * tb._CHUNK_LANES
    for n in (0, 1, lane - 1, lane, lane + 1, least - 1, least, least + 1, chunk - 1, chunk, chunk + lane + 7,
              2 * chunk + 3):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for start in (0, 0x12345678, 0xFFFFFFFF):
            assert tb._crc_extend_numpy(start, data) == reference(start, data), (n, start)
    weights = rng.standard_normal((300, 70)).astype(np.float32)
    expected = reference(5, weights.tobytes())
    assert tb._crc_extend_numpy(5, weights) == expected
    assert tb._crc_extend_numpy(5, memoryview(weights.tobytes())) == expected
    assert tb._crc_extend_numpy(5, np.asfortranarray(weights).T.T) == expected  # a copy in C order
    strided = memoryview(np.arange(2 * 40000, dtype=np.uint8))[::2]
    assert tb._crc_extend_numpy(5, strided) == reference(5, strided.tobytes())


# ----------------------------------------------------------------------------------------
# 5. atomicity
# ----------------------------------------------------------------------------------------


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "sub" / "model"
    with pytest.raises(RuntimeError):
        with BundleWriter(str(prefix)) as w:
            w.add("a", np.ones((100, 100), np.float32))
            raise RuntimeError("boom")
    assert os.listdir(prefix.parent) == []


def test_unfinished_writer_leaves_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "model"
    w = BundleWriter(str(prefix))
    w.add("a", np.ones(10, np.float32))
    assert _prefix_files(prefix) == []  # only hidden temp files while writing
    del w
    gc.collect()
    assert os.listdir(tmp_path) == []
    w = BundleWriter(str(prefix))
    w.add("a", np.ones(10, np.float32))
    w.abort()
    assert os.listdir(tmp_path) == []


def test_finish_replaces_existing_checkpoint(tmp_path: Path) -> None:
    prefix = str(tmp_path / "m")
    for value in (1.0, 2.0):
        with BundleWriter(prefix) as w:
            w.add("v", np.float32(value))
        with BundleReader(prefix) as r:
            assert r.read("v") == value
    assert sorted(os.listdir(tmp_path)) == ["m.data-00000-of-00001", "m.index"]


# ----------------------------------------------------------------------------------------
# 6. streaming memory
# ----------------------------------------------------------------------------------------


def test_read_streams_with_bounded_memory(tmp_path: Path) -> None:
    n = 16 * 1024 * 1024  # 64 MiB of float32
    size = n * 4
    prefix = str(tmp_path / "big")
    tracemalloc.start()
    try:
        arr = np.arange(n, dtype=np.float32)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with BundleWriter(prefix) as w:
            w.add("small", np.ones(3, np.float32))
            w.add("big", arr)
        writer_extra = tracemalloc.get_traced_memory()[1] - base
        del arr
        gc.collect()
        with BundleReader(prefix) as r:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            out = r.read("big")
            reader_extra = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.shape == (n,) and out[12345] == 12345 and out[-1] == n - 1
    assert size <= reader_extra < 2 * size, reader_extra
    assert writer_extra < size // 2, writer_extra  # the writer streams without copying


# ----------------------------------------------------------------------------------------
# 7. property-based round trip
# ----------------------------------------------------------------------------------------

_SEGMENTS = ["generator_A", "generator_B", "discriminator_A", "conv_0", "conv_1", "kernel", "bias",
             "Adam", "Adam_1", "gamma", "x" * 60, "UpSample", "a", "a_b", "Z9", "layer.norm", "é"]

_names = st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=6).map("/".join)
_dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_, np.uint8, np.float16, np.int8])


@st.composite
def _tensor_dicts(draw):
    names = draw(st.lists(_names, min_size=1, max_size=60, unique=True))
    out = {}
    for name in names:
        dtype = draw(_dtypes)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        out[name] = draw(hnp.arrays(dtype, shape))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=_tensor_dicts(), block_size=st.sampled_from([64, 200, 1024, tb._DEFAULT_BLOCK_SIZE]))
def test_property_round_trip(tensors: dict[str, np.ndarray], block_size: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "ck", "model")
        with BundleWriter(prefix, block_size=block_size) as w:
            for name, arr in tensors.items():
                w.add(name, arr)
        with BundleReader(os.path.dirname(prefix) + "/model.index") as r:
            assert r.keys() == sorted(tensors, key=lambda s: s.encode("utf-8"))
            for name, arr in tensors.items():
                assert name in r
                assert r.shape(name) == arr.shape and r.dtype(name) == arr.dtype
                assert _same(r.read(name), arr), name
            assert [n for n, _ in r.items()] == r.keys()


def test_torch_port_tf_bundle_is_the_same_module_api() -> None:
    """The README's `torch_port.tf_bundle.BundleReader` stays importable: a re-export of the ground floor."""
    from torch_port import tf_bundle as old
    for name in tb.__all__:
        assert getattr(old, name) is getattr(tb, name), name


def test_resolve_prefix_says_what_is_there_instead(tmp_path: Path) -> None:
    """A path that is no TF checkpoint is named with what it holds instead: a port or Morph
    checkpoint (the other converter's input), run folders one level down (the `--checkpoint_dir`
    parent given for its run folder), nothing; a path that does not exist says so."""
    port = tmp_path / "port"
    port.mkdir()
    for name in ("UGATIT_light.model-9.safetensors", "UGATIT_light.model-21.safetensors", "latest"):
        (port / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no `checkpoint` file and no \*\.index in folder .*port: it holds a "
                                              r"PyTorch checkpoint \(UGATIT_light\.model-21\.safetensors\), not an "
                                              r"official TensorFlow one \(weights_convert\.py torch2tf"):
        resolve_prefix(str(port))
    morph = tmp_path / "morph"
    morph.mkdir()
    (morph / "MorphUGATIT_C.model-3.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="Morph-UGATIT checkpoint has no TensorFlow counterpart"):
        resolve_prefix(str(morph))
    with pytest.raises(CheckpointError, match=r"model-9\.safetensors is neither .* \(a PyTorch file: convert it with "
                                              r"weights_convert\.py torch2tf\)"):
        resolve_prefix(str(port / "UGATIT_light.model-9.safetensors"))
    # a Morph file given itself (its weights or its .state.pt) is not sent to torch2tf, which refuses it
    for name in ("MorphUGATIT_C.model-3.safetensors", "MorphUGATIT_C.model-3.state.pt"):
        (morph / name).write_bytes(b"")
        with pytest.raises(CheckpointError, match=r"is neither .* \(a Morph-UGATIT checkpoint: it has no "
                                                  r"TensorFlow counterpart\)") as e:
            resolve_prefix(str(morph / name))
        assert "torch2tf" not in str(e.value)
    parent = tmp_path / "checkpoint"
    shutil.copytree(_golden_root() / "init", parent / "UGATIT_light_x")
    (parent / "empty_subfolder").mkdir()
    with pytest.raises(CheckpointError, match=r"its subfolders hold checkpoints; give one of them: '[^']*"
                                              r"checkpoint/UGATIT_light_x'$"):
        resolve_prefix(str(parent))
    with pytest.raises(CheckpointError, match=r"empty_subfolder: expected an official TensorFlow checkpoint folder"):
        resolve_prefix(str(parent / "empty_subfolder"))
    with pytest.raises(CheckpointError, match=r"nothing\.index not found \(no such file or folder; expected an "
                                              r"official TensorFlow checkpoint folder or prefix\)"):
        resolve_prefix(str(tmp_path / "nothing"))


def test_one_file_of_a_checkpoint_names_its_prefix_in_every_reader(tmp_path: Path) -> None:
    """`.index`, `.data-*` and `.meta` name their prefix (only with the `.index` there) alike for
    the bundle reader, the port's `--checkpoint` and Morph's `--init_from`: one rule, one place."""
    from morph.train import tf_prefix
    from torch_port.checkpoint import tf_prefix_of_file
    from ugatit_common.tf_checkpoint import prefix_of_file
    prefix = str(tmp_path / "UGATIT_light.model-7")
    for ext in (".index", ".data-00000-of-00001", ".meta"):
        Path(prefix + ext).write_bytes(b"")
    for ext in (".index", ".data-00000-of-00001", ".meta"):
        assert prefix_of_file(prefix + ext) == prefix, ext
        assert Path(prefix_of_file(Path(prefix + ext))) == Path(prefix), ext  # path-like too
        assert tf_prefix_of_file(prefix + ext) == prefix and tf_prefix(prefix + ext) == prefix, ext
    assert tf_prefix(prefix) == prefix  # the prefix itself
    for other in (prefix, str(tmp_path), prefix + ".meta.bak", prefix + ".index-x"):
        assert prefix_of_file(other) is None, other
        assert tf_prefix_of_file(other) == other, other
    # without its .index, no file names a prefix (a lone .meta is not a checkpoint)
    os.remove(prefix + ".index")
    for ext in (".data-00000-of-00001", ".meta"):
        assert prefix_of_file(prefix + ext) is None and tf_prefix(prefix + ext) is None, ext
    with pytest.raises(CheckpointError, match=r"data file .*\.data-00000-of-00001: its index .*\.index not found"):
        resolve_prefix(prefix + ".data-00000-of-00001")


def test_resolve_prefix_takes_bytes_and_names_a_morph_file_as_morphs(tmp_path):
    """resolve_prefix reads a bytes path (os.fsencode'd) as its name; a Morph weights file given
    where a TF checkpoint goes is said to have no TensorFlow counterpart (not 'convert it with
    torch2tf'); prefix_of_file names a prefix only for a checkpoint file that is there."""
    from parity_tests.conftest import GOLDEN
    folder = tmp_path / "ck"
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    prefix = str(folder / "UGATIT.model-3")
    assert tb.resolve_prefix(os.fsencode(prefix)) == prefix
    assert tb.resolve_prefix(os.fsencode(str(folder))) == prefix
    assert tb.prefix_of_file(prefix + ".index") == prefix
    assert tb.prefix_of_file(prefix + ".meta") is None  # no such file beside the .index
    for name, what in (("MorphUGATIT_C.model-3.safetensors", "a Morph-UGATIT checkpoint"),
                       ("UGATIT_light.model-3.safetensors", "convert it with weights_convert.py torch2tf")):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(tb.CheckpointError) as e:
            tb.resolve_prefix(str(tmp_path / name))
        assert what in str(e.value), e.value
