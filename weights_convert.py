"""Official TF U-GAT-IT checkpoints ⇄ PyTorch (`torch_port`) weights.

The naming rule is the whole mapping: the TF variable path with `/` → `.`, the `conv2d/` or
`dense/` component of tf.layers variables dropped, and `kernel` → `weight` (conv kernels
HWIO → OIHW, dense/CAM kernels transposed). Spectral-norm `u`, biases and norm
`gamma`/`beta`/`rho` keep their names and layouts. Adam slots `<var>/Adam|Adam_1` map to
`<torch name>/Adam|Adam_1`; the G optimizer's powers are `beta1_power`/`beta2_power`, D's
`beta1_power_1`/`beta2_power_1`.

TF checkpoints are read with the numpy bundle reader (no TensorFlow needed), one tensor at a
time; safetensors output is streamed, so peak memory stays near twice the largest tensor.

    python weights_convert.py tf2torch CKPT OUT.safetensors [--generators_only] [--with_optimizer]
    python weights_convert.py torch2tf IN.safetensors CKPT_OUT_PREFIX
    python weights_convert.py tf2torch CKPT OUT --verify        # run both frameworks, print max diffs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys

import numpy as np

from ugatit_common.atomic import atomic_output
from torch_port.tf_bundle import BundleReader, BundleWriter, CheckpointError, resolve_prefix, write_checkpoint_state

# TF name ↔ torch name for the optimizer's power accumulators.
POWER_NAMES = {"beta1_power": "optimizer.G.beta1_power", "beta2_power": "optimizer.G.beta2_power",
               "beta1_power_1": "optimizer.D.beta1_power", "beta2_power_1": "optimizer.D.beta2_power"}
SLOT_SUFFIXES = ("/Adam_1", "/Adam")
NETWORKS = ("generator_A", "generator_B", "discriminator_A", "discriminator_B")


class ConversionError(Exception):
    """A checkpoint that is not a U-GAT-IT one, or does not match what was asked."""


# ------------------------------------------------------------------ the naming rule
def _split_slot(name: str):
    for suffix in SLOT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def tf_to_torch_name(tf_name: str) -> str:
    """`generator_B/conv_0/conv2d/kernel` → `generator_B.conv_0.weight` (slots keep their suffix)."""
    if tf_name in POWER_NAMES:
        return POWER_NAMES[tf_name]
    base, suffix = _split_slot(tf_name)
    parts = base.split("/")
    if parts[0] not in NETWORKS:
        raise ConversionError(f"variable {tf_name!r} is not part of a U-GAT-IT network "
                              f"(expected a name under {', '.join(NETWORKS)})")
    if len(parts) >= 2 and parts[-2] in ("conv2d", "dense"):
        del parts[-2]
    if parts[-1] == "kernel":
        parts[-1] = "weight"
    return ".".join(parts) + suffix


def torch_to_tf_name(torch_name: str, sn_scopes: set[str]) -> str:
    """Inverse rule; `sn_scopes` holds the module paths that carry a `u` buffer (spectral-norm
    convs create their kernel directly under the scope, tf.layers ones under conv2d/ or dense/)."""
    inverse = {v: k for k, v in POWER_NAMES.items()}
    if torch_name in inverse:
        return inverse[torch_name]
    base, suffix = _split_slot(torch_name)
    scope, _, leaf = base.rpartition(".")
    parts = scope.split(".")
    if leaf in ("weight", "bias") and scope not in sn_scopes and parts[-1] != "CAM_logit":
        parts.append("conv2d" if _is_conv_scope(parts) else "dense")
    if leaf == "weight":
        leaf = "kernel"
    return "/".join(parts + [leaf]) + suffix


def _is_conv_scope(parts: list[str]) -> bool:
    return "MLP" not in parts


def torch_layout_view(tf_name: str, array: np.ndarray) -> np.ndarray:
    """The torch layout as a (possibly non-contiguous) view: no copy of a 1 GiB kernel."""
    base, _ = _split_slot(tf_name)
    if base.endswith("kernel"):
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if array.ndim == 2:
            return array.T
    return array


def to_torch_layout(tf_name: str, array: np.ndarray) -> np.ndarray:
    """HWIO → OIHW for conv kernels, [in, out] → [out, in] for dense/CAM kernels."""
    view = torch_layout_view(tf_name, array)
    # (np.ascontiguousarray would turn a 0-d scalar such as beta1_power into shape [1])
    return view if view is array else np.ascontiguousarray(view)


def to_tf_layout(torch_name: str, array: np.ndarray) -> np.ndarray:
    base, _ = _split_slot(torch_name)
    if base.endswith("weight"):
        if array.ndim == 4:
            return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        if array.ndim == 2:
            return np.ascontiguousarray(array.T)
    return array


# ------------------------------------------------------------------ config inference
def infer_config(shapes: dict[str, tuple], overrides: dict | None = None) -> dict:
    """light/full, ch, n_res, n_dis, img_size, sn from the TF variable shapes."""
    overrides = dict(overrides or {})
    gen = next((g for g in ("generator_B", "generator_A") if f"{g}/conv/conv2d/kernel" in shapes), None)
    if gen is None:
        raise ConversionError("not a U-GAT-IT checkpoint: no generator_B/conv/conv2d/kernel or "
                              "generator_A/conv/conv2d/kernel variable")
    ch = int(shapes[f"{gen}/conv/conv2d/kernel"][-1])
    n_res = len({m.group(1) for n in shapes for m in [re.match(rf"{gen}/resblock_(\d+)/", n)] if m})
    mlp_in, width = shapes[f"{gen}/MLP/linear_0/dense/kernel"]
    light = mlp_in == width
    # smoothing leaves no trace in the weights; n_dis/sn are the official defaults without discriminators
    cfg = {"light": bool(light), "ch": ch, "n_res": n_res, "img_ch": int(shapes[f"{gen}/conv/conv2d/kernel"][2]),
           "smoothing": True, "n_dis": 6, "sn": True}
    if light:
        cfg["img_size"] = 256  # a light model's weights do not fix the image size: official default
    else:
        side = math.isqrt(mlp_in // (ch * 4))
        if side * side * ch * 4 != mlp_in:
            raise ConversionError(f"{gen}/MLP/linear_0/dense/kernel has {mlp_in} inputs, not (img_size/4)^2 * ch*4")
        cfg["img_size"] = side * 4
    dis = next((d for d in ("discriminator_A", "discriminator_B") if f"{d}/global/conv_0/kernel" in shapes
                or f"{d}/global/conv_0/conv2d/kernel" in shapes), None)
    if dis is not None:
        cfg["sn"] = f"{dis}/global/conv_0/u" in shapes
        n_global = len({m.group(1) for n in shapes for m in [re.match(rf"{dis}/global/conv_(\d+)/", n)] if m})
        cfg["n_dis"] = n_global + 1
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


# ------------------------------------------------------------------ reading
def _selected(names, generators_only: bool, with_optimizer: bool):
    for name in names:
        base, suffix = _split_slot(name)
        if name in POWER_NAMES or suffix:
            if not with_optimizer or (generators_only and not base.startswith("generator")):
                continue
        elif name.startswith("discriminator") and generators_only:
            continue
        elif not name.startswith(NETWORKS):
            continue  # e.g. _CHECKPOINTABLE_OBJECT_GRAPH, global_step
        yield name


def iter_tf_tensors(path: str, generators_only=False, with_optimizer=False):
    """Yield (torch_name, torch-layout ndarray) one at a time from a TF checkpoint."""
    with BundleReader(path) as r:
        for name in _selected(r.keys(), generators_only, with_optimizer):
            yield tf_to_torch_name(name), to_torch_layout(name, r.read(name))


def checkpoint_step(path: str) -> int:
    m = re.search(r"-(\d+)$", resolve_prefix(path))
    return int(m.group(1)) if m else 0


def read_tf_config(path: str, overrides: dict | None = None) -> dict:
    with BundleReader(path) as r:
        return infer_config({n: r.shape(n) for n in r.keys()}, overrides)


def tf_to_torch(path: str, generators_only: bool = False, overrides: dict | None = None):
    """(config, state) from an official TF checkpoint folder or prefix; state keys are
    `torch_port.build_ugatit(config)` state-dict keys, `u` buffers included."""
    import torch
    cfg = read_tf_config(path, overrides)
    state = {n: torch.from_numpy(a) for n, a in iter_tf_tensors(path, generators_only)}
    return cfg, state


def read_tf_training_state(path: str, overrides: dict | None = None) -> dict:
    """Everything a torch run needs to continue an official TF run: weights, Adam slots of both
    optimizers, their powers, and the step counter from the checkpoint name."""
    import torch
    out = {"config": read_tf_config(path, overrides), "model": {}, "G_slots": {}, "D_slots": {},
           "step": checkpoint_step(path)}
    powers = {}
    for name, array in iter_tf_tensors(path, with_optimizer=True):
        t = torch.from_numpy(np.array(array))
        if name.startswith("optimizer."):
            powers[name] = t
        elif name.endswith(SLOT_SUFFIXES):
            out["G_slots" if name.startswith("generator") else "D_slots"][name] = t
        else:
            out["model"][name] = t
    if len(powers) != 4:
        raise ConversionError(f"{resolve_prefix(path)}: no Adam state (beta1_power, beta1_power_1, ...): "
                              f"not a training checkpoint")
    out["G_powers"] = (powers["optimizer.G.beta1_power"], powers["optimizer.G.beta2_power"])
    out["D_powers"] = (powers["optimizer.D.beta1_power"], powers["optimizer.D.beta2_power"])
    return out


def is_tf_checkpoint_folder(folder: str) -> bool:
    try:
        resolve_prefix(folder)
        return os.path.isfile(os.path.join(folder, "checkpoint"))
    except CheckpointError:
        return False


# ------------------------------------------------------------------ safetensors, streamed
_ST_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int32"): "I32",
              np.dtype("int64"): "I64", np.dtype("float16"): "F16", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}


_TILE_BYTES = 64 << 20


def _write_array(f, array: np.ndarray, dtype) -> None:
    """Write `array` C-ordered, little-endian, in tiles of <= 64 MiB along its first axis, so a
    transposed view is never copied whole (a 16-row tile of a transposed [in, out] kernel reads
    one cache line per source row)."""
    dt = np.dtype(dtype).newbyteorder("<")
    if array.ndim == 0 or array.nbytes <= _TILE_BYTES:
        f.write(np.ascontiguousarray(array, dtype=dt).data)
        return
    rows = max(1, _TILE_BYTES // max(1, array[0].nbytes))
    for i in range(0, array.shape[0], rows):
        f.write(np.ascontiguousarray(array[i:i + rows], dtype=dt).data)


def write_safetensors_streamed(out_path: str, specs: list, produce, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor. `specs`: [(name, shape, dtype)] in file order;
    `produce()` yields (name, ndarray) in the same order. Atomic: temp file, then rename.
    Only one tensor is alive at a time: each is released before the next is produced."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(out_path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        arrays = produce()
        for name, shape, dtype in specs:
            got_name, array = next(arrays)
            if got_name != name or tuple(array.shape) != tuple(shape):
                raise ConversionError(f"internal: expected {name} {shape}, got {got_name} {array.shape}")
            _write_array(f, array, dtype)
            del array  # release before the next read (the MLP kernels are 1 GiB each)
        f.flush()
        os.fsync(f.fileno())


def convert_tf_to_file(ckpt: str, out: str, generators_only=False, with_optimizer=False,
                       overrides: dict | None = None, progress=True) -> dict:
    """Stream a TF checkpoint into `out` (.safetensors, or .pt on request). Returns the config."""
    from tqdm import tqdm
    with BundleReader(ckpt) as r:
        cfg = infer_config({n: r.shape(n) for n in r.keys()}, overrides)
        names = list(_selected(r.keys(), generators_only, with_optimizer))
        specs = []
        for n in names:
            shape = r.shape(n)
            base, _ = _split_slot(n)
            if base.endswith("kernel"):
                shape = tuple(shape[i] for i in ((3, 2, 0, 1) if len(shape) == 4 else (1, 0)))
            specs.append((tf_to_torch_name(n), tuple(shape), r.dtype(n)))
        total = sum(r.nbytes(n) for n in names)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tf2torch", disable=not progress)

        def produce():
            for n in names:
                bar.update(r.nbytes(n))
                # a view: the writer copies it tile by tile; no local keeps it alive afterwards
                yield tf_to_torch_name(n), torch_layout_view(n, r.read(n))

        meta = {"format": "pt", "ugatit_config": json.dumps(cfg), "step": checkpoint_step(ckpt),
                "source": os.path.basename(r.prefix)}
        if out.endswith(".pt"):
            import torch
            state = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in produce()}
            _atomic_torch_save({"state": state, "config": cfg, "step": meta["step"]}, out)
        else:
            write_safetensors_streamed(out, specs, produce, meta)
        bar.close()
    return cfg


def _atomic_torch_save(obj, out):
    import torch
    with atomic_output(out) as tmp:
        torch.save(obj, tmp)


def load_torch_weights(path: str):
    """(state, metadata) from a .safetensors file or a .pt written by this tool (weights_only)."""
    import torch
    if path.endswith(".pt"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["state"] if isinstance(obj, dict) and "state" in obj else obj
        meta = {"ugatit_config": json.dumps(obj.get("config", {})), "step": obj.get("step", 0)} \
            if isinstance(obj, dict) and "state" in obj else {}
        return state, meta
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    return load_file(path), meta


def torch_to_tf(state: dict, prefix: str, step: int | None = None) -> str:
    """Write a torch state (weights, optional `/Adam` slots and `optimizer.*` powers) as an
    official-layout TF checkpoint at `prefix`, plus the folder's `checkpoint` file. Atomic."""
    sn_scopes = {k[: -len(".u")] for k in state if k.endswith(".u")}
    entries = sorted((torch_to_tf_name(k, sn_scopes), k) for k in state)
    with BundleWriter(prefix) as w:
        for tf_name, k in entries:
            w.add(tf_name, to_tf_layout(k, np.asarray(state[k].detach().cpu().numpy()
                                                      if hasattr(state[k], "detach") else state[k])))
        w.finish()
    write_checkpoint_state(os.path.dirname(os.path.abspath(prefix)), os.path.basename(prefix))
    return prefix


# ------------------------------------------------------------------ verify
def verify(ckpt: str, cfg: dict, seed: int = 0) -> dict:
    """Run tf_reference and torch_port on the same random input with the checkpoint's weights;
    max |diff| per output (generators: image, CAM logits; discriminators: logits, CAM logits)."""
    from parity_tests.harness import compare_networks
    results = compare_networks(ckpt, cfg, seed=seed)
    return {name: r["max_abs"] for name, r in results.items() if r["output"]}


# ------------------------------------------------------------------ command line
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "tf2onnx":  # ONNX export of a TF checkpoint's generator (torch_port/export.py)
        from torch_port.export import tf2onnx_main
        return tf2onnx_main(argv[1:])
    p = argparse.ArgumentParser(description="Convert U-GAT-IT checkpoints between TensorFlow and PyTorch")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("tf2torch", help="official TF checkpoint → safetensors (or .pt)")
    a.add_argument("ckpt", help="checkpoint folder (with its `checkpoint` file) or prefix")
    a.add_argument("out", help="output .safetensors (default format) or .pt")
    a.add_argument("--generators_only", action="store_true", help="keep only generator_A/B")
    a.add_argument("--with_optimizer", action="store_true", help="carry Adam slots, powers and the step counter")
    a.add_argument("--img_size", type=int, help="image size (a light model's weights do not fix it; default 256)")
    a.add_argument("--smoothing", choices=["True", "False"], help="AdaLIN smoothing (not stored in weights)")
    a.add_argument("--verify", action="store_true", help="run TF and torch on the same input, print max diffs")
    a.add_argument("--report", metavar="DIR", help="write the per-layer parity report (Markdown + HTML) to DIR")
    b = sub.add_parser("torch2tf", help="safetensors/.pt → official-layout TF checkpoint")
    b.add_argument("inp")
    b.add_argument("ckpt_out", help="checkpoint prefix to write, e.g. checkpoint/X/UGATIT_light.model-10")
    args = p.parse_args(argv)
    try:
        if args.cmd == "tf2torch":
            overrides = {"img_size": args.img_size,
                         "smoothing": None if args.smoothing is None else args.smoothing == "True"}
            if os.path.isdir(args.out):
                raise ConversionError(f"output {args.out!r} is a folder; give a file name ending in .safetensors or .pt")
            cfg = convert_tf_to_file(args.ckpt, args.out, args.generators_only, args.with_optimizer, overrides)
            print("inferred config: " + json.dumps(cfg))
            print(f"wrote {args.out}")
            if args.verify or args.report:
                from parity_tests.harness import compare_networks, write_report
                results = compare_networks(args.ckpt, cfg)
                for name, r in results.items():
                    if r["output"]:
                        print(f"  {name:45s} max |diff| {r['max_abs']:.3g}")
                if args.report:
                    print("report: " + write_report(results, cfg, args.report, args.ckpt))
        else:
            state, meta = load_torch_weights(args.inp)
            step = int(meta.get("step", 0)) if meta else 0
            prefix = args.ckpt_out
            if not re.search(r"-\d+$", prefix):
                prefix = f"{prefix}-{step}"
            torch_to_tf(state, prefix)
            print(f"wrote {prefix}.index / .data-00000-of-00001 and {os.path.dirname(os.path.abspath(prefix))}/checkpoint")
    except (ConversionError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
