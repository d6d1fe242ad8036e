"""Reading training images, the same way for tf_reference, torch_port and morph (numpy + cv2).

A training image is used when the official TF pipeline could decode it (`decode_jpeg(channels=3)`
decodes JPEG, PNG and GIF; it fails mid-run on BMP and TIFF and returns a 4-D batch for WEBP) and
the whole file decodes (a truncated JPEG or PNG is caught here, not mid-run). Others are skipped
with one warning each, naming the file; none readable is an error naming the folder.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

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


def _file_bytes(path: str) -> np.ndarray:
    """The file's bytes (uint8), read by their own name (any bytes: OpenCV is never given the
    path); ImageReadError for a missing, unreadable or empty file."""
    if not os.path.isfile(path):
        raise ImageReadError(path, "no such file")
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(path, e.strerror or e) from e
    if buf.size == 0:
        raise ImageReadError(path, "empty file")
    return buf


def decode_image(path) -> np.ndarray:
    """Decode like TF `decode_jpeg/decode_png(channels=3)`: uint8 HWC RGB.

    Grayscale is replicated to 3 channels, alpha is dropped (not composited), 16-bit samples
    are reduced to 8 bits by keeping the high byte (v >> 8), as TF's PNG decoder does for
    dtype uint8 (checked against TF in parity_tests/test_data_pipeline.py). EXIF orientation is
    ignored, as TF does.
    """
    path = os.fspath(path)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(_file_bytes(path), flags)
    if img is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(path, f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def read_color(path) -> np.ndarray:
    """`cv2.imread(path, cv2.IMREAD_COLOR)`, the official test loader's read (BGR uint8, EXIF
    orientation applied, grey / alpha / 16-bit made 8-bit colour), decoded from the file's bytes
    (`np.fromfile` + `cv2.imdecode`, the same decoder and conversions): OpenCV's imread crashes
    the process (a segmentation fault) on a path that is not valid UTF-8."""
    path = os.fspath(path)
    img = cv2.imdecode(_file_bytes(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(path, "not a decodable image (corrupt, or a format OpenCV cannot read)")
    return img


def none_readable(files) -> str:
    """The error line of a test phase that could read none of `files`: the file and why when
    there is one, else how many and the first one's reason."""
    files = list(files)
    if not files:
        return "no test image was found"
    try:
        read_color(files[0])
        reason = "not readable"
    except ImageReadError as e:
        reason = e.reason
    if len(files) == 1:
        return f"cannot read image {os.fspath(files[0])!r}: {reason}"
    return (f"none of the {len(files)} test images could be read (each is named in a warning above; the first, "
            f"{os.fspath(files[0])!r}: {reason})")


def check_train_image(path) -> None:
    """Raise ImageReadError unless `path` is a JPEG, PNG or GIF that decodes completely."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise ImageReadError(path, e.strerror or e) from e
    if not head:
        raise ImageReadError(path, "empty file")
    if not any(head.startswith(m) for m, _ in TRAIN_FORMATS):
        raise ImageReadError(path, "not a JPEG, PNG or GIF (the formats the official TF pipeline decodes)")
    decode_image(path)
    if head.startswith(b"GIF8"):
        frames = gif_frames(path)
        if frames > 1:  # OpenCV reads the first frame; TF's decode_jpeg stops the whole run on it
            raise ImageReadError(path, f"an animated GIF ({frames} frames): the official TF pipeline stops on it "
                                       f"mid-run (decode_jpeg takes single-frame GIFs only)")


def gif_frames(path) -> int:
    """How many frames the GIF at `path` holds (Pillow, from the file's bytes: any file name)."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(_file_bytes(path).tobytes())) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception as e:  # noqa: BLE001 - OpenCV decoded it; Pillow cannot: a damaged GIF
        raise ImageReadError(path, f"a GIF whose frames cannot be counted ({type(e).__name__})") from e


def readable_train_images(files, warn) -> list[str]:
    """The files that pass `check_train_image`; `warn(message)` once per skipped file."""
    good = []
    for f in files:
        try:
            check_train_image(f)
        except ImageReadError as e:
            warn(f"skipping unreadable image {os.fspath(f)!r}: {e.reason}")
            continue
        good.append(os.fspath(f))
    return good
