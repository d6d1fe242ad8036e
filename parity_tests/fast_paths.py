"""Fidelity of the fast paths (`torch_port.optimize`): per-layer error against the float64 truth,
and the stated budgets of the generator outputs that parity_tests/test_fast_paths.py asserts.

    python -m parity_tests.fast_paths CKPT OUT_DIR [--img_size N] [--paths bf16,fp16,fp32+compile]

writes OUT_DIR/fast_paths.md and .html: for each generator of a TF checkpoint, every layer's
root-mean-square and max error of each fast path against the port run in float64 (the truth the
parity report uses: torch64 equals TF64 to 1e-9, harness criterion 1), beside the exact float32
path's. Compiled paths fuse layers, so they get the network outputs only.
`python -m parity_tests.report` carries the same numbers as one column per fast path of its
per-layer table (report_columns: the rows are joined by harness_name) and writes these files too.

Budgets (8-bit output levels: 1 level = 1/127.5 of the [-1, 1] image range), against the exact
float32 port on the same input:

- bf16: mean |diff| <= 0.5 level, max |diff| <= 4 levels. Rounding one image value (|v| in
  [0.5, 1)) to bfloat16 (8-bit significand, unit roundoff u = 2^-8) moves it by up to half an
  ulp, 2^-9 = 0.25 level, and by 0.07 level RMS. Each of the ~20 reduced-precision convolutions
  adds an independent relative rounding of that size to its output (inputs, kernel and output
  rounded; sums accumulate in float32); the norms rescale to unit size, so the errors add in
  quadrature: sqrt(20) x 0.07 = 0.3 level RMS before tanh (whose slope <= 1 only shrinks it).
  Mean |diff| <= 0.5 level is that with a 1.6x margin for the norms' amplification (a channel's
  rounding divided by its standard deviation); max <= 4 levels = 16 single roundings, the
  extreme of ~10^4 pixels of an error of that RMS (a Gaussian extreme of 4-5 sigma) with the
  same margin. Beyond it, an image visibly differs (a 1-level step is the smallest visible one in
  a smooth gradient; 4 isolated pixels at 4 levels are not).
- fp16: the bf16 budgets / 8 (float16: 11-bit significand, u = 2^-11, 8x smaller): mean <= 1/16
  level, max <= 0.5 level.
- fp32 + compile: within float32 rounding, judged as the port is judged against TF (harness
  criterion 2): the compiled path's RMS error against the float64 truth at most 3x the eager
  float32 path's (RMS_FACTOR; fusion reorders float32 sums), or the rounding floor.

Measured (golden and demo, see README "Fast paths") and the margins are in test_fast_paths.py.
"""
from __future__ import annotations

import copy
import html
import os

import numpy as np

LEVEL = 1.0 / 127.5
BUDGETS = {  # precision: (mean |diff| levels, max |diff| levels) against the float32 port
    "bf16": (0.5, 4.0),
    "fp16": (0.5 / 8, 4.0 / 8),
}


def image_error_levels(got, ref) -> dict:
    """{mean, max, rms} of |got - ref| in 8-bit levels (tensors or arrays in [-1, 1])."""
    d = np.abs(_np(got).astype(np.float64) - _np(ref).astype(np.float64)) / LEVEL
    return {"mean": float(d.mean()), "max": float(d.max()), "rms": float(np.sqrt(np.mean(d * d)))}


def _np(t):
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def _record(module, call):
    """{module path: output} of every submodule (tensor outputs; tuples flattened as path:i)."""
    acts, hooks = {}, []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(out, (tuple, list)):
                for i, o in enumerate(out):
                    if hasattr(o, "detach"):
                        acts[f"{name}:{i}"] = o.detach().double().cpu().numpy()
            elif hasattr(out, "detach"):
                acts[name] = out.detach().double().cpu().numpy()
        return fn

    for name, m in module.named_modules():
        if name:
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        out = call()
    finally:
        for h in hooks:
            h.remove()
    return acts, out


def _outputs(out) -> dict:
    """Network outputs by name: image/cam_logit/heatmap (generator) or logits (discriminator)."""
    if isinstance(out[0], (list, tuple)):  # discriminator
        return {"local": out[0][0], "global": out[0][1], "local_cam": out[1][0], "global_cam": out[1][1]}
    return {"image": out[0], "cam_logit": out[1], "heatmap": out[2]}


def _err(a, truth) -> tuple[float, float]:
    d = a.astype(np.float64) - truth
    return float(np.sqrt(np.mean(d * d))), float(np.abs(d).max())


def fast_path_errors(module, args: tuple, paths=("bf16", "fp16"), kwargs: dict | None = None,
                     compile_paths=()) -> dict:
    """Per-layer error of each fast path against the float64 truth, beside the float32 path's.

    module: a float32 Generator / MorphGenerator / Discriminator (weights loaded); args/kwargs:
    its float32 inputs. paths: eager precisions (per layer); compile_paths: precisions run
    compiled (outputs only). Returns {"layers": {name: {"shape", "fp32": (rms, max), path: ...}},
    "outputs": {name: {...}}} - errors in absolute units of the tensor, against the float64 run
    unrounded (outputs too: the float32 path's RMS equals the harness's torch RMS, test_report.py).
    Spectral-norm `u` advances on every call: each run starts from a copy of the module, so all
    paths see the same `u`."""
    import torch
    from torch_port.fast import optimize
    kwargs = kwargs or {}

    def run(precision, dtype=None, compile=False):
        m = copy.deepcopy(module)
        if dtype is not None:  # the float64 truth: the whole module and its inputs in float64
            m = m.to(dtype).eval()
            a = tuple(x.to(dtype) if torch.is_tensor(x) else x for x in args)
            kw = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kwargs.items()}
            with torch.no_grad():
                return _record(m, lambda: m(*a, **kw))
        fast = optimize(m.eval(), precision, compile=compile)
        if compile:
            return {}, fast(*args, **kwargs)
        return _record(fast.inner, lambda: fast(*args, **kwargs))

    truth_acts, truth_out = run(None, torch.float64)
    truth_out = {k: v.detach().cpu().double().numpy() for k, v in _outputs(truth_out).items()}  # float64, unrounded
    results = {"layers": {}, "outputs": {k: {"shape": tuple(v.shape)} for k, v in truth_out.items()}}
    for name, t in truth_acts.items():
        results["layers"][name] = {"shape": tuple(t.shape)}
    import warnings
    for label, precision, compile in ([("fp32", "fp32", False)] + [(p, p, False) for p in paths]
                                      + [(f"{p}+compile", p, True) for p in compile_paths]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # fp16 on CPU: slow, said once elsewhere
            acts, out = run(precision, compile=compile)
        for name, t in acts.items():
            if name in results["layers"]:
                results["layers"][name][label] = _err(t, truth_acts[name])
        for name, v in _outputs(out).items():
            results["outputs"][name][label] = _err(_np(v), truth_out[name])
    return results


def cell(r: dict, label: str) -> str:
    """One entry of fast_path_errors as the tables show it: "rms / max (rms ratio to fp32)"; "-"
    where `label` did not measure it (a compiled path's inner layers)."""
    if label not in r:
        return "-"
    rms, mx = r[label]
    base = r.get("fp32", (0.0, 0.0))[0]
    ratio = "" if label == "fp32" or not base else f" ({rms / base:.0f}x)"
    return f"{rms:.3g} / {mx:.3g}{ratio}"


def table(results: dict, labels: list[str]) -> list[list[str]]:
    """Rows [kind, name, shape, per label "rms / max (rms ratio to fp32)"]."""
    rows = []
    for kind in ("outputs", "layers"):
        for name, r in results[kind].items():
            rows.append([kind[:-1], name, str(list(r["shape"]))] + [cell(r, lab) for lab in labels])
    return rows


def budgets_text() -> str:
    """The stated budgets (BUDGETS and the compiled fp32 criterion), one sentence."""
    return ("Budgets of the image against the float32 port (parity_tests/fast_paths.py, asserted by "
            "parity_tests/test_fast_paths.py on trained checkpoints): "
            + "; ".join(f"{k}: mean |diff| <= {v[0]:g}, max <= {v[1]:g}" for k, v in BUDGETS.items())
            + " (8-bit levels, 1 level = 1/127.5); fp32+compile: RMS error vs the float64 truth <= 3x the eager "
              "float32 path's (harness RMS_FACTOR) or the rounding floor. The tables' values are another measure: "
              "each tensor's error against the float64 truth in the tensor's own units (for the image, times 127.5 "
              "gives 8-bit levels), so a bf16 / fp16 image value there is not read against the budgets directly.")


def harness_name(net: str, kind: str, name: str) -> str:
    """The parity harness's torch name of a fast_path_errors entry of generator `net`: a layer's
    named_modules path under the net (`generator_B.adaptive_resblock0.res1.conv_0`, what the TF
    name with / -> . gives), a network output after `:` (`generator_B:image`)."""
    return f"{net}:{name}" if kind == "outputs" else f"{net}.{name}"


def path_labels(eager, compiled) -> list[str]:
    """The result labels of parse_paths' (eager, compiled): bf16, fp16, fp32+compile, ..."""
    return list(eager) + [f"{p}+compile" for p in compiled]


def report_columns(sections: list[tuple[str, dict]], labels: list[str], rows: dict, device: str = "cpu") -> dict:
    """The parity report's fast-path columns: one per label, joined to the harness `rows`
    ({TF name: row with torch_name, shape}) by harness_name.

    Returns {"columns": header per label, "cells": {TF name: [cell per label]} for every row with a
    counterpart, "unmatched": ["TF name (why)"] for each generator row of a measured net without
    one (none in this port: every recorded TF layer is a named module; a row whose torch shape
    differs from TF's, which the harness fails, is listed rather than joined), "intro": what the
    columns mean and the budgets}."""
    found = {}
    for net, res in sections:
        for kind in ("outputs", "layers"):
            for name, r in res[kind].items():
                found[harness_name(net, kind, name)] = r
    nets = {net for net, _ in sections}
    cells, unmatched = {}, []
    for tf_name, row in rows.items():
        r = found.get(row["torch_name"])
        if r is None:
            if row["torch_name"].replace(":", ".").split(".")[0] in nets:
                unmatched.append(f"{tf_name} (no {row['torch_name']})")
        elif tuple(r["shape"]) != tuple(row["shape"]):
            unmatched.append(f"{tf_name} (shape {list(row['shape'])}, fast path {list(r['shape'])})")
        else:
            cells[tf_name] = [cell(r, lab) for lab in labels]
    intro = (f"Fast-path columns ({', '.join(labels)}; torch_port.optimize, run on {device}): the error of that "
             f"path against the float64 truth (the port in float64, equal to TF's float64 run within criterion 1), "
             f"per generator tensor: root mean square / max |diff|, and in brackets the RMS ratio to the exact "
             f"float32 path's on the same input and device (on CPU: the torch RMS of the f32 column). '-': not "
             f"measured (discriminators; a compiled path fuses layers and gives the network outputs only). "
             f"Information, not part of the ok column or the exit status. " + budgets_text()
             + " Every generator layer, also those TF does not record: fast_paths.md / .html.")
    return {"columns": [f"{lab} err vs f64: rms / max (x fp32)" for lab in labels], "cells": cells,
            "unmatched": unmatched, "intro": intro}


def write_fast_path_report(sections: list[tuple[str, dict]], out_dir: str, source: str = "") -> str:
    """fast_paths.md and fast_paths.html in out_dir, written together (both or neither);
    sections: [(title, fast_path_errors result)]."""
    from ugatit_common.atomic import write_files_atomic
    files = fast_path_report_files(sections, source)
    write_files_atomic({os.path.join(out_dir, name): text.encode("utf-8") for name, text in files.items()})
    return os.path.join(out_dir, "fast_paths.html")


def fast_path_report_files(sections: list[tuple[str, dict]], source: str = "") -> dict:
    """{"fast_paths.md": text, "fast_paths.html": text}: what write_fast_path_report writes (the
    parity report writes them with its own files, harness.write_report's `companions`)."""
    intro = ("Error of each fast path (torch_port.optimize) against the float64 truth (the port in float64, "
             "equal to TF's float64 run), per layer: root mean square / max |diff|, and the RMS ratio to the exact "
             "float32 path. Compiled paths: network outputs only (layers are fused). " + budgets_text())
    md, body = [f"# Fast-path fidelity\n\nCheckpoint: `{source}`\n\n{intro}\n"], []
    for title, res in sections:
        labels = sorted({k for kind in ("outputs", "layers") for r in res[kind].values() for k in r if k != "shape"},
                        key=lambda s: (s != "fp32", s))
        cols = ["kind", "name", "shape"] + [f"{lab} rms / max" for lab in labels]
        rows = table(res, labels)
        md.append(f"\n## {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
                  + "\n".join("| " + " | ".join(c) + " |" for c in rows) + "\n")
        body.append(f"<h2>{html.escape(title)}</h2><table border=1><tr>"
                    + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                    + "</table>")
    from parity_tests.harness import PAGE_HEAD, printable
    return {"fast_paths.md": printable("".join(md)),
            "fast_paths.html": printable(f"{PAGE_HEAD}<h1>Fast-path fidelity</h1><p>Checkpoint: "
                                         f"{html.escape(source)}</p><p>{html.escape(intro)}</p>{''.join(body)}"
                                         f"</body></html>")}


def default_paths() -> str:
    """The parity report's --fast_paths default: "bf16" on CPU (cheap: its convolutions run native
    kernels), "bf16,fp16" where CUDA is available (on CPU float16 convolutions run a slow reference
    kernel, torch_port.precision.check_supported)."""
    import torch
    return "bf16,fp16" if torch.cuda.is_available() else "bf16"


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_sections(ckpt: str, img_size: int | None = None, paths=("bf16", "fp16"), compile_paths=(),
                        seed: int = 0, overrides: dict | None = None, device: str = "cpu") -> list[tuple[str, dict]]:
    """fast_path_errors for each generator of a TF checkpoint on the harness's random input.
    `overrides`: config settings the checkpoint does not record (as parity_tests.report takes).
    On CUDA, TF32 is off while it runs: the float32 path must be float32 (cuDNN convolutions
    default to TF32, a 10-bit significand, on Ampere and later)."""
    import torch
    import weights_convert
    from torch_port import build_ugatit
    from parity_tests.harness import input_image
    overrides = {k: v for k, v in dict(overrides or {}, img_size=img_size).items() if v is not None}
    cfg, state = weights_convert.tf_to_torch(ckpt, overrides=overrides or None, quiet=True)
    from ugatit_common.finite import refuse_non_finite  # NaN / inf: exit 2, not a table of NaN errors
    refuse_non_finite({k: v for k, v in state.items() if k.startswith("generator")}, f"TF checkpoint {ckpt}")
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    x = torch.from_numpy(input_image(cfg, seed).transpose(0, 3, 1, 2).copy()).to(device)
    out = []
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for net in ("generator_B", "generator_A"):
            if any(k.startswith(net + ".") for k in state):
                g = getattr(model, net).to(device).eval()
                out.append((net, fast_path_errors(g, (x,), paths, compile_paths=compile_paths)))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def parse_paths(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """"bf16,fp16,fp32+compile" -> (eager precisions, compiled precisions)."""
    from torch_port.precision import PRECISIONS
    names = [s.strip() for s in text.split(",") if s.strip()]
    for n in names:
        if n.split("+")[0] not in PRECISIONS or n.count("+") > 1 or ("+" in n and not n.endswith("+compile")):
            raise ValueError(f"unknown fast path {n!r}: expected {', '.join(PRECISIONS)}, optionally +compile")
    return (tuple(n for n in names if "+" not in n), tuple(n.split("+")[0] for n in names if "+" in n))


def main(argv=None) -> int:
    """The one error path (ugatit_common.cli_errors): bad input (a missing or non-finite
    checkpoint, an unknown path) -> one `error:` line, exit 2."""
    from ugatit_common import cli_errors
    return cli_errors.run(_main, argv, prog="python -m parity_tests.fast_paths")


def _main(argv=None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m parity_tests.fast_paths",
                                description="Per-layer error of each fast path (torch_port.optimize) of a TF "
                                            "checkpoint's generators against the float64 truth, beside the exact "
                                            "float32 path's: OUT_DIR/fast_paths.md and .html")
    from ugatit_common.options import config_from, path_value, seed_value, validate
    p.add_argument("ckpt", type=path_value, help="TF checkpoint (folder with its `checkpoint` file, or prefix)")
    p.add_argument("out_dir", metavar="OUT_DIR", type=path_value, help="folder for fast_paths.md / .html (an earlier report there is replaced; any other "
                                   "file by those names is never replaced)")
    p.add_argument("--img_size", type=int, help="image size (recorded in the .meta; a light model's weights do not "
                                                "fix it)")
    p.add_argument("--smoothing", choices=["True", "False"], help="AdaLIN smoothing (recorded in the .meta and the "
                                                                  "model_dir folder name, not in the weights)")
    p.add_argument("--paths", default="bf16,fp16",
                   help="comma-separated: bf16, fp16, fp32+compile, bf16+compile (default bf16,fp16)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random input (default 0)")
    a = p.parse_args(argv)
    from parity_tests.harness import refuse_empty_out_dir
    refuse_empty_out_dir(a.out_dir)
    try:
        eager, compiled = parse_paths(a.paths)
        if not (eager or compiled):  # `--paths ""` (an unset variable): a report of no path is no report
            raise ValueError(f"{a.paths!r} names no fast path: expected one or more of bf16, fp16, fp32+compile, "
                             f"bf16+compile, comma-separated")
    except ValueError as e:
        print(f"error: --paths: {e}", file=sys.stderr)
        return 2
    overrides = {"img_size": a.img_size, "smoothing": None if a.smoothing is None else a.smoothing == "True"}
    from ugatit_common.tf_checkpoint import read_config
    info = read_config(a.ckpt, overrides)  # bad input (a missing or contradicted checkpoint): exit 2, before work
    validate(config_from(info.config))
    info.announce()  # a guessed setting is said on stderr, as the parity report says it
    outputs = [os.path.join(a.out_dir, n) for n in ("fast_paths.md", "fast_paths.html")]
    from parity_tests.harness import claim_report_outputs, other_report_paths, set_earlier_aside
    from ugatit_common.output_guard import release_claims
    others = other_report_paths(a.out_dir, outputs)  # an earlier parity report there is set aside once this is written
    claim_report_outputs(outputs, a.ckpt, "OUT_DIR", others=others)
    try:
        sections = checkpoint_sections(a.ckpt, a.img_size, eager, compiled, a.seed, overrides)
        page = write_fast_path_report(sections, a.out_dir, a.ckpt)
        set_earlier_aside(a.out_dir, outputs)
    finally:
        release_claims(outputs + others)
    for title, res in sections:
        for name, r in res["outputs"].items():
            print(f"{title}:{name}: " + "  ".join(f"{k} rms {v[0]:.3g} max {v[1]:.3g}" for k, v in r.items()
                                                  if k != "shape"))
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())


def write_demo_fixture(tf_checkpoint_folder: str, dataset_root: str, out_dir: str, img_size: int = 64) -> str:
    """The demo fixture (parity_tests/fixtures/demo_light64): the generator weights of a
    tf_reference checkpoint trained on the demo data set (README main job: `python -m
    tf_reference --light True --dataset demo --img_size 64 --ch 4 --n_dis 5 --augment_flag False
    --epoch 1 --iteration 8`), written generators-only under the run's model_dir name (which
    records smoothing), and the first testA / testB image as NHWC float32 arrays (official test
    preprocessing)."""
    import glob
    from torch_port.data import load_test_array
    from ugatit_common.tf_checkpoint.bundle import BundleReader, BundleWriter, resolve_prefix, write_checkpoint_state
    from ugatit_common.tf_checkpoint.names import SLOT_SUFFIXES
    prefix = resolve_prefix(tf_checkpoint_folder)
    folder = os.path.join(out_dir, os.path.basename(os.path.dirname(os.path.abspath(prefix))))
    os.makedirs(folder, exist_ok=True)
    new_prefix = os.path.join(folder, os.path.basename(prefix))
    with BundleReader(prefix) as r, BundleWriter(new_prefix) as w:
        for name in sorted(r.keys()):
            if name.startswith("generator_") and not name.endswith(SLOT_SUFFIXES):
                w.add(name, r.read(name))
        w.finish()
    write_checkpoint_state(folder, os.path.basename(new_prefix))
    for domain in ("testA", "testB"):
        first = sorted(glob.glob(os.path.join(glob.escape(os.path.join(dataset_root, domain)), "*.*")))[0]
        np.save(os.path.join(out_dir, f"{domain}_0.npy"), load_test_array(first, img_size).astype(np.float32))
    return folder
