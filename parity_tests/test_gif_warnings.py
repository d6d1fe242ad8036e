"""The warning of a skipped GIF says what the official TF pipeline does with it.

A 2-frame GIF whose 2nd frame is damaged counts 2 frames in Pillow, and both frameworks skipped
it saying the official pipeline stops on it mid-run (an animated GIF) - but TF's decoder drops the
damaged frame and decode_jpeg trains on the first one. Now each skipped GIF's warning names what
TF does (ugatit_common.gif_decode walks the file as giflib reads it); the decision is unchanged:
a training image must decode whole (README "Training images"). The TF tests run TF's decoder on
the same files."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest

STOPS, TRAINS = "stops on it mid-run", "would train on its first frame only"


def _frames(rng, n, w=50, h=40):
    from PIL import Image
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P") for _ in range(n)]


def _gif(frames) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=len(frames) > 1, append_images=frames[1:])
    return buf.getvalue()


def _images(raw: bytes) -> list[tuple[int, int, int]]:
    """(descriptor start, data start, data end) of each frame of a well-formed GIF."""
    i = 13 + (3 << ((raw[10] & 7) + 1) if raw[10] & 0x80 else 0)
    out = []
    while raw[i] != 0x3B:
        start = i
        if raw[i] == 0x2C:
            i += 10 + (3 << ((raw[i + 9] & 7) + 1) if raw[i + 9] & 0x80 else 0)
        else:
            i += 2
        data = i
        i += 1 if raw[start] == 0x2C else 0
        while raw[i]:
            i += raw[i] + 1
        i += 1
        if raw[start] == 0x2C:
            out.append((start, data, i))
    return out


def _cases(tmp_path) -> dict:
    """Damaged and sound GIFs as users' folders hold them (a cut download, a damaged disk)."""
    rng = np.random.default_rng(0)
    frames = _frames(rng, 3)
    one, two, three = _gif(frames[:1]), _gif(frames[:2]), _gif(frames)
    (_, d1, e1), (s2, d2, e2) = _images(two)
    (_, _, _), (_, _, _), (s3, d3, e3) = _images(three)
    oob = bytearray(two)
    oob[s2 + 5:s2 + 9] = struct.pack("<HH", 60, 50)  # frame 2 declares more pixels than its data holds
    cases = {
        "sound.gif": one,
        "animated.gif": two,
        "frame2_declares_more.gif": bytes(oob),
        "frame2_cut.gif": two[:d2 + (e2 - d2) // 2],
        "frame2_zeros.gif": two[:d2 + 2] + bytes(e2 - d2 - 3) + two[e2 - 1:],
        "frame1_cut.gif": one[:d1 + (e1 - d1) // 2],
        "frame3_cut.gif": three[:d3 + (e3 - d3) // 2],
        "no_trailer.gif": two[:-1],
    }
    paths = {}
    for name, raw in cases.items():
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as fh:
            fh.write(raw)
    return paths


def _reason(path) -> str | None:
    from ugatit_common.images import ImageReadError, check_train_image
    try:
        check_train_image(path)
    except ImageReadError as e:
        assert e.path == path
        return e.reason
    return None


def test_a_gif_whose_second_frame_is_damaged_is_not_said_to_stop_tf(tmp_path):
    """Pillow counts 2 frames (OpenCV decodes the first): the warning said "an animated GIF (2
    frames): the official TF pipeline stops on it mid-run"; TF trains on its first frame. Now it
    says so, and why the file is skipped all the same. A sound animated GIF still stops TF."""
    from PIL import Image

    from ugatit_common.images import decode_image
    paths = _cases(tmp_path)
    path = paths["frame2_declares_more.gif"]
    with Image.open(path) as im:
        assert im.n_frames == 2
    assert decode_image(path).shape == (40, 50, 3)
    reason = _reason(path)
    assert reason and TRAINS in reason and STOPS not in reason and "animated" not in reason, reason
    assert "frame 2" in reason and "decode whole" in reason, reason
    assert "animated GIF (2 frames)" in _reason(paths["animated.gif"]) and STOPS in _reason(paths["animated.gif"])
    assert _reason(paths["sound.gif"]) is None
    # 3 frames, the 3rd declaring more pixels than its data holds: TF stops on its 2 whole frames, but
    # it is said as the damaged file it is, not as a sound animation
    three = _gif(_frames(np.random.default_rng(0), 3))
    s3 = _images(three)[2][0]
    damaged = bytearray(three)
    damaged[s3 + 5:s3 + 9] = struct.pack("<HH", 60, 50)
    path = tmp_path / "frame3_declares_more.gif"
    path.write_bytes(bytes(damaged))
    reason = _reason(str(path))
    assert reason.startswith("a damaged GIF (Pillow counts 3 frames)") and "animated" not in reason, reason
    assert STOPS in reason and "giflib: frame 3" in reason, reason


def test_every_skipped_gif_is_named_once_in_both_frameworks(tmp_path, capsys):
    """The rule is one (ugatit_common.images): tf_reference and the port skip the same files, each
    with one warning naming it and what TF does; only the sound GIF is used."""
    import warnings

    from torch_port import data as tdata
    from ugatit_common.images import readable_train_images
    paths = _cases(tmp_path)
    files = sorted(paths.values())
    said = []
    kept = readable_train_images(files, said.append)
    assert kept == [paths["sound.gif"]]
    assert len(said) == len(files) - 1 and all(repr(f) in w for f, w in zip([f for f in files if f not in kept], said))
    assert all((STOPS in w) != (TRAINS in w) for w in said), said
    with warnings.catch_warnings(record=True) as port_said:
        warnings.simplefilter("always")
        port = tdata.ImageFolderDataset(files, 32, augment=False, seed=0)
    assert port.files == kept
    assert [str(w.message) for w in port_said if "skipping" in str(w.message)] == said


def _tf_decode(tf, raw: bytes, decode=None):
    """The official pipeline's decode (decode_jpeg, 3 channels) of `raw`, or `decode(tensor)`: the
    result, or None when TF stops on it. Run in a graph and session of its own, so it works whether
    or not an earlier test in this process turned TF's eager mode off (tf_reference does)."""
    g = tf.Graph()
    with g.as_default():
        t = tf.constant(raw)
        dec = decode(t) if decode else tf.compat.v1.image.decode_jpeg(t, channels=3)
    with tf.compat.v1.Session(graph=g) as sess:
        try:
            return sess.run(dec)
        except tf.errors.InvalidArgumentError:
            return None


@pytest.mark.tf
def test_the_warning_says_what_tf_does_with_each_gif(tmp_path):
    """Each GIF through TF's own decoder: the warning says TF trains on the first frame exactly
    where decode_jpeg decodes it (and that picture is OpenCV's first frame where OpenCV decodes it),
    and that TF stops on it exactly where decode_jpeg fails."""
    import tensorflow as tf

    from ugatit_common.images import ImageReadError, decode_image
    for name, path in _cases(tmp_path).items():
        raw = open(path, "rb").read()
        tf_picture, reason = _tf_decode(tf, raw), _reason(path)
        if name == "sound.gif":
            assert reason is None and np.array_equal(tf_picture, decode_image(path))
            continue
        assert reason is not None, name
        assert (TRAINS in reason) == (tf_picture is not None) and (STOPS in reason) == (tf_picture is None), \
            (name, reason)
        if tf_picture is not None:
            try:
                assert np.array_equal(tf_picture, decode_image(path)), name
            except ImageReadError:
                pass  # OpenCV cannot decode it (said in the warning): the port could not train on it


@pytest.mark.tf
def test_giflib_walk_predicts_tf_on_fuzzed_gifs():
    """ugatit_common.gif_decode against TF's decoder on damaged GIFs (cut, bytes changed, inserted,
    removed; 1 to 3 frames, interlaced or not, 2 to 256 colours): the frames decode_gif returns and
    whether decode_jpeg decodes, for every file."""
    import tensorflow as tf
    from PIL import Image

    from ugatit_common.gif_decode import giflib_frames, tf_decode_of_frames
    rng = np.random.default_rng(7)
    for trial in range(300):
        n, w, h = int(rng.integers(1, 4)), int(rng.integers(4, 30)), int(rng.integers(4, 30))
        colours = int(rng.choice([2, 4, 16, 256]))
        frames = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(colours) for _ in range(n)]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], interlace=bool(rng.integers(0, 2)))
        raw = bytearray(buf.getvalue())
        op, i = int(rng.integers(0, 4)), int(rng.integers(13, len(raw)))
        if op == 0:
            raw = raw[:i]
        elif op == 1:
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(13, len(raw)))] = int(rng.integers(0, 256))
        elif op == 2:
            raw = raw[:i] + bytes(rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8)) + raw[i:]
        else:
            raw = raw[:i] + raw[i + int(rng.integers(1, 20)):]
        raw = bytes(raw)
        gif = _tf_decode(tf, raw, tf.io.decode_gif)
        tf_frames = 0 if gif is None else gif.shape[0]
        whole, _, drawn = giflib_frames(raw)
        assert tf_frames == (0 if any(drawn[:whole]) else whole), (trial, giflib_frames(raw))
        assert (_tf_decode(tf, raw) is not None) == tf_decode_of_frames(raw)[2].startswith("decodes"), trial


def _hand_gif(w=2, h=1, extensions=b"", lzw=b"\x03\x02\x58\x90\x00", left=0) -> bytes:
    """A GIF made byte by byte: a 2-colour screen of w x h, `extensions` before its one frame, and
    `lzw` (code size, sub-blocks, end) as the frame's data - by default the pixels 5, 0 (codes
    clear, 5, 0, end at 4 bits: 0x58 0x90), so pixel 0 indexes past the 2-colour table; the frame
    at (`left`, 0)."""
    screen = b"GIF89a" + struct.pack("<HH", w, h) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    return screen + extensions + b"\x2c" + struct.pack("<HHHH", left, 0, w, h) + b"\x00" + lzw + b"\x3b"


@pytest.mark.tf
def test_giflib_walk_predicts_tf_on_hand_made_edge_gifs():
    """What the fuzzed files above never hold, against TF's decoder: a graphic control extension
    whose transparent index is the index past the colour table (TF does not draw it: decodes), the
    same index without transparency (TF stops), an extension whose first sub-block is empty
    (giflib reads one more size byte: the frame still decodes), a frame 0 pixels wide, a pixel past
    the table that falls off the canvas (a frame at an offset: not drawn, decodes)."""
    import tensorflow as tf

    from ugatit_common.gif_decode import giflib_frames, tf_decode_of_frames
    gce = lambda flags: b"\x21\xf9\x04" + bytes([flags]) + b"\x00\x00\x05\x00"  # noqa: E731 - transparent index 5
    files = {"transparent_past_the_table": _hand_gif(extensions=gce(1)),
             "past_the_table_not_transparent": _hand_gif(extensions=gce(0)),
             "empty_first_sub_block": _hand_gif(extensions=gce(1) + b"\x21\xfe\x00\x00"),
             "zero_width": _hand_gif(w=0),
             # pixels 0, 5 with the frame at (1, 0): pixel 5 falls off TF's frame-sized canvas, is not drawn
             "past_the_table_off_the_canvas": _hand_gif(lzw=b"\x03\x02\x08\x95\x00", left=1)}
    for name, raw in files.items():
        gif = _tf_decode(tf, raw, tf.io.decode_gif)
        tf_frames = 0 if gif is None else gif.shape[0]
        whole, _, drawn = giflib_frames(raw)
        assert tf_frames == (0 if any(drawn[:whole]) else whole), (name, tf_frames, giflib_frames(raw))
        decodes = _tf_decode(tf, raw) is not None
        assert decodes == tf_decode_of_frames(raw)[2].startswith("decodes"), (name, decodes, tf_decode_of_frames(raw))
    # the cases differ as intended: TF decodes the first, third and fifth; stops on the second, fourth
    assert [_tf_decode(tf, raw) is not None for raw in files.values()] == [True, False, True, False, True]


def test_a_frame_of_the_screens_size_at_an_offset_is_not_its_screen(tmp_path):
    """A frame as large as the logical screen but placed at (3, 2): OpenCV decodes the screen (the
    frame drawn at its place, or not at all where it does not fit), TF the frame itself - not the
    same picture, so it is skipped, said as a frame that is not its whole screen (the size alone
    agreeing is not enough). The same file with the frame at (0, 0) is used."""
    raw = bytearray(_gif(_frames(np.random.default_rng(1), 1)))
    start = _images(bytes(raw))[0][0]
    whole = tmp_path / "whole.gif"
    whole.write_bytes(bytes(raw))
    raw[start + 1:start + 5] = struct.pack("<HH", 3, 2)
    moved = tmp_path / "moved.gif"
    moved.write_bytes(bytes(raw))
    assert _reason(str(whole)) is None
    reason = _reason(str(moved))
    assert reason and "first frame (50x40 at 3,2) is not its whole 50x40 logical screen" in reason, reason
