"""Image files as users' folders hold them: which training images both frameworks use.

The training image rule (`ugatit_common.images.check_train_image`, shared by tf_reference and
torch_port) must keep exactly the files the official TF pipeline (`decode_jpeg(channels=3)`)
decodes: a kept file TF cannot decode stops tf_reference mid-run while the port trains on it.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import cv2  # noqa: E402

from torch_port import data as tdata  # noqa: E402
from ugatit_common.images import ImageReadError, check_train_image  # noqa: E402


def _picture(seed=0, h=56, w=44):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """Intact files: baseline, progressive and restart-interval JPEGs, a PNG and a palette PNG."""
    from PIL import Image
    d = tmp_path_factory.mktemp("intact")
    img = _picture()
    paths = {"baseline.jpg": str(d / "baseline.jpg"), "rst.jpg": str(d / "rst.jpg"),
             "progressive.jpg": str(d / "progressive.jpg"), "rgb.png": str(d / "rgb.png"),
             "palette.png": str(d / "palette.png")}
    assert cv2.imwrite(paths["baseline.jpg"], img)
    assert cv2.imwrite(paths["rst.jpg"], img, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
    Image.fromarray(img[:, :, ::-1].copy()).save(paths["progressive.jpg"], progressive=True, quality=90)
    assert cv2.imwrite(paths["rgb.png"], img)
    Image.fromarray(img[:, :, ::-1].copy()).convert("P").save(paths["palette.png"])
    return paths


def _damaged(intact, folder):
    """What users' folders hold after a failed copy or download: the start of a file with the rest
    zeros (a preallocated file) or other bytes, a JPEG whose end marker is damaged, a PNG whose
    IEND chunk's CRC is wrong."""
    out = {}
    for name in ("baseline.jpg", "rst.jpg", "progressive.jpg"):
        data = open(intact[name], "rb").read()
        for frac in (0.5, 0.8):
            k = int(len(data) * frac)
            for fill, tag in ((b"\0", "zeros"), (b"junk", "junk")):
                out[f"{tag}{int(frac * 100)}_{name}"] = data[:k] + (fill * len(data))[:len(data) - k]
        eoi = bytearray(data)
        assert eoi[-2:] == b"\xff\xd9"
        eoi[-2] = 0xFE
        out[f"bad_eoi_{name}"] = bytes(eoi)
    png = bytearray(open(intact["palette.png"], "rb").read())
    assert png[-8:-4] == b"IEND"
    png[-1] ^= 0x04
    out["bad_iend_crc.png"] = bytes(png)
    paths = {}
    for name, data in out.items():
        p = os.path.join(str(folder), name)
        with open(p, "wb") as fh:
            fh.write(data)
        paths[name] = p
    return paths


def test_incomplete_files_are_skipped_by_the_port(intact, tmp_path):
    """A JPEG whose end is zeros or junk decodes in OpenCV (the rest as noise): the port must not
    train on it (tf_reference, by the same rule, does not; TF itself stops on it, below)."""
    damaged = _damaged(intact, tmp_path)
    for name, p in damaged.items():
        with pytest.raises(ImageReadError) as ei:
            check_train_image(p)
        assert os.path.basename(p) in str(ei.value)
    for p in intact.values():
        check_train_image(p)
    files = sorted(damaged.values()) + [intact["baseline.jpg"]]
    with pytest.warns(RuntimeWarning) as rec:
        ds = tdata.ImageFolderDataset(files, 32, augment=False)
    assert ds.files == [intact["baseline.jpg"]]
    warned = " ".join(str(w.message) for w in rec)
    assert all(os.path.basename(p) in warned for p in damaged.values())


@pytest.fixture(scope="module")
def tf_decodes():
    """`decode_jpeg(channels=3)` as the official pipeline runs it: True when TF decodes the bytes."""
    import tensorflow as tf  # (tests marked tf: skipped by conftest where TF is absent)
    g = tf.Graph()
    with g.as_default():
        ph = tf.compat.v1.placeholder(tf.string, [])
        dec = tf.compat.v1.image.decode_jpeg(ph, channels=3)
    sess = tf.compat.v1.Session(graph=g)

    def decodes(data: bytes) -> bool:
        try:
            sess.run(dec, {ph: data})
            return True
        except tf.errors.OpError:
            return False
    yield decodes
    sess.close()


@pytest.mark.tf
def test_damaged_files_tf_stops_on_are_the_ones_skipped(intact, tmp_path, tf_decodes):
    """Each damaged file above stops TF's decode_jpeg (the official pipeline, mid-run), and each
    intact one decodes: the rule keeps what TF keeps."""
    for name, p in _damaged(intact, tmp_path).items():
        assert not tf_decodes(open(p, "rb").read()), f"TF decodes {name}: the rule should keep it"
    for name, p in intact.items():
        assert tf_decodes(open(p, "rb").read()), name


@pytest.mark.tf
@pytest.mark.parametrize("name", ["baseline.jpg", "rst.jpg", "progressive.jpg", "palette.png"])
def test_bit_flips_kept_exactly_when_tf_decodes(intact, tmp_path, tf_decodes, name):
    """Damaged files of every kind a flipped bit makes (bad markers, bad Huffman data, bad CRCs,
    a damaged end marker): check_train_image keeps a file exactly when TF decodes it. Measured
    on 4 x 300 flips of 7 JPEGs (baseline, progressive, restart markers, CMYK, EXIF): no
    difference. What differs is constructed, not found by flips: a 0xFF 0x00 in a scan with
    restart markers turned into 0xFF 0xDB (a DQT segment with a length read from the scan data)."""
    data = open(intact[name], "rb").read()
    rng = np.random.default_rng(11)
    p = str(tmp_path / ("flip" + os.path.splitext(name)[1]))
    wrong = []
    for _ in range(60):
        b = bytearray(data)
        i = int(rng.integers(2, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        with open(p, "wb") as fh:
            fh.write(b)
        try:
            check_train_image(p)
            kept = True
        except ImageReadError:
            kept = False
        if kept != tf_decodes(bytes(b)):
            wrong.append((i, kept))
    # the end marker (JPEG) / the IEND CRC (PNG): the flips most likely to be kept wrongly
    for i in ([len(data) - 2] if name.endswith(".jpg") else [len(data) - 1, len(data) - 3]):
        b = bytearray(data)
        b[i] ^= 0x01
        with open(p, "wb") as fh:
            fh.write(b)
        with pytest.raises(ImageReadError):
            check_train_image(p)
        assert not tf_decodes(bytes(b))
    assert not wrong, f"(byte, kept) where the rule and TF disagree: {wrong}"


def _cmyk_jpegs(folder):
    """CMYK JPEGs as Photoshop writes them (Adobe APP14 marker, inverted samples) and the same
    file without the marker (plain CMYK), with a non-zero K channel."""
    import io

    from PIL import Image
    arr = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (40, 36, 4), dtype=np.uint8), (3, 3), 0)
    bio = io.BytesIO()
    Image.fromarray(arr, mode="CMYK").save(bio, "JPEG", quality=90)
    adobe = bio.getvalue()
    i = adobe.find(b"\xff\xee")
    assert i > 0 and adobe[i + 4:i + 9] == b"Adobe"
    plain = adobe[:i] + adobe[i + 2 + ((adobe[i + 2] << 8) | adobe[i + 3]):]
    paths = {}
    for name, data in (("adobe_cmyk.jpg", adobe), ("plain_cmyk.jpg", plain)):
        paths[name] = os.path.join(str(folder), name)
        with open(paths[name], "wb") as fh:
            fh.write(data)
    return paths


@pytest.mark.tf
def test_cmyk_jpegs_decode_as_tf(tmp_path):
    """The port decodes a CMYK JPEG to TF's pixels (with TF's accurate IDCT: exactly; with the
    official default fast IDCT within the JPEG bound of test_data_pipeline). OpenCV's own
    conversion was 1-2 levels off with the Adobe marker and inverted the colours without it."""
    import tensorflow as tf  # (tests marked tf: skipped by conftest where TF is absent)
    g = tf.Graph()  # a graph and session: other tests in this process switch TF to graph mode
    with g.as_default():
        ph = tf.compat.v1.placeholder(tf.string, [])
        dec_accurate = tf.compat.v1.image.decode_jpeg(ph, channels=3, dct_method="INTEGER_ACCURATE")
        dec_default = tf.compat.v1.image.decode_jpeg(ph, channels=3)
    jpegs = _cmyk_jpegs(tmp_path)
    with tf.compat.v1.Session(graph=g) as sess:
        decoded = {name: sess.run([dec_accurate, dec_default], {ph: open(p, "rb").read()}) for name, p in jpegs.items()}
    for name, p in jpegs.items():
        accurate, default = decoded[name]
        check_train_image(p)
        ours = tdata.decode_image(p)
        assert ours.dtype == np.uint8 and ours.shape == accurate.shape
        np.testing.assert_array_equal(ours, accurate, err_msg=name)
        assert np.abs(ours.astype(int) - default.astype(int)).max() <= 8, name


def test_readme_onnx_loop_takes_a_real_photo_folder(tmp_path):
    """The README walkthrough's ONNX Runtime loop (step 2) on a folder as users have one: every
    picture translated under its own name, the rest (a note, a folder, an empty or cut file, a
    link to nothing) skipped with a line; a name that is not UTF-8 read and written (cv2.imread
    stopped Python on it with a segmentation fault; a non-picture stopped the loop in cv2.resize).
    ONNX Runtime is replaced by a stub (the model is not what is tested here)."""
    import re
    import subprocess
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- walkthrough:begin -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S).group(1)
    loop = re.search(r"python - <<EOF\n(.*?)\nEOF\n", block, re.S).group(1)
    photos = tmp_path / "photos"
    photos.mkdir()
    img = _picture(1)
    for name in ("a.png", "B.JPG", "c d #1 %20.webp", "e.bmp"):
        assert cv2.imwrite(str(photos / name), img)
    (photos / "f.jfif").write_bytes(cv2.imencode(".jpg", img)[1].tobytes())  # a JPEG as browsers save some
    with open(os.path.join(os.fsencode(str(photos)), b"caf\xe9.png"), "wb") as fh:
        fh.write(cv2.imencode(".png", img)[1].tobytes())
    (photos / "notes.txt").write_text("my photos")
    (photos / "empty.png").write_bytes(b"")
    (photos / "cut.png").write_bytes(cv2.imencode(".png", img)[1].tobytes()[:200])
    (photos / "sub.dir").mkdir()
    os.symlink("nowhere.png", photos / "dangling.png")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "onnxruntime.py").write_text(
        "class _Input:\n    shape = [1, 16, 16, 3]\n"
        "class InferenceSession:\n"
        "    def __init__(self, path):\n        pass\n"
        "    def get_inputs(self):\n        return [_Input()]\n"
        "    def run(self, names, feed):\n        return [255 - feed['image']]\n")
    (tmp_path / "my_onnx_results").mkdir()
    code = loop.replace("$PHOTOS", str(photos))
    assert "$" not in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(stub)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = sorted(os.listdir(os.fsencode(str(tmp_path / "my_onnx_results"))))
    assert out == sorted([b"a.png", b"B.JPG", b"c d #1 %20.webp", b"e.bmp", b"caf\xe9.png", b"f.jfif.png"])
    for skipped in ("notes.txt", "empty.png", "cut.png", "sub.dir", "dangling.png"):
        assert f"skipped, not a picture: {str(photos / skipped)!r}" in proc.stdout
    got = cv2.imdecode(np.fromfile(str(tmp_path / "my_onnx_results" / "a.png"), np.uint8), cv2.IMREAD_COLOR)
    want = 255 - cv2.resize(img, (16, 16))  # the stub inverts: each picture went through the session
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["photos [2020]", "set*1", "a?b"])
def test_dataset_names_with_glob_characters_are_read_literally(tmp_path, name):
    """A data set (or --data_root) whose path holds glob characters: its images are listed (the
    path went to glob as a pattern: '[2020]' matched no folder, 'holds no files')."""
    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / name / "trainA"
    folder.mkdir(parents=True)
    for i in range(2):
        assert cv2.imwrite(str(folder / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    files = opt.domain_files({"dataset": name}, "trainA", base=str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["0.png", "1.png"]


def test_folders_and_dangling_links_in_a_data_set_are_said(tmp_path, capsys):
    """A folder named like a file ('old.set') and a link that leads nowhere, in a domain folder:
    skipped, each with a warning naming it (they were dropped without a word)."""
    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / "d" / "trainA"
    (folder / "old.set").mkdir(parents=True)
    assert cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink(str(tmp_path / "gone.png"), str(folder / "b.png"))
    files = opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["a.png"]
    err = capsys.readouterr().err
    assert "old.set" in err and "a folder" in err and "b.png" in err and "leads to no file" in err


def test_a_fifo_in_a_data_set_is_said_as_what_it_is(tmp_path, capsys):
    """A named pipe called `p.png` in a domain folder (the official read_file would block on it):
    skipped with a warning that says it is not a regular file (was: 'a link that leads to no
    file', for a FIFO that is no link)."""
    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / "d" / "trainA"
    folder.mkdir(parents=True)
    assert cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))
    os.mkfifo(str(folder / "p.png"))
    files = opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["a.png"]
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "p.png" in ln]
    assert len(warned) == 1 and "not a regular file (a FIFO)" in warned[0] and "link" not in warned[0], warned


def test_a_data_set_of_names_without_an_extension_says_why_none_is_read(tmp_path):
    """A domain folder holding pictures named without an extension (`photo1`): the official code
    globs `*.*`, so none is read; the error said the folder 'holds no files', which it does. It
    now says that files without an extension are there and are not read."""
    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / "d" / "trainA"
    folder.mkdir(parents=True)
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    (folder / "photo1").write_bytes(buf.tobytes())
    with pytest.raises(opt.OptionError) as e:
        opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))
    assert "holds no files" not in str(e.value) and "'photo1'" in str(e.value) and "extension" in str(e.value)
    (folder / "photo1").unlink()
    with pytest.raises(opt.OptionError, match="holds no files"):  # an empty folder: said as before
        opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))


def test_a_damaged_file_is_said_in_one_warning_not_opencvs_log_lines(tmp_path, capfd):
    """A damaged picture was said twice more by OpenCV's own log on stderr (`[ WARN:0@0.29] global
    grfmt_png.cpp:793 ... PNG input buffer is incomplete`, `[ERROR:0@0.29] ... IHDR chunk shall be
    first`) beside the project's one `warning:` line, in training and the test phase alike."""
    from ugatit_common.images import decode_image, read_color
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    for read in (decode_image, read_color, check_train_image):
        with pytest.raises(ImageReadError):
            read(str(broken))
    err = capfd.readouterr().err
    assert "[ WARN" not in err and "[ERROR" not in err, err


def test_a_header_declaring_too_many_pixels_is_said_as_such(tmp_path):
    """A PNG whose header declares 60000 x 60000 (a damaged size field): OpenCV raises instead of
    returning None; each reader says it in words (not OpenCV's assertion text), naming the file."""
    import struct
    import zlib

    from ugatit_common.images import decode_image, read_color
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 60000, 60000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(png))
    for read in (decode_image, read_color, check_train_image):
        with pytest.raises(ImageReadError) as e:
            read(str(path))
        assert e.value.path == str(path)
        assert e.value.reason.startswith("its header declares more pixels than OpenCV decodes"), e.value.reason


def test_none_readable_names_what_was_read(tmp_path):
    """The error of a command that could read none of its inputs names them as that command calls
    them: test images (the test phases) or input images (Morph interpolate / translate)."""
    from ugatit_common.images import none_readable
    assert none_readable([]) == "no test image was found"
    assert none_readable([], "input images") == "no input image was found"
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not a picture")
    said = none_readable([str(tmp_path / "a.png"), str(tmp_path / "b.png")], "input images")
    assert said.startswith("none of the 2 input images could be read"), said


_AT_THE_FD_LIMIT = r"""
import os, resource, sys
import concurrent.futures.thread, PIL.Image, tqdm  # imported before the limit (train_image_reasons' threads)
from ugatit_common import images
path, how = sys.argv[1], sys.argv[2]
free = os.dup(0)  # the lowest free descriptor: with the soft limit there, the next open fails (EMFILE)
os.close(free)
resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    {"check": images.check_train_image, "reasons": lambda p: print(images.train_image_reasons([p, p])),
     "test": images.read_color}[how](path)
except OSError as e:
    print(type(e).__name__, e)
"""


@pytest.mark.parametrize("how", ["check", "reasons", "test"])
def test_a_file_read_at_the_open_files_limit_is_not_skipped_as_unreadable(intact, how):
    """`ulimit -n` reached while the data set is checked (or a test input read) is the machine's
    limit, not the file's fault: it was "warning: skipping unreadable image X: Too many open files"
    and training went on without X (a test run: "none of the inputs could be read"). Now the
    command stops, naming the file and the limit; a file the process may not read is still
    skipped (test_incomplete_files_are_skipped_by_the_port and the ones above)."""
    import subprocess
    proc = subprocess.run([sys.executable, "-c", _AT_THE_FD_LIMIT, intact["rgb.png"], how], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    out = proc.stdout.strip()
    assert out.startswith("OSError [Errno 24] cannot read "), (out, proc.stderr[-2000:])
    assert f"{intact['rgb.png']!r}: Too many open files: the limit on open files per process was reached " \
           "(`ulimit -n`: " in out and "not a fault of the file" in out, out


def test_a_subfolder_alone_is_no_file_without_an_extension_and_entries_are_named(tmp_path):
    """A domain folder holding only a subfolder (`old`) holds no files: its error says so, not that
    a file without an extension is there; a character device is said as a device."""
    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / "d" / "trainA"
    (folder / "old").mkdir(parents=True)
    with pytest.raises(opt.OptionError) as e:
        opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))
    assert "holds no files" in str(e.value) and "extension" not in str(e.value), e.value
    assert opt.not_a_file(os.devnull) == "not a regular file (a device)"


def test_a_data_set_folder_listed_at_the_open_files_limit_stops(tmp_path, monkeypatch):
    """Listing a domain folder failing on `ulimit -n` (EMFILE) stops with the limit named, not
    'holds no files' from a glob that swallowed the error."""
    import errno

    from ugatit_common import options as opt
    folder = tmp_path / "dataset" / "d" / "trainA"
    folder.mkdir(parents=True)
    assert cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))

    def at_the_limit(path):
        raise OSError(errno.EMFILE, "Too many open files", str(path))
    monkeypatch.setattr(opt.os, "scandir", at_the_limit)
    with pytest.raises(OSError) as e:
        opt.domain_files({"dataset": "d"}, "trainA", base=str(tmp_path))
    assert not isinstance(e.value, opt.OptionError) and "limit on open files" in str(e.value), e.value
    assert "trainA" in str(e.value), e.value


@pytest.mark.parametrize("pattern", ["photos/*.jpg", "photo?.jpg", "photo[12].jpg"])
def test_every_pattern_character_is_said_to_be_unexpanded(pattern):
    from ugatit_common.images import no_such_input
    assert "a pattern is not expanded" in no_such_input(pattern)
    assert no_such_input("photo.jpg") == "no such file or folder"
