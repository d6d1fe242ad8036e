"""The official test phase with the PyTorch port: testA -> B with `generator_B`, testB -> A
with `generator_A`, images with the input's file name in `results/<model_dir>/` and an
`index.html` (name | input | output). `--input` translates an arbitrary image or folder in one
direction instead. Weights come from the newest torch checkpoint or, failing that, from an
official TF checkpoint folder (converted on the fly with `weights_convert.tf_to_torch`).
As officially, with no checkpoint at all the freshly initialised model is used (with a warning).
"""
from __future__ import annotations

import glob
import os
import sys

import torch

from ugatit_common import options as opt
from ugatit_common.results import ResultsPage, save_image

from . import checkpoint as ckpt
from .data import ImageReadError, test_image
from .model import build_ugatit


def load_for_test(cfg: dict, device: torch.device):
    model = build_ugatit(cfg)
    folder = opt.run_paths(cfg).checkpoint
    found = ckpt.find_latest(folder)
    if found is not None:
        step, weights, _ = found
        ckpt.load_weights_into(model, weights, os.path.join(folder, f"*.model-{step}"))
        print(f" [*] Success to read {opt.model_name(cfg)}.model-{step}")
        print(" [*] Load SUCCESS")
    elif ckpt.has_tf_checkpoint(folder):
        _, weights = ckpt.read_tf_weights(folder, cfg)
        ckpt.load_weights_into(model, weights, f"{folder} (TensorFlow)")
        print(" [*] Load SUCCESS (TensorFlow checkpoint, converted)")
    else:
        print(f" [!] Load failed... (no checkpoint in {folder}); translating with untrained weights",
              file=sys.stderr)
    return model.to(device).eval()


def input_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*.*")) if os.path.isfile(f))
        if not files:
            raise opt.OptionError(f"--input={path!r}: the folder holds no files")
        return files
    raise opt.OptionError(f"--input={path!r}: no such file or folder")


def _translate_files(model, files, direction, cfg, device, result_dir, page, counts):
    for f in files:
        print("Processing image: " + f)
        try:
            x = test_image(f, cfg["img_size"]).to(device)
        except ImageReadError as e:
            print(f"warning: skipping {f}: {e.reason}", file=sys.stderr)
            continue
        with torch.no_grad():
            y = model.translate(x, direction)
        out = os.path.join(result_dir, os.path.basename(f))
        if os.path.splitext(out)[1].lower() not in opt.IMAGE_EXTENSIONS:
            out += ".png"
        save_image(y[0].permute(1, 2, 0).float().cpu().numpy(), out)
        page.add(os.path.basename(f), f, out)
        counts[direction] = counts.get(direction, 0) + 1


def test(cfg: dict, device: torch.device, input_path: str | None = None, direction: str = "a2b") -> str:
    paths = opt.run_paths(cfg)
    if input_path is not None:
        if direction not in ("a2b", "b2a"):
            raise opt.OptionError(f"--direction={direction!r}: expected 'a2b' or 'b2a'")
        jobs = [(input_files(input_path), direction)]
    else:
        files_A = opt.domain_files(cfg, "testA", required=False)
        files_B = opt.domain_files(cfg, "testB", required=False)
        if not files_A and not files_B:
            raise opt.OptionError(f"no test images in {opt.dataset_root(cfg)}/testA or testB")
        jobs = [(files_A, "a2b"), (files_B, "b2a")]
    model = load_for_test(cfg, device)
    os.makedirs(paths.result, exist_ok=True)
    page = ResultsPage(paths.result, cfg["img_size"])
    counts = {}
    for files, d in jobs:
        _translate_files(model, files, d, cfg, device, paths.result, page, counts)
    page.close()
    if not counts:
        raise opt.OptionError("no readable test image was found")
    print(f" [*] {sum(counts.values())} image(s) written; results page: {page.path}")
    return page.path
