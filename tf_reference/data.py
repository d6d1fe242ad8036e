"""The official U-GAT-IT input pipelines in TF 2.x `tf.compat.v1` graph mode.

Train (official `ImageData.image_processing` + `shuffle_and_repeat` + `map_and_batch`):
read_file -> decode_jpeg(channels) (also decodes PNG) -> resize_images bilinear (TF1:
align_corners=False, half_pixel_centers=False) -> float32 / 127.5 - 1 -> optional augmentation.

Augmentation, as the official code really behaves: `p = random.random()` runs in *Python* inside
the function handed to `Dataset.map`; tf.data traces that function once when the graph is built,
so the coin is tossed once per graph build, not per image. With p > 0.5 (probability 0.5) every
image of the run goes through `augmentation` (a per-image random flip with p=0.5, resize to
img_size + 30 at 256 / + 15 otherwise, per-image random crop back to img_size); otherwise no
image is ever augmented. The flip and the crop get the same op seed (official), so their random
streams start from the same Philox key.

Test (official `load_test_data`): OpenCV read and resize, float64 NHWC (cast to float32 at feed).
"""
from __future__ import annotations

import os
import random

import cv2
import numpy as np
import tensorflow as tf

from ugatit_common.images import read_color

v1 = tf.compat.v1


def augment_size(img_size: int) -> int:
    return img_size + (30 if img_size == 256 else 15)


def augmentation(image, aug_size: int, seed: int):
    """Official `augmentation`: random flip, resize to aug_size, random crop to the input shape."""
    ori_shape = tf.shape(image)
    image = v1.image.random_flip_left_right(image, seed=seed)
    image = v1.image.resize_images(image, [aug_size, aug_size])
    return v1.random_crop(image, ori_shape, seed=seed)


def image_processing(filename_tensor, img_size: int, img_ch: int = 3, augment_flag: bool = False,
                     py_random=None, force_augment=None):
    """One file name (string tensor) -> float32 [img_size, img_size, img_ch] in [-1, 1].

    `py_random` is the Python RNG the official draws from (module `random` by default);
    `force_augment` (True/False) overrides its coin, for tests.
    """
    rnd = random if py_random is None else py_random
    x = v1.read_file(filename_tensor)
    x = v1.image.decode_jpeg(x, channels=img_ch)
    img = v1.image.resize_images(x, [img_size, img_size])  # bilinear, TF1 semantics
    img = tf.cast(img, tf.float32) / 127.5 - 1
    if augment_flag:
        # Build-time coin: decides for the whole graph (see module docstring).
        p = rnd.random()
        apply = (p > 0.5) if force_augment is None else bool(force_augment)
        if apply:
            seed = rnd.randint(0, 2 ** 31 - 1)
            img = augmentation(img, augment_size(img_size), seed)
    return img


def train_iterator(files, img_size: int, img_ch: int, augment_flag: bool, batch_size: int,
                   dataset_num: int, seed=None, force_augment=None):
    """The official train pipeline; returns `get_next()` (float32 NHWC batches, forever).

    Build it inside the graph you will run. `seed` (optional) seeds the shuffle and the Python
    RNG that tosses the official build-time coin and draws the augmentation op seed.
    """
    py_random = random if seed is None else random.Random(seed)
    # the names' bytes (os.fsencode): a name that is not UTF-8 cannot become a TF string from str;
    # no files at all (the graph of a .meta written without a data set, tf_reference.meta_graph):
    # an empty string vector (from_tensor_slices would take [] for floats)
    names = [os.fsencode(f) for f in files]
    ds = tf.data.Dataset.from_tensor_slices(names if names else tf.constant([], tf.string))
    ds = ds.shuffle(int(dataset_num), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda f: image_processing(f, img_size, img_ch, augment_flag, py_random, force_augment),
                num_parallel_calls=tf.data.experimental.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(1)
    return v1.data.make_one_shot_iterator(ds).get_next()


def load_test_image(path, img_size: int) -> np.ndarray:
    """Official `load_test_data`: cv2 IMREAD_COLOR, BGR->RGB, cv2.resize (INTER_LINEAR),
    batch axis, / 127.5 - 1; float64 NHWC as the official returns."""
    img = read_color(path)  # = cv2.imread(path, IMREAD_COLOR), also for names that are not UTF-8 (an OSError)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, dsize=(img_size, img_size))
    return np.expand_dims(img, axis=0) / 127.5 - 1
