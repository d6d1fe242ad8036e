"""Reading training images, the same way for tf_reference, torch_port and morph (numpy + cv2).

A training image is used when the official TF pipeline could decode it (`decode_jpeg(channels=3)`
decodes JPEG, PNG and GIF; it fails mid-run on BMP and TIFF and returns a 4-D batch for WEBP) and
the whole file decodes as TF decodes it (a truncated JPEG or PNG, a JPEG whose rest is zeros or
junk - OpenCV fills it in, TF stops -, a PNG with a bad IEND CRC, a GIF whose frame is not its
whole screen - TF decodes the frame, OpenCV the screen -: caught here, not mid-run). Others are
skipped with one warning each, naming the file (a header OpenCV refuses to decode too); none
readable is an error naming the folder.
"""
from __future__ import annotations

import contextlib
import os
import threading

import cv2
import numpy as np

from .cores import usable_cores
from .options import other_torchrun_rank
from .gif_decode import tf_decode_of_frames
from .machine_limits import MACHINE_LIMITS, limit_text

# magic bytes of the formats the official train pipeline (tf.image.decode_jpeg) decodes to 3-D
TRAIN_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


class ImageReadError(OSError):
    """An image file that cannot be read or decoded."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.path!r}: {self.reason}")

    def __reduce__(self):  # pickled whole (e.g. from a DataLoader worker): rebuilt from (path, reason)
        return type(self), (self.path, self.reason)


def read_error(path: str, e: OSError) -> OSError:
    """`e` (from opening or reading `path`) as ImageReadError, the file's fault, except a limit
    of the machine (machine_limits.MACHINE_LIMITS: skipping the file for it would train on part of
    the data set, or call every input of a test run unreadable): then an OSError saying so, which
    stops the command."""
    if e.errno not in MACHINE_LIMITS:
        return ImageReadError(path, e.strerror or e)
    return OSError(e.errno, f"cannot read {path!r}: {e.strerror}: {limit_text(e.errno)}, not a "
                            f"fault of the file; raise the limit, or run fewer things at once")


def _file_bytes(path: str) -> np.ndarray:
    """The file's bytes (uint8), read by their own name (any bytes: OpenCV is never given the
    path); ImageReadError for a missing, unreadable or empty file (read_error)."""
    if not os.path.isfile(path):  # a device or a FIFO is there, but no file to read
        raise ImageReadError(path, "not a regular file" if os.path.exists(path) else "no such file")
    try:  # not np.fromfile: it opens a second descriptor and leaks the first when that fails (EMFILE)
        with open(path, "rb") as fh:
            buf = np.frombuffer(bytearray(fh.read()), dtype=np.uint8)
    except OSError as e:
        raise read_error(path, e) from e
    if buf.size == 0:
        raise ImageReadError(path, "empty file")
    return buf


_SILENCE_LOCK = threading.Lock()
_silenced = {"threads": 0, "level": None}  # threads decoding now; the level to put back after the last


@contextlib.contextmanager
def _opencv_silent():
    """OpenCV's log level (one for the process) silent while any thread decodes, put back when the
    last one ends: a thread that put back the level it found while another decoded (the --batch
    test phase's pool) let that one's log lines through, then left OpenCV silent for good."""
    with _SILENCE_LOCK:
        if _silenced["threads"] == 0:
            _silenced["level"] = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _silenced["threads"] += 1
    try:
        yield
    finally:
        with _SILENCE_LOCK:
            _silenced["threads"] -= 1
            if _silenced["threads"] == 0:
                cv2.utils.logging.setLogLevel(_silenced["level"])


def _imdecode(buf: np.ndarray, flags: int, path: str):
    """`cv2.imdecode` without OpenCV's own log lines on stderr (`[ WARN:0@0.29] ... PNG input
    buffer is incomplete`, `[ERROR:0@0.29] ...`) for a damaged file: the caller says it in its one
    `warning:` / `error:` line. The log level is put back afterwards. None when OpenCV cannot
    decode it; ImageReadError naming `path` where OpenCV raises instead (cv2.error: a header that
    declares more than CV_IO_MAX_IMAGE_PIXELS, 2^30 by default, e.g. a damaged size field)."""
    try:
        with _opencv_silent():
            return cv2.imdecode(buf, flags)
    except cv2.error as e:
        detail = str(e).strip().splitlines()[-1].rsplit("error: ", 1)[-1].replace("(-215:Assertion failed) ", "")
        if "CV_IO_MAX_IMAGE_PIXELS" in detail:
            raise ImageReadError(path, "its header declares more pixels than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS): "
                                       "a damaged size field, or an image far too large") from None
        raise ImageReadError(path, f"not a decodable image (OpenCV: {detail})") from None


def decode_image(path) -> np.ndarray:
    """Decode like TF `decode_jpeg/decode_png(channels=3)`: uint8 HWC RGB.

    Grayscale is replicated to 3 channels, alpha is dropped (not composited), 16-bit samples
    are reduced to 8 bits by keeping the high byte (v >> 8), as TF's PNG decoder does for
    dtype uint8 (checked against TF in parity_tests/test_data_pipeline.py). EXIF orientation is
    ignored, as TF does. CMYK JPEGs get TF's CMYK -> RGB conversion (`_cmyk_jpeg_as_tf`).
    """
    path = os.fspath(path)
    return _decode(_file_bytes(path), path)


def _decode(buf: np.ndarray, path: str, rgb: bool = True) -> np.ndarray:
    """`decode_image` of the file's bytes `buf` (`path` names it in errors); `rgb` False: the same
    checks, the picture left as OpenCV's BGR (the training-image check, which keeps no picture, saves
    the copy: about a third of a 12-megapixel photo's check)."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    img = _imdecode(buf, flags, path)
    if img is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    if buf[:3].tobytes() == b"\xff\xd8\xff":
        cmyk = _cmyk_jpeg_as_tf(buf, path)
        if cmyk is not None:
            return cmyk
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(path, f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1]) if rgb else img  # BGR -> RGB


def _cmyk_jpeg_as_tf(buf: np.ndarray, path: str):
    """A 4-component (CMYK / YCCK) JPEG as TF's decode_jpeg(channels=3) makes it RGB, else None.

    OpenCV converts CMYK as if every file were Adobe's inverted CMYK and with an approximation
    (k - ((255 - c) * k >> 8)): 1-2 levels off TF on Adobe files, the colours inverted on a file
    without the Adobe marker. TF (jpeg_mem.cc) takes libjpeg's CMYK samples and computes, in
    integers, r = k * c / 255 with the Adobe marker (inverted samples), else
    (255 - k) * (255 - c) / 255. Pillow gives the samples with the inverted convention always
    (accurate IDCT, as OpenCV's); checked against TF in parity_tests/test_image_inputs.py."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            if im.mode != "CMYK":
                return None
            adobe = "adobe" in im.info
            a = np.asarray(im).astype(np.int32)  # Pillow's samples: 255 - libjpeg's (Adobe convention)
    except Exception as e:  # noqa: BLE001 - OpenCV decoded it; Pillow cannot
        raise ImageReadError(path, f"a CMYK JPEG that cannot be decoded ({type(e).__name__})") from e
    if a.ndim != 3 or a.shape[2] != 4:
        raise ImageReadError(path, f"a CMYK JPEG decoded to shape {a.shape}")
    c, k = a[:, :, :3], a[:, :, 3:]
    rgb = (255 - c) * (255 - k) // 255 if adobe else c * k // 255
    return np.ascontiguousarray(rgb.astype(np.uint8))


def read_color(path) -> np.ndarray:
    """`cv2.imread(path, cv2.IMREAD_COLOR)`, the official test loader's read (BGR uint8, EXIF
    orientation applied, grey / alpha / 16-bit made 8-bit colour), decoded from the file's bytes
    (`np.fromfile` + `cv2.imdecode`, the same decoder and conversions): OpenCV's imread crashes
    the process (a segmentation fault) on a path that is not valid UTF-8."""
    path = os.fspath(path)
    img = _imdecode(_file_bytes(path), cv2.IMREAD_COLOR, path)
    if img is None:
        raise ImageReadError(path, "not a decodable image (corrupt, or a format OpenCV cannot read)")
    return img


def no_such_input(path) -> str:
    """Why `--input PATH` names nothing: no such file or folder, and for a pattern (`photos/*.jpg`
    quoted, or typed where no shell expands it, as Windows' cmd) that patterns are not expanded."""
    path = os.fspath(path)
    if any(c in path for c in "*?["):
        return ("no such file or folder (a pattern is not expanded here: give the folder, whose "
                "images are all read, or one file)")
    return "no such file or folder"


def none_readable(files, what: str = "test images") -> str:
    """The error line of a test phase (or Morph interpolate / translate: `what` "input images")
    that could read none of `files`: the file and why when there is one, else how many and the
    first one's reason."""
    files = list(files)
    if not files:
        return f"no {what[:-1]} was found"
    try:
        read_color(files[0])
        reason = "not readable"
    except ImageReadError as e:
        reason = e.reason
    if len(files) == 1:
        return f"cannot read image {os.fspath(files[0])!r}: {reason}"
    return (f"none of the {len(files)} {what} could be read (each is named in a warning above; the first, "
            f"{os.fspath(files[0])!r}: {reason})")


def check_train_image(path) -> None:
    """Raise ImageReadError unless `path` is a JPEG, PNG or GIF that decodes completely."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise read_error(path, e) from e
    if not head:
        raise ImageReadError(path, "empty file")
    if not any(head.startswith(m) for m, _ in TRAIN_FORMATS):
        raise ImageReadError(path, "not a JPEG, PNG or GIF (the formats the official TF pipeline decodes)")
    buf = _file_bytes(path)  # read once for the decode and every check below
    raw = buf.tobytes()
    if head.startswith(b"GIF8"):  # before OpenCV decodes a damaged header's screen (up to 2^30 pixels)
        why = gif_screen_mismatch(raw)
        if why:
            raise ImageReadError(path, f"a GIF whose {why}: the official TF pipeline decodes the frame, OpenCV "
                                       f"the screen - the two frameworks would train on different pictures")
    try:
        _decode(buf, path, rgb=False)
    except ImageReadError as e:
        if head.startswith(b"GIF8"):  # what the official pipeline would have done with it, in the same line
            raise ImageReadError(path, f"{e.reason}; {_tf_on_damaged_gif(raw)}") from None
        raise
    if head.startswith(b"\xff\xd8\xff"):
        why = jpeg_end_missing(raw)
        if why:
            raise ImageReadError(path, f"an incomplete JPEG ({why}): OpenCV decodes it (the rest as noise or grey), "
                                       f"the official TF pipeline stops on it mid-run")
    elif head.startswith(b"\x89PNG"):
        why = png_damaged(raw)
        if why:
            raise ImageReadError(path, f"a damaged PNG ({why}): the official TF pipeline stops on it mid-run")
    if head.startswith(b"GIF8"):
        frames = gif_frames(path, raw)
        if frames > 1:  # OpenCV reads the first frame; TF's decode_jpeg takes single-frame GIFs only
            whole, why, _ = tf_decode_of_frames(raw)
            if whole > 1 and why is None:
                raise ImageReadError(path, f"an animated GIF ({frames} frames): the official TF pipeline stops on it "
                                           f"mid-run (decode_jpeg takes single-frame GIFs only)")
            raise ImageReadError(path, f"a damaged GIF (Pillow counts {frames} frames); {_tf_on_damaged_gif(raw)}")


def _tf_on_damaged_gif(raw: bytes) -> str:
    """What the official pipeline does with a damaged GIF (ugatit_common.gif_decode: TF drops the
    frames from the damaged one on), and why it is skipped all the same when TF would train on it:
    a training image must decode whole (the rule of both frameworks, README "Training images")."""
    whole, why, does = tf_decode_of_frames(raw)
    if does.startswith("decodes"):
        return (f"the official TF pipeline would train on its first frame only (giflib reads {whole} frame whole, "
                f"then {why}); skipped, as a training image must decode whole")
    return f"the official TF pipeline {does}" + (f" (giflib: {why})" if why and whole else "")


def jpeg_end_missing(buf: bytes) -> str | None:
    """Why libjpeg, reading `buf` as TF's decode_jpeg makes it read, would stop before the EOI
    marker, or None when it reaches it.

    TF gives libjpeg the file's bytes and stops with "Invalid JPEG data" when the decoder asks for
    more (it inserts no fake EOI unless try_recover_truncated) or meets a marker it does not know;
    OpenCV's reader inserts an EOI and skips much more. So a JPEG cut short and then filled (a
    partial download in a preallocated file: zeros or other bytes in place of the rest) decodes
    in OpenCV and stops TF mid-run. This walks the markers as libjpeg reads them: segments by
    their length; a scan's entropy-coded data up to the next marker (0xFF followed by neither
    0x00, a restart marker nor a fill 0xFF; with a restart interval, libjpeg's resync also skips
    a non-marker code below 0xC0); garbage between markers skipped; markers libjpeg does not
    know (0xC8, 0xDE, 0xDF, 0xF0-0xFD, codes below 0xC0 outside a resync) are an error; until EOI.
    Segment contents are not checked (OpenCV's decode, which runs first, checks those)."""
    n, i, restart = len(buf), 2, 0  # after SOI
    while True:
        j = buf.find(b"\xff", i)  # libjpeg skips bytes that are not a marker (a warning, not an error)
        while 0 <= j < n - 1 and buf[j + 1] == 0xFF:  # fill bytes before a marker
            j += 1
        if j < 0 or j + 1 >= n:
            return "the data ends before its end-of-image marker"
        m, i = buf[j + 1], j + 2
        if m == 0xD9:  # EOI
            return None
        if 0xD0 <= m <= 0xD7 or m in (0x00, 0x01):  # RSTn, TEM: no length, skipped; 0xFF 0x00 in garbage
            continue
        if not (0xC0 <= m <= 0xFE) or m in (0xC8, 0xD8, 0xDE, 0xDF) or 0xF0 <= m <= 0xFD:
            return f"a marker 0x{m:02X} that libjpeg does not accept there"
        if i + 2 > n:
            return "the data ends inside a marker segment"
        length = (buf[i] << 8) | buf[i + 1]
        if m == 0xDD and length >= 4 and i + 4 <= n:  # DRI: the restart interval of the scans that follow
            restart = (buf[i + 2] << 8) | buf[i + 3]
        i += length
        if length < 2 or i > n:
            return "the data ends inside a marker segment"
        if m == 0xDA:  # SOS: the entropy-coded data follows, up to the next marker
            while True:
                j = buf.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return "the data ends inside a scan, before its end-of-image marker"
                nxt = buf[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or (restart and 0x01 < nxt < 0xC0):
                    i = j + 2  # a stuffed 0xFF or a restart marker (or a code the resync discards): still the scan
                    continue
                i = j  # a fill 0xFF or the marker that ends the scan
                break


def png_damaged(buf: bytes) -> str | None:
    """Why libpng (TF's PNG decoder) would stop on `buf`, of what OpenCV lets through: a critical
    chunk (IHDR, PLTE, IDAT, IEND: upper-case first letter) whose CRC does not match, measured on
    IEND, or the data ending before IEND. None when the chunks up to IEND are whole."""
    import zlib
    n, i = len(buf), 8
    while True:
        if i + 12 > n:
            return "the data ends before its IEND chunk"
        length = int.from_bytes(buf[i:i + 4], "big")
        kind = buf[i + 4:i + 8]
        end = i + 12 + length
        if end > n:
            return f"the data ends inside its {kind.decode('latin-1')!r} chunk"
        if 65 <= kind[0] <= 90 and zlib.crc32(buf[i + 4:end - 4]) != int.from_bytes(buf[end - 4:end], "big"):
            return f"a CRC error in its {kind.decode('latin-1')!r} chunk"
        if kind == b"IEND":
            return None
        i = end


def gif_screen_mismatch(buf: bytes) -> str | None:
    """Why the first frame of the GIF `buf` is not its whole logical screen (the frame's size and
    place vs the screen's, from the header and the first image descriptor), or None when it is, or
    when the blocks before it cannot be walked (the decoders judge such a file). TF's decoder
    gives the frame itself (its size, its pixels), OpenCV's the screen with the frame drawn at its
    place (or nothing when it does not fit): the same pictures only when the two coincide. A
    damaged screen size (65535 x 4095) made OpenCV decode a 268-megapixel canvas and Pillow refuse
    to count the frames (a decompression bomb), where TF decodes the frame."""
    if len(buf) < 13:
        return None
    sw, sh, packed = int.from_bytes(buf[6:8], "little"), int.from_bytes(buf[8:10], "little"), buf[10]
    i = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)  # after the global colour table
    while i < len(buf):
        kind = buf[i]
        if kind == 0x2C:  # image descriptor: left, top, width, height (little-endian)
            if i + 9 > len(buf):
                return None
            left, top, w, h = (int.from_bytes(buf[i + k:i + k + 2], "little") for k in (1, 3, 5, 7))
            if (left, top, w, h) == (0, 0, sw, sh):
                return None
            return f"first frame ({w}x{h} at {left},{top}) is not its whole {sw}x{sh} logical screen"
        if kind != 0x21 or i + 2 > len(buf):  # not an extension (a trailer, or damage): no frame found here
            return None
        i += 2  # introducer and label, then the data sub-blocks up to an empty one
        while i < len(buf) and buf[i]:
            i += buf[i] + 1
        i += 1
    return None


def gif_frames(path, raw: bytes | None = None) -> int:
    """How many frames the GIF at `path` holds (Pillow, from the file's bytes - `raw` when given
    -: any file name).
    Pillow's own DecompressionBombWarning (a picture over 89 megapixels, which OpenCV and TF
    decode) is not passed on: it names no file, and counting frames is not decoding for use."""
    import io
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(_file_bytes(path).tobytes() if raw is None else raw)) as im:
                return int(getattr(im, "n_frames", 1))
    except Exception as e:  # noqa: BLE001 - OpenCV decoded it; Pillow cannot: a damaged GIF
        raise ImageReadError(path, f"a GIF whose frames cannot be counted ({type(e).__name__})") from e


CHECK_THREADS = 8  # at most, and at most one per core: OpenCV decodes without holding Python's GIL


def _reason(path) -> str | None:
    try:
        check_train_image(path)
    except ImageReadError as e:
        return e.reason
    return None


def train_image_reasons(files, desc: str = "checking training images") -> list[str | None]:
    """`check_train_image` of every file: why each one is unusable, or None, in the files' order.

    A training run checks its whole data set before the first step, which takes a while for large
    pictures (~0.2 s per 12-megapixel photo on one core), so the files are decoded on several
    threads, with a progress bar on a terminal once it takes over a second. The settings the
    check changes and puts back for each file (OpenCV's log level, the warnings filter for
    Pillow's DecompressionBombWarning) are set here once for all threads, so no thread restores
    them under another; and put back only after the threads have ended (on Ctrl-C too: a check
    still in flight restores, when it ends, the filters it found)."""
    import sys
    import warnings

    files = [os.fspath(f) for f in files]
    threads = min(CHECK_THREADS, usable_cores(), len(files))
    if threads <= 1:
        return [_reason(f) for f in files]
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image
    from tqdm import tqdm
    level = cv2.utils.logging.getLogLevel()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="image-check")
    bar = tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, delay=1.0, leave=False,
               disable=not sys.stderr.isatty() or other_torchrun_rank())  # torchrun: rank 0's bar alone
    with warnings.catch_warnings():  # outside the try: exited after the pool's shutdown below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            reasons = []
            for reason in pool.map(_reason, files):
                reasons.append(reason)
                bar.update(1)
            return reasons
        finally:  # Ctrl-C: the files not started are dropped, not waited for
            pool.shutdown(wait=True, cancel_futures=True)  # (those in flight finish: a fraction of a second)
            cv2.utils.logging.setLogLevel(level)
            bar.close()


def readable_train_images(files, warn) -> list[str]:
    """The files that pass `check_train_image`; `warn(message)` once per skipped file, in order."""
    good = []
    for f, reason in zip(files, train_image_reasons(files)):
        if reason is not None:
            warn(f"skipping unreadable image {os.fspath(f)!r}: {reason}")
            continue
        good.append(os.fspath(f))
    return good
