"""Run tf_reference and torch_port on the same input with the same weights and compare every
named activation. One naming rule pairs them: the TF variable scope of a layer with `/` → `.`
is the torch module path (NHWC activations are transposed to NCHW).

Forward tolerance: |diff| <= 1e-5 * max(1, max|ref|) per tensor. Activations are unit-scale
after each normalisation; conv sums of a few thousand float32 products in a different order
(oneDNN vs ATen) differ by ~1e-6 relative, and ~40 layers stay well inside 1e-5.
"""
from __future__ import annotations

import html
import os

import numpy as np

FORWARD_TOL = 1e-5
NETS = ("generator_B", "generator_A", "discriminator_A", "discriminator_B")


def forward_tolerance(ref: np.ndarray) -> float:
    return FORWARD_TOL * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)


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


def tf_forward(weights: dict, cfg: dict, x_nhwc: np.ndarray, nets=NETS) -> dict:
    """{name: ndarray} of every recorded TF layer output plus each network's outputs."""
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    from tf_reference.ops import record_endpoints
    g = tf.Graph()
    with g.as_default():
        x = tf.placeholder(tf.float32, x_nhwc.shape)
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
        with tf.Session() as sess:
            for v in tf.global_variables():
                if v.op.name not in weights:
                    raise KeyError(f"weights lack {v.op.name}")
                v.load(weights[v.op.name], sess)
            return sess.run(fetch, {x: x_nhwc})


def torch_forward(state: dict, cfg: dict, x_nchw, nets=NETS) -> dict:
    import torch
    from torch_port import build_ugatit
    model = build_ugatit(cfg)
    model.load_state_dict(state, strict=False)
    acts, hooks = {}, []
    for name, module in model.named_modules():
        if name.count(".") >= 1:
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: acts.__setitem__(name, out)))
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
    out.update({k: v for k, v in acts.items() if isinstance(v, torch.Tensor)})
    return {k: v.detach().numpy() for k, v in out.items()}


def compare(tf_out: dict, torch_out: dict) -> dict:
    """Pair by the naming rule; {tf name: {torch_name, shape, max_abs, max_rel, tol, ok, output}}."""
    rows = {}
    for name, ref in tf_out.items():
        is_output = ":" in name
        tname = name if is_output else name.replace("/", ".")
        if tname not in torch_out:
            continue
        got = torch_out[tname]
        if ref.ndim == 4:
            ref = ref.transpose(0, 3, 1, 2)
        if got.shape != ref.shape:
            rows[name] = dict(torch_name=tname, shape=tuple(ref.shape), max_abs=float("inf"), max_rel=float("inf"),
                              tol=0.0, ok=False, output=is_output, note=f"torch shape {got.shape}")
            continue
        diff = np.abs(got.astype(np.float64) - ref)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max()) if diff.size else 0.0
        tol = forward_tolerance(ref)
        rows[name] = dict(torch_name=tname, shape=tuple(ref.shape), max_abs=max_abs, max_rel=max_rel, tol=tol,
                          ok=max_abs <= tol, output=is_output)
    return rows


def compare_networks(ckpt_or_weights, cfg: dict, seed: int = 0, x=None) -> dict:
    """Both frameworks on one input in [-1, 1]; weights from a TF checkpoint path or a dict."""
    import torch
    import weights_convert as wc
    if isinstance(ckpt_or_weights, dict):
        weights = ckpt_or_weights
    else:
        from torch_port.tf_bundle import BundleReader
        with BundleReader(ckpt_or_weights) as r:
            weights = {n: r.read(n) for n in r.keys() if n.startswith(NETS) and not n.endswith(wc.SLOT_SUFFIXES)}
    nets = tuple(n for n in NETS if f"{n}/conv/conv2d/kernel" in weights or f"{n}/local/conv_0/kernel" in weights
                 or f"{n}/local/conv_0/conv2d/kernel" in weights)
    from ugatit_common.options import config_from
    cfg = config_from(cfg)
    if x is None:
        x = np.random.default_rng(seed).uniform(-1, 1, (1, cfg["img_size"], cfg["img_size"], 3)).astype(np.float32)
    state = {wc.tf_to_torch_name(n): torch.from_numpy(wc.to_torch_layout(n, v)) for n, v in weights.items()}
    tf_out = tf_forward(weights, cfg, x, nets)
    torch_out = torch_forward(state, cfg, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), nets)
    return compare(tf_out, torch_out)


def failures(rows: dict) -> list[str]:
    return [f"{n} ({r['torch_name']}): max |diff| {r['max_abs']:.3g} > {r['tol']:.3g} {r.get('note', '')}"
            for n, r in rows.items() if not r["ok"]]


def table(rows: dict) -> str:
    lines = ["| layer | TF name | torch name | shape | max abs | max rel | ok |", "|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {'output' if r['output'] else 'layer'} | `{n}` | `{r['torch_name']}` | {list(r['shape'])} "
                     f"| {r['max_abs']:.3g} | {r['max_rel']:.3g} | {'yes' if r['ok'] else '**NO**'} |")
    return "\n".join(lines)


def write_report(rows: dict, cfg: dict, out_dir: str, source: str = "") -> str:
    """Per-layer table as Markdown and HTML (what a user attaches to a converted model)."""
    os.makedirs(out_dir, exist_ok=True)
    n_bad = sum(not r["ok"] for r in rows.values())
    head = (f"# U-GAT-IT parity report\n\nCheckpoint: `{source}`\n\nConfig: `{cfg}`\n\n"
            f"{len(rows)} tensors compared, {n_bad} over tolerance (|diff| <= {FORWARD_TOL} * max(1, max|ref|)).\n\n")
    md = head + table(rows) + "\n"
    cells = "".join(
        f"<tr><td>{'output' if r['output'] else 'layer'}</td><td>{html.escape(n)}</td>"
        f"<td>{html.escape(r['torch_name'])}</td><td>{list(r['shape'])}</td><td>{r['max_abs']:.3g}</td>"
        f"<td>{r['max_rel']:.3g}</td><td>{'yes' if r['ok'] else '<b>NO</b>'}</td></tr>" for n, r in rows.items())
    page = (f"<html><body><h1>U-GAT-IT parity report</h1><p>Checkpoint: {html.escape(source)}</p>"
            f"<p>Config: {html.escape(str(cfg))}</p><p>{len(rows)} tensors compared, {n_bad} over tolerance.</p>"
            f"<table border=1><tr><th>kind</th><th>TF name</th><th>torch name</th><th>shape</th><th>max abs</th>"
            f"<th>max rel</th><th>ok</th></tr>{cells}</table></body></html>")
    from ugatit_common.results import write_text_atomic
    write_text_atomic(os.path.join(out_dir, "parity_report.md"), md)
    write_text_atomic(os.path.join(out_dir, "parity_report.html"), page)
    return os.path.join(out_dir, "parity_report.html")
