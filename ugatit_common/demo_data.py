"""A small procedural two-domain image set in the official layout (numpy + cv2; no downloads).

Domain A: soft round blobs and circles on warm (red/orange/yellow) gradients.
Domain B: angular shapes (triangles, rectangles) and stripes on cool (blue/cyan/green) gradients.

Every image is a pure function of (seed, domain, split, index, size); files are written
atomically and existing ones are left alone, so re-running is cheap and idempotent.

    python -m ugatit_common.demo_data --root . --name demo --size 64
"""
from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

from .atomic import write_bytes_atomic

_SPLITS = (("trainA", "A", "train"), ("trainB", "B", "train"), ("testA", "A", "test"), ("testB", "B", "test"))


def _gradient(rng, size, lo_rgb, hi_rgb):
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    c0 = np.asarray(lo_rgb, np.float64) + rng.uniform(-20, 20, 3)
    c1 = np.asarray(hi_rgb, np.float64) + rng.uniform(-20, 20, 3)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _image_a(rng, size):
    """Warm gradient with soft blobs and a few circle outlines (RGB float)."""
    img = _gradient(rng, size, (200, 60, 30), (250, 200, 80))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        r = rng.uniform(0.08, 0.25) * size
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        col = rng.uniform([200, 80, 60], [255, 180, 140])
        img = img * (1 - w) + col * w
    canvas = np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1].copy()  # to BGR for cv2 drawing
    for _ in range(rng.integers(1, 3)):
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(max(2, size // 10), max(3, size // 3)))
        col = tuple(int(v) for v in rng.integers([40, 120, 200], [120, 220, 256]))  # BGR warm
        cv2.circle(canvas, c, r, col, thickness=max(1, size // 32), lineType=cv2.LINE_AA)
    return canvas


def _image_b(rng, size):
    """Cool gradient with stripes, triangles and rectangles (hard edges)."""
    img = _gradient(rng, size, (20, 60, 160), (60, 200, 190))
    canvas = np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1].copy()
    period = int(rng.integers(max(4, size // 10), max(5, size // 4)))
    yy, xx = np.mgrid[0:size, 0:size]
    direction = rng.integers(0, 3)
    coord = xx if direction == 0 else (yy if direction == 1 else xx + yy)
    stripes = (coord // period) % 2 == 0
    canvas[stripes] = (canvas[stripes] * 0.6).astype(np.uint8)
    for _ in range(rng.integers(2, 4)):
        col = tuple(int(v) for v in rng.integers([150, 80, 0], [256, 200, 80]))  # BGR cool
        if rng.random() < 0.5:
            pts = rng.integers(0, size, (3, 2)).astype(np.int32)
            cv2.fillPoly(canvas, [pts], col)
        else:
            p0 = rng.integers(0, size, 2)
            p1 = np.clip(p0 + rng.integers(size // 8, size // 2 + 1, 2), 0, size - 1)
            cv2.rectangle(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), col, thickness=-1)
    return canvas


def demo_image(seed: int, domain: str, split: str, index: int, size: int) -> np.ndarray:
    """One demo image as uint8 HWC **BGR** (ready for cv2.imwrite)."""
    key = [int(seed), 0 if domain == "A" else 1, 0 if split == "train" else 1, int(index), int(size)]
    rng = np.random.default_rng(key)
    return _image_a(rng, size) if domain == "A" else _image_b(rng, size)


def _write_png_atomic(path: str, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path!r}")
    write_bytes_atomic(path, buf.tobytes())


def make_demo_dataset(root: str, name: str = "demo", size: int = 64, n_train: int = 8, n_test: int = 2,
                      seed: int = 0) -> str:
    """Write `root/dataset/<name>/{trainA,trainB,testA,testB}/*.png`; return the dataset folder."""
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if n_train < 1 or n_test < 0:
        raise ValueError("need n_train >= 1 and n_test >= 0")
    base = os.path.join(root, "dataset", name)
    for folder, domain, split in _SPLITS:
        d = os.path.join(base, folder)
        os.makedirs(d, exist_ok=True)
        count = n_train if split == "train" else n_test
        for i in range(count):
            path = os.path.join(d, f"{domain}_{split}_{i:04d}.png")
            if os.path.isfile(path):
                continue
            _write_png_atomic(path, demo_image(seed, domain, split, i, size))
    return base


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ugatit_common.demo_data", description="Write the procedural two-domain demo data set.")
    from .options import path_value, seed_value
    p.add_argument("--root", default=".", type=path_value, help="folder that gets dataset/<name>/ (default: .)")
    p.add_argument("--name", default="demo", help="data set name (default: demo)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--n_train", type=int, default=8, help="train images per domain (default: 8)")
    p.add_argument("--n_test", type=int, default=2, help="test images per domain (default: 2)")
    p.add_argument("--seed", type=seed_value, default=0, help="generator seed (default: 0)")
    a = p.parse_args(argv)
    path = make_demo_dataset(a.root, a.name, a.size, a.n_train, a.n_test, a.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
