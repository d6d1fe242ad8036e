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

import errno
import gc
import os
import sys
import warnings

import cv2
import numpy as np
import torch


# ImageReadError, decode_image and the train-image check live in ugatit_common.images (torch-free,
# shared with tf_reference, so both frameworks skip exactly the same files)
from ugatit_common.machine_limits import machine_limit, too_many_open_files  # noqa: E402
from ugatit_common.images import ImageReadError, check_train_image, decode_image, read_color, train_image_reasons  # noqa: E402,F401


def augment_size(img_size: int) -> int:
    """Official: img_size + 30 at 256, + 15 otherwise."""
    return img_size + (30 if img_size == 256 else 15)


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
    img = read_color(path)  # = cv2.imread(path, IMREAD_COLOR), also for names that are not UTF-8
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
        for f, reason in zip(files, train_image_reasons(files)):  # the files tf_reference uses (ugatit_common.images)
            if reason is not None:
                warnings.warn(f"skipping unreadable image {f!r}: {reason}", RuntimeWarning, stacklevel=2)
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
        return self.item(i, self.epoch)

    def item(self, i, epoch):
        """Image i as seen in pass `epoch` (its augmentation draws depend on (seed, epoch, i))."""
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        img = decode_image(self.files[i])
        return torch.from_numpy(train_transform(img, self.img_size, self.augment, rng))


def infinite_loader(dataset, batch_size: int, seed: int = 0, num_workers: int = 0, rank: int = 0,
                    world_size: int = 1, start: int = 0):
    """Yield float32 NCHW batches forever, like TF's `shuffle_and_repeat(n)` + `batch(drop_remainder)`.

    The item stream is pass 0's permutation, then pass 1's, ... (seed-derived, the same on every
    rank); it is cut into global batches of batch_size * world_size consecutive items, so a batch
    may span two passes (as TF's does: nothing is dropped, and --batch_size may exceed the image
    count); rank r takes items r, r + world_size, ... of each global batch. Item i of pass p is
    `dataset.item(i, p)` (its augmentation is a function of (seed, p, i)). `start`: global
    batches already handed out (the resume position). One DataLoader serves every pass, so its
    `num_workers` processes start once, not once per pass over the data.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if len(dataset) < 1:
        raise ValueError("the dataset is empty")
    batches = _PassBatches(len(dataset), batch_size, seed, rank, world_size, start)
    loader = torch.utils.data.DataLoader(
        _PassItems(dataset), batch_sampler=batches, num_workers=num_workers, collate_fn=_collate,
        generator=torch.Generator().manual_seed(int(seed) * 1000003 + int(start)))  # not the global RNG
    hook = None
    try:
        for batch in loader:
            if isinstance(batch, _ItemFailed):
                raise batch.error  # the worker's own error (an image deleted mid-run: one line, exit 2)
            yield batch
    except (OSError, RuntimeError) as e:
        # `ulimit -n` met by the workers' pipes, semaphores or shared memory (a bare [Errno 24], or
        # torch's RuntimeError); an image read that met it already names the file and the limit
        code = machine_limit(e)
        if code not in (errno.EMFILE, errno.ENFILE) or "limit on open files" in str(e):
            raise
        hook, sys.unraisablehook = sys.unraisablehook, _without_loader_teardown(sys.unraisablehook)
    try:  # the half-built loader goes here: its __del__ fails ("Exception ignored in ...") on what it lacks
        gc.collect()
    finally:
        sys.unraisablehook = hook
    raise too_many_open_files(f"the data loader's {num_workers} worker processes" if num_workers else "the data loader",
                              code=code)


def _without_loader_teardown(hook):
    """`hook` (sys.unraisablehook) less the DataLoader iterator's failing __del__ after its start
    failed: a traceback block after the one error line that says why."""
    def quiet(u):
        if "DataLoaderIter" not in getattr(u.object, "__qualname__", ""):
            hook(u)
    return quiet


class _PassBatches:
    """infinite_loader's batch sampler: this rank's batches of (pass, index) pairs, forever."""

    def __init__(self, n, batch_size, seed, rank, world_size, start):
        self.n, self.batch_size, self.seed = n, batch_size, int(seed)
        self.rank, self.world_size, self.start = rank, world_size, int(start)

    def __iter__(self):
        n, global_bs = self.n, self.batch_size * self.world_size
        item = self.start * global_bs  # items of the global stream already consumed
        perms = {}

        def perm(p):
            if p not in perms:
                if len(perms) > 4:
                    perms.clear()
                perms[p] = np.random.default_rng([self.seed, p]).permutation(n)
            return perms[p]

        while True:
            p, off = divmod(item, n)
            nb = max(1, -(-(n - off) // global_bs))  # the global batches that start in pass p
            need = nb * global_bs
            pairs, q, o = [], p, off
            while len(pairs) < need:
                take = perm(q)[o:o + need - len(pairs)]
                pairs += [(q, int(i)) for i in take]
                q, o = q + 1, 0
            for g in range(nb):
                yield pairs[g * global_bs + self.rank:(g + 1) * global_bs:self.world_size]
            item += need


class _ItemFailed:
    """An item that could not be read, carried as data: a DataLoader worker's exception reaches the
    main process wrapped in a RuntimeError with a traceback as its text (and an ImageReadError,
    whose constructor takes two arguments, cannot even be rebuilt), so the error is returned
    instead, pickled whole, and raised again in the main process - with or without workers."""

    def __init__(self, error: OSError):
        self.error = error


def _collate(items):
    failed = [x for x in items if isinstance(x, _ItemFailed)]
    return failed[0] if failed else torch.utils.data.default_collate(items)


class _PassItems(torch.utils.data.Dataset):
    """(pass, index) -> dataset.item(index, pass) (or set_epoch + [index] for other datasets)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, pair):
        p, i = pair
        try:
            if hasattr(self.dataset, "item"):
                return self.dataset.item(i, p)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(p)
            return self.dataset[i]
        except OSError as e:  # ImageReadError included: an image gone or damaged since the start-up check
            return _ItemFailed(e)
