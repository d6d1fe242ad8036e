"""The official test phase with the PyTorch port: testA -> B with `generator_B`, testB -> A
with `generator_A`, images with the input's file name in `results/<model_dir>/` and an
`index.html` (name | input | output); each direction writes into its own subfolder (`a2b/`,
`b2a/`: names never collide, and never overwrite an input). `--input` translates an arbitrary
image or folder in one direction instead. Weights (only the weights) come from the newest usable
checkpoint, torch or official TF (converted on the fly), as the checkpoint policy says
(ugatit_common.checkpoint_policy). Unlike the official code, with no checkpoint at all the test
phase stops (exit 2) instead of translating with untrained weights, and a checkpoint whose
generators hold NaN or inf is refused (exit 2, naming the tensor) instead of writing black images;
so is a translation that comes out NaN / inf from finite weights (they overflow, e.g. in a float16
fast path): exit 2 naming the input, nothing written for it.
"""
from __future__ import annotations

import glob
import os
import sys

import torch

from ugatit_common import options as opt
from ugatit_common import checkpoint_policy as policy
from ugatit_common.checkpoint_policy import sweep_temp
from ugatit_common.cli_errors import check_writable_folder
from ugatit_common.finite import refuse_non_finite, refuse_non_finite_output
from ugatit_common.images import no_such_input, none_readable
from ugatit_common.made_folders import removed_on_failure
from ugatit_common.output_guard import check_result_folders, own_result_folder
from ugatit_common.output_names import DIRECTIONS, OutputNames
from ugatit_common.results import ResultsPage, save_image

from . import checkpoint as ckpt
from .data import ImageReadError, test_image
from .model import build_ugatit


def load_for_test(cfg: dict, device: torch.device):
    """The newest usable checkpoint's weights (torch or TF, whichever is newer; an older TF one the
    folder's `checkpoint` file names, as the official load: checkpoint_policy.choose; the optimizer
    state is not read, so a damaged one does not matter). No checkpoint: exit 2 - the test phase
    never translates with untrained weights."""
    model = build_ugatit(cfg)
    folder = opt.run_paths(cfg).checkpoint
    found = ckpt.resume_point(folder, cfg, "weights")
    if found is None:
        raise opt.OptionError(f"no checkpoint in {folder!r} to translate with (train first with the same "
                              f"flags, or check --checkpoint_dir, --dataset, --light)"
                              + policy.where_checkpoints_are(folder, cfg))
    refuse_non_finite(_generators(found["weights"]), f"checkpoint {found['found'].weights}")
    # the generators only, as the official test graph (a generators-only checkpoint translates too)
    ckpt.load_weights_into(model, found["weights"], found["found"].weights, generators_only=True)
    print(f" [*] Success to read {found['found'].name}")
    print(" [*] Load SUCCESS" + (" (TensorFlow checkpoint, converted)" if found["framework"] == "tf" else ""))
    return model.to(device).eval()


def load_checkpoint_for_test(path: str, cfg: dict, explicit: dict, device: torch.device):
    """(model, config) from `--checkpoint PATH`: an official TF checkpoint (folder or prefix), a
    port checkpoint folder or a .safetensors file. The model settings (and the data set's name,
    where the checkpoint records it) come from the checkpoint; `explicit` (the flags the user
    typed) must agree with what it records. Only the generators' weights are read."""
    loaded = ckpt.load_any(path, explicit)
    refuse_non_finite(_generators(loaded["state"]), f"checkpoint {path}")
    # what the checkpoint says about the model and its model_dir (not where this run writes)
    keys = opt.MODEL_KEYS + ("dataset", "gan_type", "n_critic", "adv_weight", "cycle_weight", "identity_weight",
                             "cam_weight")
    recorded = {k: v for k, v in loaded["config"].items() if k in keys}
    if "dataset" in explicit:
        recorded.pop("dataset", None)
    run_cfg = opt.validate(opt.config_from(cfg, **recorded))
    model = build_ugatit(run_cfg)
    for net in ("generator_A", "generator_B"):
        sub = {k[len(net) + 1:]: v for k, v in loaded["state"].items() if k.startswith(net + ".")}
        ckpt.load_weights_into(getattr(model, net), sub, f"{path} ({net})")
    print(f" [*] Success to read {path} ({loaded['kind']}, step {loaded['step']})")
    print(" [*] Load SUCCESS")
    return model.to(device).eval(), run_cfg


def _generators(state: dict) -> dict:
    """The tensors the test phase uses (the discriminators are not run)."""
    return {k: v for k, v in state.items() if k.startswith("generator")}


def input_files(path) -> list[str]:
    """The files `--input` names (a str or a path-like object): the file, or a folder's `*.*`."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        opt.readable_folder(path, "--input folder")  # glob would find nothing, or dangling links
        # the official `*.*` glob, with the folder's own name taken literally ("photos [2020]")
        files = []
        for f in sorted(glob.glob(os.path.join(glob.escape(path), "*.*"))):
            if os.path.isfile(f):
                files.append(f)
            else:  # (the official test phase would stop on it) said, as the training data's reader says it
                opt.skipped_not_a_file(f)
        if not files:
            raise opt.OptionError(f"--input={path!r}: " + _no_files_why(path))
        return files
    if os.path.exists(path):  # a device, a FIFO, a socket: there, but neither
        raise opt.OptionError(f"--input={path!r}: not a file or a folder (expected an image or a folder of images)")
    raise opt.OptionError(f"--input={path!r}: {no_such_input(path)}")


def _no_files_why(folder: str) -> str:
    """Why a folder gave no `*.*` file: none at all, or files the official glob does not take (no
    extension: a camera's `IMG_0001`; hidden: `.photo.jpg`) - "holds no files" misled there."""
    try:
        others = sum(1 for e in os.scandir(folder) if e.is_file())
    except OSError as e:
        return f"the folder cannot be read ({e.strerror or e})"
    if not others:
        return "the folder holds no files"
    return (f"none of the folder's {others} file(s) is named *.* (the official test phase reads the names with an "
            f"extension, not hidden ones, e.g. photo.jpg); give them an extension, or name one file as --input")


def _translate_files(model, files, direction, cfg, device, result_dir, page, counts, names=None, warn_skips=True):
    """One image at a time (the official loop). `warn_skips`: an unreadable file is skipped with a
    warning; False for a lone input, whose error line alone says it (`_write_results`)."""
    names = names or OutputNames(files)
    for f in files:
        print(f"Processing {'A' if direction == 'a2b' else 'B'} image: " + f)  # the official line
        try:
            x = test_image(f, cfg["img_size"]).to(device)
        except ImageReadError as e:
            if warn_skips:
                print(f"warning: skipping {f}: {e.reason}", file=sys.stderr)
            continue
        with torch.no_grad():
            y = model.translate(x, direction)
        write_result(y[0].permute(1, 2, 0).float().cpu().numpy(), f, direction, result_dir, page, counts, names,
                     precision_of(model, direction))


def precision_of(model, direction: str) -> str | None:
    """The fast path (torch_port.fast) of the generator translating `direction`, None: the exact
    float32 port."""
    g = getattr(model, "generator_B" if direction == "a2b" else "generator_A", None)
    return getattr(g, "precision", None)


def check_finite_result(image_hwc, input_path, direction, precision=None) -> None:
    """ugatit_common.finite.refuse_non_finite_output for the translation of `input_path`: finite
    weights that overflow (near float32's limit, or in a float16 fast path) stop the test phase
    (exit 2) before a black picture is written for it."""
    refuse_non_finite_output(image_hwc, f"the {direction} translation of {input_path}", precision)


def write_result(image_hwc, input_path, direction, result_dir, page, counts, names, precision=None) -> str:
    """One translated image: a fresh name in `<result_dir>/<direction>/`, the file, its page row;
    refused (exit 2, nothing written for it) when it holds NaN / inf (`check_finite_result`)."""
    check_finite_result(image_hwc, input_path, direction, precision)
    out = names.path(os.path.join(result_dir, direction), input_path)
    page.before_output(out)  # an earlier run's page never lists this run's pictures
    save_image(image_hwc, out)
    page.add(os.path.relpath(out, result_dir).replace(os.sep, "/"), input_path, out)
    counts[direction] = counts.get(direction, 0) + 1
    return out


def test(cfg: dict, device: torch.device, input_path: str | None = None, direction: str = "a2b",
         precision: str = "fp32", compile: bool = False, batch: int | None = None,
         checkpoint: str | None = None, explicit: dict | None = None, cuda_graphs=False,
         cudnn_benchmark=None) -> str:
    """`precision` / `compile`: the generators' fast path (torch_port.fast; default: the exact
    float32 port). `batch`: translate N images per generator call with a progress bar
    (torch_port.batch_translate); None: the official one image at a time. `checkpoint`: read
    the weights and the model settings from this checkpoint instead of
    `<checkpoint_dir>/<model_dir>` (`explicit`: the settings the user gave, checked against it).
    `cuda_graphs`, `cudnn_benchmark`: True / False / "auto" (torch_port.fast.optimize_generators;
    README "Translating on a GPU")."""
    model = None
    if checkpoint is not None:
        model, cfg = load_checkpoint_for_test(checkpoint, cfg, dict(explicit or {}), device)
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
    if model is None:
        model = load_for_test(cfg, device)
    from .fast import optimize_generators
    optimize_generators(model, precision, compile, cuda_graphs=cuda_graphs, cudnn_benchmark=cudnn_benchmark)
    # never into a live run's folders, the checkpoint folder read, or a dataset's image folder
    check_result_folders([paths.result] + [os.path.join(paths.result, d) for _, d in jobs],
                         checkpoint=checkpoint if checkpoint is not None else paths.checkpoint)
    with removed_on_failure() as made:  # a failed run leaves no empty folder it made (never one there before)
        for folder in [paths.result] + [os.path.join(paths.result, d) for files, d in jobs if files]:
            # a2b/ and b2a/ too: a file there stops it before any picture
            made.make(folder, check_writable_folder, "--result_dir")
        with own_result_folder(paths.result):  # one test phase at a time writes these pictures and this page
            return _write_results(model, jobs, cfg, device, paths, batch)


def _write_results(model, jobs, cfg, device, paths, batch) -> str:
    for folder in [paths.result] + [os.path.join(paths.result, d) for d in DIRECTIONS]:  # page and images:
        sweep_temp(folder, log=lambda m: None)  # what a killed earlier test phase left (not a running one's)
    page = ResultsPage(paths.result, cfg["img_size"])
    counts = {}
    every = [f for files, _ in jobs for f in files]
    names = OutputNames(every)  # outputs never overwrite an input
    # several inputs: each unreadable one is skipped with a warning; a lone one is said once, in the
    # error line below (a warning "skipping X" before "cannot read X" said the same thing twice)
    warn_skips = len(every) > 1
    try:
        for files, d in jobs:
            if batch:
                from .batch_translate import fixed_shape, translate_batches
                translate_batches(model, files, d, cfg, device, paths.result, page, counts, names, batch,
                                  pad=fixed_shape(model), warn_skips=warn_skips)
            else:
                _translate_files(model, files, d, cfg, device, paths.result, page, counts, names, warn_skips)
    except BaseException:  # Ctrl-C, a NaN picture, a full disk: the page lists what this run wrote
        page.stopped()
        raise
    if not counts:  # the previous results page stays as it was
        raise opt.OptionError(none_readable(every))
    page.close()
    print(f" [*] {sum(counts.values())} image(s) written; results page: {page.path}")
    return page.path
