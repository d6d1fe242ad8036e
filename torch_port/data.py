"""Input pipelines of the PyTorch port (numpy + cv2 + torch; no TensorFlow).

Train (official `ImageData.image_processing`): decode -> TF1 bilinear resize to img_size
(align_corners=False, half_pixel_centers=False) -> float32 / 127.5 - 1 -> optional augmentation
(flip left/right, bilinear resize of the *normalised* image to img_size + 30 (256) / + 15
(otherwise), random crop back to img_size).

Test (official `load_test_data`): cv2.imread(IMREAD_COLOR), BGR->RGB, cv2.resize (INTER_LINEAR,
half-pixel centres), batch axis, / 127.5 - 1.  The two resizes differ on purpose, as officially.

Augmentation, official vs here: the official draws `random.random()` in Python inside the map
function, which tf.data traces once, so one coin per graph build decides whether *every* image
is augmented (then each image gets its own random flip with p=0.5 and its own crop offsets).
Here `augment=True` means "the coin came up augment": each image is flipped with p=0.5 and
cropped at offsets uniform over 0..aug_size-img_size, drawn from a numpy Generator.
"""
from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import torch


class ImageReadError(OSError):
    """An image file that cannot be read or decoded."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.path!r}: {self.reason}")


def augment_size(img_size: int) -> int:
    """Official: img_size + 30 at 256, + 15 otherwise."""
    return img_size + (30 if img_size == 256 else 15)


def decode_image(path) -> np.ndarray:
    """Decode like TF `decode_jpeg/decode_png(channels=3)`: uint8 HWC RGB.

    Grayscale is replicated to 3 channels, alpha is dropped (not composited), 16-bit samples
    are reduced to 8 bits by keeping the high byte (v >> 8), as TF's PNG decoder does for
    dtype uint8 (checked against TF in parity_tests/test_data_pipeline.py). EXIF orientation is
    ignored, as TF does.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "no such file")
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(path, e) from e
    if buf.size == 0:
        raise ImageReadError(path, "empty file")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(buf, flags)
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


def _axis_weights(in_size: int, out_size: int):
    # TF legacy scaler: scale = in / out (float32), src = dst * scale (float32).
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - np.floor(src)).astype(np.float32)
    return lo, hi, frac


def tf1_resize_bilinear(img, out_h: int, out_w: int) -> np.ndarray:
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False) on HWC or HW data.

    Same arithmetic as TF's CPU kernel, all in float32: interpolate along x on the top and the
    bottom source rows (top_left + (top_right - top_left) * x_lerp), then along y
    (top + (bottom - top) * y_lerp).
    """
    x = np.asarray(img).astype(np.float32, copy=False)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    in_h, in_w = x.shape[:2]
    y0, y1, fy = _axis_weights(in_h, out_h)
    x0, x1, fx = _axis_weights(in_w, out_w)
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    top_rows, bot_rows = x[y0], x[y1]
    top = top_rows[:, x0] + (top_rows[:, x1] - top_rows[:, x0]) * fx
    bottom = bot_rows[:, x0] + (bot_rows[:, x1] - bot_rows[:, x0]) * fx
    out = (top + (bottom - top) * fy).astype(np.float32, copy=False)
    return out[:, :, 0] if squeeze else out


def normalise(resized_float32: np.ndarray) -> np.ndarray:
    """Official `tf.cast(img, tf.float32) / 127.5 - 1` in float32."""
    return (resized_float32.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def train_transform(img_uint8: np.ndarray, img_size: int, augment: bool, rng=None) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW in [-1, 1], as the official train pipeline.

    With `augment`: flip with p=0.5, bilinear resize to augment_size(img_size), crop back to
    img_size at offsets uniform over 0..augment_size-img_size (coin and offsets from `rng`).
    """
    img = normalise(tf1_resize_bilinear(img_uint8, img_size, img_size))
    if augment:
        if rng is None:
            rng = np.random.default_rng()
        if rng.random() < 0.5:
            img = img[:, ::-1]
        a = augment_size(img_size)
        img = tf1_resize_bilinear(img, a, a)
        oy, ox = rng.integers(0, a - img_size + 1, size=2)
        img = img[oy:oy + img_size, ox:ox + img_size]
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def load_test_array(path, img_size: int) -> np.ndarray:
    """Official `load_test_data`: NHWC float64 in [-1, 1] (OpenCV read and resize)."""
    path = os.fspath(path)
    img = cv2.imread(path, flags=cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(path, "cv2.imread could not read it")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, dsize=(img_size, img_size))
    return np.expand_dims(img, axis=0) / 127.5 - 1


def test_image(path, img_size: int) -> torch.Tensor:
    """The official test loader as a float32 NCHW tensor (float32 cast as at feed time)."""
    arr = load_test_array(path, img_size).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Train images of one domain. Unreadable files are skipped with a warning naming each;
    if none is readable, ImageReadError names the folder(s).

    Item i is deterministic given (seed, i, epoch) - `set_epoch` changes the augmentation draws.
    """

    def __init__(self, files, img_size: int, augment: bool, seed: int = 0):
        self.img_size = int(img_size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        files = [os.fspath(f) for f in files]
        good = []
        for f in files:
            try:
                decode_image(f)
            except ImageReadError as e:
                warnings.warn(f"skipping unreadable image {f!r}: {e.reason}", RuntimeWarning, stacklevel=2)
                continue
            good.append(f)
        if not good:
            folders = sorted({os.path.dirname(os.path.abspath(f)) for f in files}) or ["<no files given>"]
            raise ImageReadError(", ".join(folders), f"no readable image among {len(files)} file(s)")
        self.files = good

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        img = decode_image(self.files[i])
        return torch.from_numpy(train_transform(img, self.img_size, self.augment, rng))


def infinite_loader(dataset, batch_size: int, seed: int = 0, num_workers: int = 0, rank: int = 0,
                    world_size: int = 1):
    """Yield float32 NCHW batches forever, like `shuffle_and_repeat(n)` + `batch(drop_remainder)`.

    Each pass reshuffles all indices with a seed-derived permutation (same on every rank), then
    rank r takes every world_size-th index starting at r; incomplete batches are dropped.
    """
    n = len(dataset)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    per_rank = len(range(rank, n, world_size))
    if per_rank < batch_size:
        raise ValueError(f"rank {rank} has {per_rank} image(s) per pass, fewer than batch_size={batch_size}")
    epoch = 0
    while True:
        order = np.random.default_rng([int(seed), epoch]).permutation(n)
        shard = order[rank::world_size].tolist()
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard), batch_size=batch_size, shuffle=False,
            drop_last=True, num_workers=num_workers, persistent_workers=False)
        for batch in loader:
            yield batch
        epoch += 1
