"""ONNX export of Morph-UGATIT (`python -m morph export CKPT OUT.onnx`), verified like the port's
(torch_port/export.py: ONNX Runtime vs the port in float32 and float64, same budget).

Config C (one generator, steered by w): inputs `image` [B, C, H, W] and `w` [B, w_dim] float32,
outputs `translated`, `cam_logit`, `heatmap`. An app morphs by interpolating w between the two
direction codes, which are exported alongside: `<OUT stem>_w.npz` (w_a2b, w_b2a, each
[1, w_dim] float32) and the model's metadata (`morph.w_a2b`, `morph.w_b2a`, JSON lists).
w_X = the mean of MLP(z) over `--samples` draws of X's direction code z (seed `--z_seed`),
exactly `morph.interpolate.w_codes`; frame t of a morph is G(x, w_b2a + t (w_a2b - w_b2a)).
Verification feeds batch b the codes lerp(w_b2a, w_a2b, t) for t = 0..1 in b steps (batch 1: w_a2b).

Configs A / B (two generators, as UGATIT): `--direction a2b|b2a`, the port's contract, and
tf_reference is compared too when importable (their generators are the official one).
"""
from __future__ import annotations

import argparse
import io as io_module
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

from torch_port import export as tx
from ugatit_common import options as opt
from ugatit_common import output_guard as guard

__all__ = ["MorphCore", "w_file", "check_w_file_owner", "export_morph", "add_parser", "run"]


class MorphCore(nn.Module):
    """forward(x, w) -> (image, cam_logit, heatmap) of a config-C `MorphGenerator`."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, x, w):
        return self.generator(x, w=w)


def w_file(out: str) -> str:
    """Where the direction codes go beside `out`: model.onnx -> model_w.npz."""
    stem = out[: -len(".onnx")] if out.lower().endswith(".onnx") else out
    return stem + "_w.npz"


def check_w_file_owner(out: str) -> None:
    """guard.OutputRefused when another model file beside `out` names the same codes file: the
    `.onnx` is stripped in any case, so x.ONNX and x.onnx (two files on a case-sensitive file
    system) both have x_w.npz, and writing it would give the other model codes that are not its
    (replaced, or new ones taken for its own), --overwrite or not."""
    folder = os.path.dirname(os.path.abspath(out))
    side = w_file(out)
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no folder yet: no model there
        return
    for name in names:
        other = os.path.join(folder, name)
        if (name == os.path.basename(out) or not name.lower().endswith(".onnx")
                or w_file(name) != os.path.basename(side) or os.path.isdir(other) or _same_file(other, out)):
            continue  # not a model file naming these codes, or `out` itself (a case-insensitive file system)
        if os.path.lexists(side):
            what = f"exists and is the codes file of {other!r}"
        else:
            what = f"is the codes file that {other!r} names (missing now)"
        raise guard.OutputRefused(
            f"output {side!r} (the direction codes of {out!r}) {what}, another model there (their names differ "
            f"only in case): it is never written for {os.path.basename(out)!r}, --overwrite or not; choose another "
            f"output name")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _lerp_codes(w_ba: np.ndarray, w_ab: np.ndarray):
    def extra(batch: int) -> dict:
        ts = np.array([1.0]) if batch == 1 else np.linspace(0.0, 1.0, batch)
        return {tx.W_INPUT: np.stack([w_ba[0] + t * (w_ab[0] - w_ba[0]) for t in ts]).astype(np.float32)}
    return extra


def export_morph(model, out: str, *, source: str, step: int, direction: str | None = None, samples: int = 8,
                 z_seed: int = 0, io: str = "float", precision: str = "fp32", verify: bool = True,
                 tf: str = "auto", batches=(1, 2), seed: int = 0, mutate=None) -> dict:
    """Export a loaded `MorphUGATIT` (eval mode). Config C writes `w_file(out)` too."""
    from .interpolate import w_codes
    cfg = dict(model.config)
    keys = ("morph_config", "z_dim", "w_dim", "mlp_layers")
    meta = {"morph.config": model.morph_config}
    if model.single_generator:
        if samples < 1:
            raise tx.ExportError(f"--samples={samples}: must be >= 1")
        check_w_file_owner(out)  # before any work (the command checks it first, with its outputs)
        model.z_generator = torch.Generator().manual_seed(int(z_seed))
        w_ab, w_ba = (t.detach().cpu().float().numpy() for t in w_codes(model, samples))
        core = MorphCore(model.generator).eval()
        meta.update({"morph.w_a2b": json.dumps([float(v) for v in w_ab[0]]),
                     "morph.w_b2a": json.dumps([float(v) for v in w_ba[0]]),
                     "morph.w_samples": str(samples), "morph.z_seed": str(z_seed),
                     "morph.usage": "w = w_b2a + t * (w_a2b - w_b2a); t = 1: A->B, t = 0: B->A (codes also in "
                                    + os.path.basename(w_file(out)) + ")"})
        codes = io_module.BytesIO()
        np.savez(codes, w_a2b=w_ab, w_b2a=w_ba)
        result = tx.export(core, out, cfg, direction="w", source=source, source_kind="morph", step=step, io=io,
                           precision=precision, verify=verify, batches=batches, seed=seed,
                           extra_inputs={tx.W_INPUT: (int(cfg["w_dim"]),)}, extra=_lerp_codes(w_ba, w_ab),
                           metadata=meta, config_keys=keys, mutate=mutate,
                           companions={w_file(out): codes.getvalue()})  # the pair is written together or not at all
        result["w_file"] = w_file(out)
        return result
    if direction not in ("a2b", "b2a"):
        raise tx.ExportError(f"config {model.morph_config} has two generators: give --direction a2b or b2a")
    gen = (model.generator_B if direction == "a2b" else model.generator_A).eval()
    scope = "generator_B" if direction == "a2b" else "generator_A"
    tf_run = tx.tf_runner_for(tf, cfg, gen.state_dict(), scope) if verify else None
    try:
        return tx.export(gen, out, cfg, direction=direction, source=source, source_kind="morph", step=step, io=io,
                         precision=precision, verify=verify, tf_run=tf_run, batches=batches, seed=seed,
                         metadata=meta, config_keys=keys, mutate=mutate)
    finally:
        if tf_run is not None:
            tf_run.close()


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("export", help="export to ONNX, verified (config C: image + w inputs, w codes alongside)")
    e.add_argument("ckpt", type=opt.path_value, help="a Morph checkpoint folder (written by python -m morph train) or one of its weights "
                                "files (<prefix>.model-N.safetensors)")
    e.add_argument("out", type=opt.path_value, help="the .onnx file to write (a folder: morph.onnx, or morph_<direction>.onnx for "
                               "configs A/B, inside it)")
    e.add_argument("--direction", default=None, choices=("a2b", "b2a"), help="configs A/B only: which generator")
    e.add_argument("--samples", type=int, default=8,
                   help="config C: z draws averaged per w code, 1 .. 4096 (default: 8)")
    e.add_argument("--z_seed", type=opt.seed_value, default=0, help="config C: seed of those z draws (default: 0)")
    tx.add_export_flags(e)
    return e


def _check_flags(model, typed, tf: str = "auto") -> None:
    """Flags that have no meaning for this checkpoint's config are refused, not ignored."""
    if model.single_generator and tf == "on":  # "required": never a verification without it
        raise opt.OptionError(f"--tf on: config {model.morph_config}'s generator (steered by w) has no tf_reference "
                              f"counterpart to compare with (configs A / B have: the official generator); leave "
                              f"it out or give --tf auto / off")
    if model.single_generator and "direction" in typed:
        raise opt.OptionError(f"--direction: config {model.morph_config} has one generator steered by w (both "
                              f"directions are exported: image and w inputs, codes in the _w.npz); leave it out")
    unused = [f"--{f}" for f in ("samples", "z_seed") if f in typed]
    if not model.single_generator and unused:
        raise opt.OptionError(f"{', '.join(unused)}: config {model.morph_config} has no latent code (they apply to "
                              f"config C); leave them out")


def run(args) -> int:
    """The `export` subcommand; bad input raises (exit 2 in morph's main), a failed check exits 1.
    The outputs (the .onnx and, config C, its _w.npz) follow ugatit_common.output_guard."""
    try:
        return _run(args)
    finally:
        guard.release_claims()  # the outputs claimed by the checks (output_guard.claim)


def _run(args) -> int:
    from .interpolate import check_w_samples
    from .loading import load
    check_w_samples(args.samples)  # interpolate's range (the same codes), before any work
    from torch_port.train import check_threads
    check_threads(args.threads)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = tx.parse_batches(args.batches)
    if args.tf == "on" and not args.verify:
        raise tx.ExportError("--tf on compares the export with tf_reference during the verification, which "
                             "--no_verify skips: give one of them")
    model, state = load(args.ckpt, "cpu")
    typed = getattr(args, "typed", set())
    _check_flags(model, typed, args.tf)
    if not model.single_generator and args.direction not in ("a2b", "b2a"):
        raise tx.ExportError(f"config {model.morph_config} has two generators: give --direction a2b or b2a")
    default = "morph.onnx" if model.single_generator else f"morph_{args.direction}.onnx"
    args.out = guard.place_output(args.out, "onnx", [args.ckpt], args.overwrite, default)
    tx.check_onnx_name(args.out)  # after the guard's own refusals (they say more)
    if model.single_generator:
        check_w_file_owner(args.out)  # before the codes' own checks: an --overwrite would not make it right
        guard.check_outputs([(w_file(args.out), "morph-codes")], [args.ckpt], args.overwrite)
    step = int(state.get("step", 0))  # checkpoint.save records the counter in the state file
    precision = "fp16" if args.fp16 else "fp32"
    try:
        result = export_morph(model, args.out, source=args.ckpt, step=step, direction=args.direction,
                              samples=args.samples, z_seed=args.z_seed, io=args.io, precision=precision,
                              verify=args.verify, tf=args.tf, batches=batches, seed=args.seed)
    except tx.VerificationFailed as e:
        print(f"python -m morph export: {e} (no file written)", file=sys.stderr)
        for line in tx.summary(e.report):
            print(line, file=sys.stderr)
        return tx.EXIT_VERIFY
    tx.print_result(result, f"Morph config {model.morph_config}, io {args.io}, {precision}")
    if "w_file" in result:
        print(f"wrote {result['w_file']} (w_a2b, w_b2a)")
    return 0
