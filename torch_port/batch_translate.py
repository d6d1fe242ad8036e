"""Batched test-phase translation (`python -m torch_port --phase test --batch N`): images are read,
stacked N at a time, translated in one generator call each and written under the same names, on
the same results page, as the official one-image path (`translate._translate_files`) writes
them; a progress bar (tqdm, on stderr) replaces the per-image lines.

Each image is translated on its own (instance and layer norms are per sample), so an image's
result is that of the one-image path up to float32 rounding (batched convolutions may sum in
another order). With a compiled generator the last, partial batch is padded to N (with copies of
its last image, whose results are dropped) so that one compiled graph serves every call.
"""
from __future__ import annotations

import sys

import torch

from .data import ImageReadError, test_image
from .translate import write_result

__all__ = ["translate_batches"]


def _batches(files, size):
    for i in range(0, len(files), size):
        yield files[i:i + size]


def translate_batches(model, files, direction, cfg, device, result_dir, page, counts, names, batch: int,
                      pad: bool = False, progress: bool = True) -> None:
    """`files` translated `batch` at a time with `model.translate(x, direction)`; unreadable files
    are skipped with a warning. `pad`: pad a partial last batch to `batch` images."""
    from tqdm import tqdm
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    bar = tqdm(total=len(files), desc=direction, unit="img", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for chunk in _batches(files, batch):
            xs, ok = [], []
            for f in chunk:
                try:
                    xs.append(test_image(f, cfg["img_size"]))
                    ok.append(f)
                except ImageReadError as e:
                    bar.write(f"warning: skipping {f}: {e.reason}", file=sys.stderr)
                    bar.update(1)
            if not xs:
                continue
            n = len(xs)
            if pad and n < batch:
                xs += [xs[-1]] * (batch - n)
            x = torch.cat(xs).to(device)
            with torch.no_grad():
                y = model.translate(x, direction)[:n].permute(0, 2, 3, 1).float().cpu().numpy()
            for f, img in zip(ok, y):
                write_result(img, f, direction, result_dir, page, counts, names)
                bar.update(1)
    finally:
        bar.close()
