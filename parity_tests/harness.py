"""Run tf_reference and torch_port on the same input with the same weights and compare every
named activation. One naming rule pairs them: the TF variable scope of a layer with `/` → `.`
is the torch module path (NHWC activations are transposed to NCHW).

Two criteria per tensor, both required; neither is a bound measured on one CPU.

1. Semantics, in float64: the same weights and input run through tf_reference and torch_port in
   float64 must agree to |diff| <= 1e-9 * max(1, max|ref|). That is float32's worst rounding
   here (below 1e-4 of scale, criterion 2) carried to float64's 2^-53 unit roundoff (x 2^-29 =
   2e-13) with a 5000x margin: summation order and the CPU's kernels move float64 by ~1e-13
   (measured <= 4e-13 under AVX2, AVX-512 and one thread); any difference in the math (padding,
   epsilon, flatten order, clip, slope) moves it by 1e-6 or more (parity_tests/test_criteria.py).
2. Float32 accuracy, judged against the float64 truth (TF's float64 run), never against TF's
   float32 run: the root mean square over the tensor of |torch32 - tf64| must be at most

       max(RMS_FACTOR * rms|tf32 - tf64|,  u * sqrt(sum K) * max(1, max|ref|)),   u = 2^-24.

   The first term: the port's float32 rounding is of the size of TF's own in the same graph, on
   the same input, in the same run (or, for the stored fixtures, TF's on the machine that wrote
   them). It carries the conditioning of each layer: instance norms divide by a channel's
   standard deviation and amplify rounding by up to ~1/std in both frameworks. Root mean
   square, not the max: the max of thousands of rounding errors is an extreme value, and its
   ratio between two independent float32 runs reached 2.8 on one case. RMS_FACTOR = 3: two
   independent roundings of equal size have an RMS ratio near 1; in a 2-channel network a few
   rounding errors upstream, amplified by the same ill-conditioned norms, dominate both runs and
   give a tail (median 0.88, max 1.78 over 75 random configurations; per instruction set below).
   The second term is the floor where TF's rounding is smaller than float32 can promise: an
   unamplified float32 evaluation of the layers up to this tensor. Each sum of K terms computed
   in float32 (a conv or dense output: K = in_channels * kh * kw or in_features; a norm's moments:
   K = H * W, or C * H * W for the layer-norm half of AdaLIN/LIN; the CAM pooling: H * W) carries
   a rounding error of about u * sqrt(K) of its terms' size (a random walk of K roundings); the
   layers' independent errors add in quadrature, so sum K runs over every sum evaluated in the
   network (discriminator: in the branch) up to and including this tensor (`torch_forward(..., reductions=)`).
   The scale max(1, max|ref|): inputs are images in [-1, 1] and the norms bring activations back
   to unit size. The floor matters where TF is accidentally precise: a 2-entry CAM logit, or the
   discriminators under AVX2, where TF's float32 convs land within 0.1 ulp of float64 and the
   port's within 1-6 ulps (RMS ratios up to 22). It is conservative (naive summation; the
   kernels' blocked sums do better): on the stored fixtures it is the larger term for every
   tensor, 5-10x above the typical error, and the first term takes over in ill-conditioned
   layers (the 2-channel hypothesis case, ratio 1.40 -> 0.47 of the budget). It does not hide
   lost precision: convolutions in bfloat16 or TF32 and float16 dense outputs land 15-2300x
   above it, and one convolution with inputs rounded to 12 of 23 mantissa bits 1.75-23x at any
   depth (parity_tests/test_criteria.py); a 1-2 bit loss (E[x^2] - E[x]^2 moments) is not seen.

Measured worst port RMS error / budget per instruction set: README, "Parity: what is proven,
and how" (test_activation_fixtures.py and test_network_parity.py print them with -s).
"""
from __future__ import annotations

import html
import os

import numpy as np

from ugatit_common.float_error import RMS_FACTOR  # noqa: F401 - two float32 roundings of equal size, their tail
from ugatit_common.float_error import max_abs as _max_abs, rms as _rms, scale as _scale

U32 = 2.0 ** -24  # float32 unit roundoff (round to nearest)
FLOAT64_TOL = 1e-9
CRITERIA = (f"A tensor is ok when float64 torch vs float64 TF <= {FLOAT64_TOL} * max(1, max|ref|), and torch's "
            f"float32 error vs the float64 truth (root mean square over the tensor) is at most the larger of "
            f"{RMS_FACTOR:g}x TF's own float32 error and the rounding floor 2^-24 * sqrt(K) * max(1, max|ref|) "
            f"(K: the terms of every float32 sum up to that tensor).")
NETS = ("generator_B", "generator_A", "discriminator_A", "discriminator_B")


def rounding_floor(reduction: float, scale: float) -> float:
    """RMS error of an unamplified float32 evaluation whose sums have `reduction` terms in all
    (criterion 2's floor): u * sqrt(sum K) * scale."""
    return U32 * float(np.sqrt(max(reduction, 1.0))) * scale


def float32_verdict(got: np.ndarray, ref32: np.ndarray, truth: np.ndarray, reduction: float) -> dict:
    """Criterion 2 for one tensor: `got` (the candidate's float32 run) against the float64 truth,
    with `ref32` (the reference's float32 run of the same graph) as the measure of float32 rounding.
    Returns {port_err, tf_err, port_rms, tf_rms, floor, budget, ok32}; arrays in one layout."""
    scale = _scale(truth)
    row = dict(tf_err=_max_abs(ref32, truth), port_err=_max_abs(got, truth), tf_rms=_rms(ref32, truth),
               port_rms=_rms(got, truth), floor=rounding_floor(reduction, scale))
    row["budget"] = max(RMS_FACTOR * row["tf_rms"], row["floor"])
    row["ok32"] = bool(row["port_rms"] <= row["budget"])
    return row


def input_image(cfg: dict, seed: int) -> np.ndarray:
    """The NHWC float32 input in [-1, 1] every parity comparison draws for `seed`."""
    return np.random.default_rng(seed).uniform(-1, 1, (1, cfg["img_size"], cfg["img_size"], 3)).astype(np.float32)


def random_tf_weights(cfg: dict, seed: int = 0) -> dict:
    """Official initialisers, then every variable perturbed so biases, gamma, beta, rho and u all
    matter (a fresh model has zero biases and rho at its clip bounds)."""
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        tf.set_random_seed(seed)
        x = tf.placeholder(tf.float32, [1, cfg["img_size"], cfg["img_size"], 3])
        m = UGATITGraph(cfg)
        for net in NETS:
            (m.generator if net.startswith("gen") else m.discriminator)(x, scope=net)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run({v.op.name: v for v in tf.global_variables()})
    out = {}
    for name, v in values.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "rho":
            v = rng.uniform(0.0, 1.0, v.shape)
        elif leaf in ("bias", "beta"):
            v = v + rng.normal(0.0, 0.1, v.shape)
        elif leaf == "gamma":
            v = v + rng.normal(0.0, 0.1, v.shape)
        out[name] = np.asarray(v, np.float32)
    return out


def tf_forward(weights: dict, cfg: dict, x_nhwc: np.ndarray, nets=NETS, dtype=np.float32) -> dict:
    """{name: ndarray} of every recorded TF layer output plus each network's outputs.

    dtype=np.float64 builds the same graph with every variable in float64 (the variable scope's
    default dtype): an independent high-precision truth for judging float32 rounding."""
    from tf_reference.compat import session_config, tf
    from tf_reference.model import UGATITGraph
    from tf_reference.ops import record_endpoints
    tf_dtype = tf.as_dtype(dtype)
    g = tf.Graph()
    with g.as_default(), tf.variable_scope(tf.get_variable_scope(), dtype=tf_dtype):
        x = tf.placeholder(tf_dtype, x_nhwc.shape)
        m = UGATITGraph(cfg)
        fetch = {}
        with record_endpoints() as acts:
            for net in nets:
                if net.startswith("generator"):
                    image, cam, _ = m.generator(x, scope=net)
                    fetch[f"{net}:image"], fetch[f"{net}:cam_logit"] = image, cam
                else:
                    logits, cams, _, _ = m.discriminator(x, scope=net)
                    for branch, lg, cm in zip(("local", "global"), logits, cams):
                        fetch[f"{net}:{branch}"], fetch[f"{net}:{branch}_cam"] = lg, cm
        fetch.update(acts)
        variables = tf.global_variables()
        missing = [v.op.name for v in variables if v.op.name not in weights]
        if missing:
            raise KeyError(f"weights lack {missing}")
        with tf.Session(config=session_config(g)) as sess:  # no remapper E-line for the recorded layers
            # one run: every initializer fed its value (a Variable.load per variable adds an op each)
            sess.run([v.initializer for v in variables],
                     {v.initial_value: np.asarray(weights[v.op.name], dtype) for v in variables})
            return sess.run(fetch, {x: np.asarray(x_nhwc, dtype)})


def _sum_terms(module, inp) -> int:
    """How many terms each float32 sum of this leaf layer adds (0 for elementwise layers): a conv
    output in_ch * k * k products, a dense output in_features, an instance norm's moments H * W,
    the layer-norm half of AdaLIN / LIN C * H * W, the CAM's pooling H * W (and its C-term dot)."""
    from torch_port.ops import LIN, AdaLIN, CAMLogit, Conv, Dense, InstanceNorm
    x = inp[0] if inp else None
    if isinstance(module, Conv):
        return module.in_ch * module.kernel ** 2
    if isinstance(module, Dense):
        return module.in_features
    if isinstance(module, CAMLogit):
        return module.channels + x.shape[2] * x.shape[3]
    if isinstance(module, InstanceNorm):
        return x.shape[2] * x.shape[3]
    if isinstance(module, (AdaLIN, LIN)):
        return x[0].numel()
    return 0


def _segment(name: str) -> str:
    """The chain a tensor's sums accumulate along: a generator, or one discriminator branch."""
    parts = name.replace(":", ".").split(".")
    if parts[0].startswith("discriminator") and len(parts) > 1:
        return ".".join(parts[:2]) if parts[1] in ("local", "global") else f"{parts[0]}.{parts[1].split('_')[0]}"
    return parts[0]


def torch_forward(state: dict, cfg: dict, x_nchw, nets=NETS, dtype=None, reductions: dict | None = None) -> dict:
    """{torch module path: ndarray} of every submodule output plus each network's outputs.

    `reductions`, if a dict, receives {name: sum K}: the terms of every float32 sum evaluated in
    the tensor's generator or discriminator branch up to and including it, in execution order
    (criterion 2's floor; see the module docstring)."""
    import torch
    from torch_port import build_ugatit
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    if dtype is not None:
        model.to(dtype)
        x_nchw = x_nchw.to(dtype)
    acts, hooks, running = {}, [], {}

    def record(mod, inp, out, name):
        acts[name] = out
        seg = _segment(name)
        if not any(True for _ in mod.children()):
            running[seg] = running.get(seg, 0) + _sum_terms(mod, inp)
        if reductions is not None:
            reductions[name] = running.get(seg, 0)

    for name, module in model.named_modules():
        if name.count(".") >= 1:
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: record(mod, inp, out, name)))
    out = {}
    with torch.no_grad():
        for net in nets:
            res = getattr(model, net)(x_nchw)
            if net.startswith("generator"):
                out[f"{net}:image"], out[f"{net}:cam_logit"] = res[0], res[1]
            else:
                for i, branch in enumerate(("local", "global")):
                    out[f"{net}:{branch}"], out[f"{net}:{branch}_cam"] = res[0][i], res[1][i]
    for h in hooks:
        h.remove()
    if reductions is not None:
        for key in out:
            reductions[key] = running.get(_segment(key), 0)
    out.update({k: v for k, v in acts.items() if isinstance(v, torch.Tensor)})
    return {k: v.detach().numpy() for k, v in out.items()}


def compare(tf_out: dict, torch_out: dict, tf64: dict, torch64: dict, reductions: dict) -> dict:
    """Pair by the naming rule and judge every tensor by the two criteria of the module docstring.

    `reductions`: {torch name: sum K} from `torch_forward(..., reductions=)`. Returns {tf name:
    row}; a row has torch_name, shape, output, ok, max_abs / max_rel (torch32 vs tf32, for
    information), err64 / tol64 (criterion 1), and tf_err / port_err (max |tf32 - tf64| /
    |torch32 - tf64|), tf_rms / port_rms (their root mean squares), floor and budget
    (criterion 2); a failing row a `note`."""
    rows = {}
    for name, ref in tf_out.items():
        is_output = ":" in name
        tname = name if is_output else name.replace("/", ".")
        if tname not in torch_out:
            continue
        got = torch_out[tname]
        nchw = (lambda a: a.transpose(0, 3, 1, 2)) if ref.ndim == 4 else (lambda a: a)
        ref = nchw(ref)
        if got.shape != ref.shape:
            rows[name] = dict(torch_name=tname, shape=tuple(ref.shape), max_abs=float("inf"), max_rel=float("inf"),
                              ok=False, output=is_output, note=f"torch shape {got.shape}")
            continue
        if name not in tf64 or tname not in torch64 or tname not in reductions:
            raise KeyError(f"{name}: no float64 run or reduction length to judge it by")
        diff = np.abs(got.astype(np.float64) - ref)
        truth = nchw(tf64[name])
        row = dict(torch_name=tname, shape=tuple(ref.shape), output=is_output,
                   max_abs=float(diff.max()) if diff.size else 0.0,
                   max_rel=float((diff / np.maximum(np.abs(ref), 1e-6)).max()) if diff.size else 0.0,
                   err64=_max_abs(torch64[tname], truth), tol64=FLOAT64_TOL * _scale(truth),
                   reduction=reductions[tname])
        row.update(float32_verdict(got, ref, truth, reductions[tname]))
        row["ok"] = row["ok32"] and row["err64"] <= row["tol64"]
        if not row["ok"]:
            row["note"] = (f"float64 |torch - TF| {row['err64']:.3g} (tol {row['tol64']:.3g}); float32 error vs the "
                           f"float64 truth, rms: torch {row['port_rms']:.3g} > budget {row['budget']:.3g} = max("
                           f"{RMS_FACTOR:g} x TF's {row['tf_rms']:.3g}, floor {row['floor']:.3g})"
                           if not row["ok32"] else
                           f"float64 |torch - TF| {row['err64']:.3g} > tol {row['tol64']:.3g}")
        rows[name] = row
    return rows


def compare_networks(ckpt_or_weights, cfg: dict, seed: int = 0, x=None, progress=None) -> dict:
    """Both frameworks on one input in [-1, 1], in float32 and in float64 (the truth both criteria
    need); weights from a TF checkpoint path or a dict. `progress(label)`, when given, is called
    after each of the four runs (what the report's progress bar counts)."""
    import torch
    from ugatit_common.tf_checkpoint import names as wc
    if isinstance(ckpt_or_weights, dict):
        weights = ckpt_or_weights
    else:
        from ugatit_common.tf_checkpoint.bundle import BundleReader
        with BundleReader(ckpt_or_weights) as r:
            weights = {n: r.read(n) for n in r.keys() if n.startswith(NETS) and not n.endswith(wc.SLOT_SUFFIXES)}
    nets = tuple(n for n in NETS if f"{n}/conv/conv2d/kernel" in weights or f"{n}/local/conv_0/kernel" in weights
                 or f"{n}/local/conv_0/conv2d/kernel" in weights)
    from ugatit_common.options import config_from
    cfg = config_from(cfg)
    if x is None:
        x = input_image(cfg, seed)
    state = {wc.tf_to_torch_name(n): torch.from_numpy(wc.to_torch_layout(n, v)) for n, v in weights.items()}
    x_nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    done = progress or (lambda label: None)
    tf_out = tf_forward(weights, cfg, x, nets)
    done("TF float32")
    reductions = {}
    torch_out = torch_forward(state, cfg, x_nchw, nets, reductions=reductions)
    done("torch float32")
    tf64 = tf_forward(weights, cfg, x, nets, np.float64)
    done("TF float64")
    torch64 = torch_forward(state, cfg, x_nchw, nets, torch.float64)
    done("torch float64")
    return compare(tf_out, torch_out, tf64, torch64, reductions)


def failures(rows: dict) -> list[str]:
    return [f"{n} ({r['torch_name']}): {r.get('note', '')}" for n, r in rows.items() if not r["ok"]]


def _cells(n: str, r: dict) -> list[str]:
    f64 = f"{r['err64']:.3g} / {r['tol64']:.3g}" if "err64" in r else "-"
    f32 = (f"{r['port_rms']:.3g} / {r['tf_rms']:.3g} / {r['floor']:.3g} ({r['port_rms'] / r['budget']:.2f})"
           if "budget" in r else "-")
    return ["output" if r["output"] else "layer", n, r["torch_name"], str(list(r["shape"])), f"{r['max_abs']:.3g}",
            f"{r['max_rel']:.3g}", f64, f32, "yes" if r["ok"] else "NO"]


COLUMNS = ["layer", "TF name", "torch name", "shape", "max abs f32", "max rel f32", "f64 diff / tol",
           "f32 rms err vs f64: torch / TF / floor (torch / budget)", "ok"]


def _extra_cells(n: str, extra: dict | None) -> list[str]:
    """Row `n`'s cells of the extra columns (parity_tests.fast_paths.report_columns: {"columns",
    "cells": {row name: [cell per column]}}); "-" in each where the row has none."""
    if not extra:
        return []
    return list(extra["cells"].get(n, ["-"] * len(extra["columns"])))


def _columns(extra: dict | None) -> list[str]:
    return COLUMNS + (list(extra["columns"]) if extra else [])


def table(rows: dict, extra: dict | None = None) -> str:
    """The Markdown table; `extra`: more columns after ok (the fast paths', see _extra_cells)."""
    cols = _columns(extra)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for n, r in rows.items():
        c = _cells(n, r)
        c[1], c[2] = f"`{c[1]}`", f"`{c[2]}`"
        c[-1] = "yes" if r["ok"] else "**NO**"
        lines.append("| " + " | ".join(c + _extra_cells(n, extra)) + " |")
    return "\n".join(lines)


PAGE_HEAD = "<html><head><meta charset='utf-8'></head><body>"  # the pages are UTF-8 (as ugatit_common.results')


def printable(text: str) -> str:
    """`text` for a UTF-8 file: the bytes of a file name that is not UTF-8 (kept as surrogates by
    os.fsdecode) as `\\xNN` escapes, instead of stopping the write after all the work."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_report(rows: dict, cfg: dict, out_dir: str, source: str = "", provenance: list[str] | None = None,
                 extra: dict | None = None, appendix=(), companions: dict | None = None) -> str:
    """Per-layer table as Markdown and HTML (what a user attaches to a converted model).
    `provenance`: one line per config setting saying where it came from (read or guessed).
    `extra`: more columns and a paragraph saying what they mean ({"columns", "cells", "intro"}:
    parity_tests.fast_paths.report_columns, the fast paths' per-layer error); both files are
    written atomically. `appendix`: [(Markdown, HTML)] sections after the table (the free run's:
    parity_tests.free_run_report.section), written with it: a report is never left without them.
    `companions`: {path in out_dir: text} of more files of the same report (fast_paths.md / .html,
    free_run.json). All are written as one (ugatit_common.atomic.write_files_atomic): a failure
    (a full disk), Ctrl-C or a kill half way leaves every file as it was before, never a new
    page beside an earlier run's companions or half of the pair."""
    prov = list(provenance or [])
    os.makedirs(out_dir, exist_ok=True)
    n_bad = sum(not r["ok"] for r in rows.values())
    intro = extra["intro"] if extra and extra.get("intro") else ""
    head = (f"# U-GAT-IT parity report\n\nCheckpoint: `{source}`\n\nConfig: `{cfg}`\n\n"
            + "".join(f"- {line}\n" for line in prov) + ("\n" if prov else "")
            + f"{len(rows)} tensors compared, {n_bad} over tolerance. {CRITERIA}\n\n"
            + (f"{intro}\n\n" if intro else ""))
    md = head + table(rows, extra) + "\n" + "".join(m for m, _ in appendix)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(n, r) + _extra_cells(n, extra))
                    + "</tr>" for n, r in rows.items())
    page = (f"{PAGE_HEAD}<h1>U-GAT-IT parity report</h1><p>Checkpoint: {html.escape(source)}</p>"
            f"<p>Config: {html.escape(str(cfg))}</p>"
            + ("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in prov) + "</ul>" if prov else "") + f"<p>{len(rows)} tensors compared, {n_bad} over tolerance. "
            f"{html.escape(CRITERIA)}</p>" + (f"<p>{html.escape(intro)}</p>" if intro else "")
            + "<table border=1><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in _columns(extra))
            + f"</tr>{cells}</table>" + "".join(h for _, h in appendix)
            + "</body></html>")
    from ugatit_common.atomic import write_files_atomic
    files = {os.path.join(out_dir, name): text for name, text in (companions or {}).items()}
    files.update({os.path.join(out_dir, "parity_report.md"): printable(md),
                  os.path.join(out_dir, "parity_report.html"): printable(page)})  # the page people open: last
    write_files_atomic({path: text.encode("utf-8") for path, text in files.items()})
    return os.path.join(out_dir, "parity_report.html")


# -- where the report commands write (python -m parity_tests.report / .fast_paths / .free_run --json) ---------

# the start of each file these commands write: a file by that name which does not start so is not
# theirs (a user's), and is never replaced
_HEADS = (PAGE_HEAD.encode(), b"<html><body>")  # the pages' start now, and before they declared their charset
REPORT_SIGNS = {"parity_report.md": (b"# U-GAT-IT parity report",),
                "parity_report.html": tuple(h + b"<h1>U-GAT-IT parity report" for h in _HEADS),
                "fast_paths.md": (b"# Fast-path fidelity",),
                "fast_paths.html": tuple(h + b"<h1>Fast-path fidelity" for h in _HEADS)}
CURVE_KEYS = ("reference", "candidate", "budget", "curve")  # a free-run curve (parity_tests/free_run.py --json)


def written_by_report(path: str, curve: bool = False) -> bool:
    """Whether the existing file `path` is one these commands wrote (judged by its content: a
    report page by its start, a `.json` by being a free-run curve). `curve`: only a free-run curve
    counts, whatever the name (free_run --json never replaces a report page)."""
    import json
    if not os.path.isfile(path):
        return False
    try:
        if curve or path.lower().endswith(".json"):
            with open(path, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
            return isinstance(data, dict) and all(k in data for k in CURVE_KEYS)
        signs = REPORT_SIGNS.get(os.path.basename(path), ())
        with open(path, "rb") as fh:
            head = fh.read(max((len(sign) for sign in signs), default=0))
        return any(head.startswith(sign) for sign in signs)
    except (OSError, ValueError):
        return False


def _refuse_foreign(path: str, what: str, curves: bool = False) -> None:
    from ugatit_common.output_guard import OutputRefused, describe, kind_of
    if path.endswith(("/", os.sep)):  # `--json new/`: a folder meant, where the curve is a file
        raise OutputRefused(f"{what}: {path!r} ends in a path separator, but a file is written there: give a file name")
    if os.path.lexists(path) and not written_by_report(path, curve=curves):
        found = kind_of(path)
        raise OutputRefused(f"{what}: {path!r} exists and is {describe(found) if found else 'not readable'}, not "
                            f"a report or curve these commands wrote: it is never replaced; give {what} another "
                            + ("file name" if what == "--json" else "folder"))


def refuse_empty_out_dir(out_dir: str, what: str = "OUT_DIR") -> None:
    """OutputRefused (exit 2) for an empty OUT_DIR, before any work: most often an unset shell
    variable, and no folder to write into (`.` names the current one)."""
    if not out_dir.strip():
        from ugatit_common.output_guard import OutputRefused
        raise OutputRefused(f"{what} is empty: give the report's folder (`.` for the current one)")


def claim_report_outputs(paths, checkpoint: str | None = None, what: str = "OUT_DIR", others=(),
                         curves: bool = False) -> None:
    """Check, before any work, that the report files `paths` may be written, and hold them for
    this process (ugatit_common.output_guard.claim; `release_claims` lets them go, and removes a
    folder the claim made while it is still empty). `others`: the report's other names there,
    which this run does not write but may set aside (set_earlier_aside): held too, so two report
    commands never write into one folder at once; a user's file by such a name is no refusal.
    Claim files a killed report command left there are removed first (said in one line).
    OutputRefused (exit 2, one line naming `what`):
    - a folder of a live training run, the checkpoint folder being read (`checkpoint`), a dataset's
      image folder (output_guard.check_result_folders: results never go there);
    - a file where the folder goes, a folder that cannot be written;
    - an existing file by an output's name that these commands did not write (the user's: never
      replaced; their own earlier report is; with `curves`, free_run --json's file, only an
      earlier free-run curve is: never a report page);
    - an output another command is writing now (two reports into one folder would mix)."""
    from ugatit_common import output_guard as og
    paths = list(paths)
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p in paths})
    og.check_result_folders(folders, checkpoint=checkpoint, flag=what)
    for folder in folders:
        d = folder
        while not os.path.lexists(d):
            d = os.path.dirname(d)
        if not os.path.isdir(d):
            raise og.OutputRefused(f"{what}: {d!r} is a file, not a folder: the report cannot go into {folder!r}")
        if not os.access(d, os.W_OK | os.X_OK):
            raise og.OutputRefused(f"{what} {folder!r} is not writable ({d!r}: permission denied)")
    for p in paths:
        _refuse_foreign(p, what, curves)
    for folder in folders:
        if os.path.isdir(folder):
            og.sweep_dead_claims(folder)
    import tempfile
    from ugatit_common.atomic import temp_prefix
    from ugatit_common.options import OptionError
    taken = []
    try:
        for p in [*paths, *others]:
            try:
                if og.claim(p):
                    taken.append(p)
            except og.OutputRefused:
                raise
            except OptionError as e:  # the folder cannot be made or written
                raise og.OutputRefused(f"{what}: {e}") from e
        for folder in folders:  # a file can be written there (a read-only file system; root ignores modes)
            try:
                fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), dir=folder)
                os.close(fd)
                os.remove(tmp)
            except OSError as e:
                raise og.OutputRefused(f"{what} {folder!r} is not writable: {e.strerror or e}") from e
        for p in paths:  # a command that wrote one meanwhile is seen now
            _refuse_foreign(p, what, curves)
    except BaseException:
        og.release_claims(taken)
        raise


# -- one report per folder: an earlier run's files this run does not write are set aside ---------------

# every file the report commands write into a report folder (parity_tests.report writes all of them,
# `--fast_paths none` / without `--free_run` fewer; parity_tests.fast_paths the fast_paths pair;
# `weights_convert.py tf2torch --report` the parity_report pair)
REPORT_NAMES = ("parity_report.md", "parity_report.html", "fast_paths.md", "fast_paths.html", "free_run.json")
EARLIER = "earlier-report-"  # + the earlier files' time: the subfolder they are moved into


def other_report_paths(out_dir: str, written) -> list[str]:
    """The report names in `out_dir` that a run writing `written` (paths or names) does not write."""
    names = {os.path.basename(p) for p in written}
    return [os.path.join(out_dir, n) for n in REPORT_NAMES if n not in names]


def set_earlier_aside(out_dir: str, written, log=print) -> str | None:
    """After a report command has written `written` (paths or names) into `out_dir`: the files of
    the report's names it did not write there that these commands wrote (an earlier run's
    free_run.json, fast_paths.* or parity_report.*; a user's file by such a name is not touched)
    would read as this run's. They are moved, not removed (computed results), into
    `out_dir/earlier-report-<their time>/` (the newest one's modification time; `_1`... when
    taken), said in one line. Returns that folder, or None when there was nothing to move."""
    import datetime
    earlier = [p for p in other_report_paths(out_dir, written) if written_by_report(p)]
    if not earlier:
        return None
    stamp = datetime.datetime.fromtimestamp(max(os.path.getmtime(p) for p in earlier))
    base = os.path.join(out_dir, EARLIER + stamp.strftime("%Y%m%d-%H%M%S"))
    dest, k = base, 0
    while True:
        try:
            os.mkdir(dest)  # a new folder of its own: nothing in it is replaced
            break
        except FileExistsError:
            k += 1
            dest = f"{base}_{k}"
        except OSError as e:  # the report is written: said, not an error
            if log:
                log(f"warning: {', '.join(os.path.basename(p) for p in earlier)} in {out_dir} are an earlier "
                    f"run's, not this run's, and could not be moved aside ({dest}: {e.strerror or e})")
            return None
    moved, failed = [], []
    for p in earlier:
        try:
            os.rename(p, os.path.join(dest, os.path.basename(p)))
            moved.append(os.path.basename(p))
        except OSError as e:
            failed.append(f"{os.path.basename(p)} ({e.strerror or e})")
    if not moved:
        os.rmdir(dest)
    if moved and log:
        log(f"note: {', '.join(moved)} in {out_dir} were an earlier run's (written {stamp:%Y-%m-%d %H:%M:%S}), not "
            f"this run's: moved into {dest}")
    if failed and log:
        log(f"warning: {', '.join(failed)} in {out_dir} are an earlier run's, not this run's, and could not be "
            f"moved aside")
    return dest if moved else None
