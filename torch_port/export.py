"""Deployable ONNX export of the port's generators, verified before the file is written.

    python -m torch_port export CKPT OUT.onnx --direction a2b|b2a      # the port's checkpoints
    python weights_convert.py tf2onnx CKPT OUT.onnx --direction a2b    # official TF checkpoints
    python -m morph export CKPT OUT.onnx                               # Morph-UGATIT (morph/export.py)

The contract of every exported file (recorded in its metadata, `ugatit.*` keys):
  input  `image`       float32 [B, C, H, W] in [-1, 1], B dynamic (official preprocessing:
                       RGB / 127.5 - 1); Morph config C adds `w` float32 [B, w_dim]
  output `translated`  float32 [B, C, H, W] in [-1, 1]
         `cam_logit`   float32 [B, 2] (the CAM logit: GAP, GMP)
         `heatmap`     float32 [B, H/4, W/4] (the channel sum the official generator returns)
  --io uint8: `image` and `translated` are uint8 [B, H, W, C] RGB pictures instead; the
  official pre- (x / 127.5 - 1) and post-processing (clip, (y + 1) / 2 * 255, truncate) run
  in the graph. --fp16: the weights and arithmetic are float16, inputs and outputs unchanged.
  Opset `OPSET` (pinned). Generators carry no spectral norm, so no forward assigns any state:
  the graph is a pure function (checked: a module with a spectral-norm layer is refused, and
  the graph's outputs are exactly the three above).

Verification (on by default; a failure writes nothing and exits 1), at batch 1 and 2 on a
seeded uniform [-1, 1] input: ONNX Runtime (CPU) in float32, the port in float32 and float64,
and tf_reference in float32 when importable. Per output tensor, against each float32 framework:
  |ort - ref32| <= 1e-5 * max(1, max|ref32|)                                   (FLOAT32_TOL)
or, where float32 rounding has grown through ~40 layers, ONNX Runtime's own rounding is of
the same size: RMS(ort - port64) <= 3 * RMS(ref32 - port64)                    (RMS_FACTOR)
port64 is the float64 truth (the parity suite proves it equal to TF's float64 graph to 1e-9).
uint8 pictures: at most 1 count from the port's float32 picture (a float32 difference of 1e-6
can cross an integer boundary) on at most 1% of the values. fp16: |ort16 - port64| <=
FP16_TOL * max(1, max|port64|) (measured, see FP16_TOL).

OUT follows ugatit_common.output_guard (checked before any work): never one of the inputs,
never inside the input checkpoint's folder or a folder a live run owns, never over a file that
is not an ONNX model; over an ONNX model with --overwrite only; a folder gets <direction>.onnx.
The generators' weights must be finite (NaN / inf: exit 2 naming the tensor).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

from ugatit_common import float_error
from ugatit_common import options as opt
from ugatit_common import strict_json
from ugatit_common.float_error import max_abs as _max_abs, rms as _rms, scale as _scale
from ugatit_common.atomic import write_files_atomic

__all__ = ["OPSET", "FLOAT32_TOL", "RMS_FACTOR", "FP16_TOL", "UINT8_COUNTS", "OUTPUTS", "ExportError",
           "VerificationFailed", "Deployable", "generator_from_state", "to_onnx", "verify_model",
           "verify_file", "export", "tf_generator_runner", "load_checkpoint", "main", "tf2onnx_main"]

OPSET = 18
FLOAT32_TOL = 1e-5   # float32 vs float32: summation order over ~40 layers (the parity suite's former bound)
RMS_FACTOR = float_error.RMS_FACTOR  # the parity suite's factor on a float32 run's own rounding error
# fp16: float16 keeps 11 significant bits (relative rounding 4.9e-4 per operation). Measured
# max |ort16 - port64| / max(1, max|port64|) on ONNX Runtime CPU, batch 1 and 2, uniform inputs:
# the official golden light 64 px checkpoint 1.0e-3..1.2e-3 (translated), 1e-4..3e-4 (CAM logit,
# heatmap); random light/full 32-64 px ch 2-8 models 1.4e-3..3.2e-3; a random light 256 px ch 64
# model 6.0e-3..6.6e-3 (translated), 1.0e-3 (CAM logit), 7.6e-4 (heatmap). The budget is ~4.5x
# the largest. fp16 is judged against the float64 truth, not against a float32 run.
FP16_TOL = 3e-2
UINT8_COUNTS = 1       # uint8 pictures: max |ort - port| in counts (fp32)
UINT8_SHARE = 0.01     # ... on at most this share of the values
INPUT = "image"
W_INPUT = "w"
OUTPUTS = ("translated", "cam_logit", "heatmap")
IO_KINDS = ("float", "uint8")
PRECISIONS = ("fp32", "fp16")
EXIT_VERIFY = 1
EXIT_USAGE = 2
BUDGET = (f"float32: per output tensor |ort - ref32| <= {FLOAT32_TOL:g} * max(1, max|ref32|) against the port's "
          f"float32 run and tf_reference's (when importable), or RMS(ort - port64) <= {RMS_FACTOR:g} * "
          f"RMS(ref32 - port64) with the port's float64 run as the truth; uint8 pictures: at most "
          f"{UINT8_COUNTS} count on at most {UINT8_SHARE:.0%} of the values; fp16: |ort - port64| <= "
          f"{FP16_TOL:g} * max(1, max|port64|)")


class ExportError(opt.OptionError):
    """Bad input: an unreadable checkpoint, a wrong option, a model that cannot be exported."""


class VerificationFailed(RuntimeError):
    """ONNX Runtime's output is outside the budget; `report` holds every figure."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# -- the graph -------------------------------------------------------------------------------------

class Deployable(nn.Module):
    """The contract around a generator-like `core` (forward(x, *extra) -> (image, cam_logit,
    heatmap) on NCHW [-1, 1]): optional uint8 NHWC pictures in and out, optional float16
    arithmetic with float32 inputs and outputs."""

    def __init__(self, core: nn.Module, io: str = "float", precision: str = "fp32"):
        super().__init__()
        if io not in IO_KINDS:
            raise ExportError(f"--io={io!r}: expected one of {', '.join(IO_KINDS)}")
        if precision not in PRECISIONS:
            raise ExportError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.core, self.io, self.precision = core, io, precision

    def run(self, image, *extra):
        x = image
        if self.io == "uint8":
            x = x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0  # official: x / 127.5 - 1
        if self.precision == "fp16":
            x, extra = x.half(), tuple(e.half() for e in extra)
        y, cam, heat = self.core(x, *extra)
        y, cam, heat = y.float(), cam.float(), heat.float()
        if self.io == "uint8":
            # official inverse transform ((y + 1) / 2) * 255 and astype(uint8) (truncation), clipped
            y = torch.floor((torch.clamp(y, -1.0, 1.0) + 1.0) / 2.0 * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        return y, cam, heat


class _ImageOnly(Deployable):
    def forward(self, image):
        return self.run(image)


class _ImageAndW(Deployable):
    def forward(self, image, w):
        return self.run(image, w)


def generator_from_state(cfg: dict, state: dict, direction: str) -> nn.Module:
    """The port's generator for `direction` (a2b: generator_B, b2a: generator_A), in eval mode,
    loaded strictly from a state with `generator_X.` keys (a UGATIT state dict)."""
    from .networks import Generator
    prefix = {"a2b": "generator_B.", "b2a": "generator_A."}.get(direction)
    if prefix is None:
        raise ExportError(f"--direction={direction!r}: expected a2b or b2a")
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ExportError(f"the checkpoint has no {prefix[:-1]} (the {direction} generator)")
    gen = Generator(ch=int(cfg["ch"]), n_res=int(cfg["n_res"]), img_size=int(cfg["img_size"]),
                    light=bool(cfg["light"]), smoothing=bool(cfg["smoothing"]), img_ch=int(cfg.get("img_ch", 3)))
    message = opt.checkpoint_mismatch(f"{prefix[:-1]} of the checkpoint",
                                      {k: tuple(v.shape) for k, v in gen.state_dict().items()},
                                      {k: tuple(v.shape) for k, v in sub.items()})
    if message:
        raise ExportError(message)
    gen.load_state_dict({k: torch.as_tensor(v) for k, v in sub.items()}, strict=True)
    return gen.float().eval()


def _unwrapped(core: nn.Module) -> nn.Module:
    """The module a `torch_port.optimize` result runs: fp32 / tf32 run the module itself, which is
    exported; a bf16 / fp16 one holds weights rounded to that dtype, which an export labelled
    float32 (and verified against those same weights) would pass off as the exact port: refused."""
    from .fast import OptimizedModule
    if not isinstance(core, OptimizedModule):
        return core
    if core.dtype != torch.float32:
        raise ExportError(f"the module is torch_port.optimize(..., precision={core.precision!r}), whose weights are "
                          f"rounded to {core.dtype}: export the float32 module it was made from (float16 ONNX: "
                          f"precision='fp16', --fp16)")
    return core.inner


def _check_config_fits(core: nn.Module, cfg: dict) -> None:
    """ExportError when the generator cannot take the picture `cfg` describes (a full model's MLP
    fixes its size): said before tracing, not as torch.export's wrapped failure."""
    check = getattr(core, "check_input", None)
    if check is None:
        return
    s, c = int(cfg["img_size"]), int(cfg.get("img_ch", 3))
    try:
        check(torch.zeros(1, c, s, s, device=next(core.parameters()).device))
    except (ValueError, TypeError) as e:
        raise ExportError(f"the config's img_size={s}, img_ch={c} does not fit the module: {e}") from e


def _check_stateless(core: nn.Module) -> None:
    from .ops import SpectralNormMixin
    for name, m in core.named_modules():
        if isinstance(m, SpectralNormMixin) and getattr(m, "sn", False):
            raise ExportError(f"{name or type(core).__name__} uses spectral norm, whose forward assigns its `u` "
                              f"buffer (a training-time update): only generators (no spectral norm) are exported")


def _input_shapes(cfg: dict, io: str, batch: int, extra: dict) -> dict:
    s, c = int(cfg["img_size"]), int(cfg.get("img_ch", 3))
    shapes = {INPUT: (batch, s, s, c) if io == "uint8" else (batch, c, s, s)}
    shapes.update({k: (batch,) + tuple(v) for k, v in extra.items()})
    return shapes


@contextlib.contextmanager
def _quiet():
    """The exporter reports progress on stdout and warns about torchvision ops it cannot
    register (there is no torchvision here); neither concerns the user."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _staged_mean(x: torch.Tensor, dims) -> torch.Tensor:
    """The mean over `dims` as means over one axis at a time, last axis first (the same value:
    equal-sized groups). ONNX Runtime's CPU ReduceMean loses float32 precision with the number of
    values it reduces (measured), so one ReduceMean over the C*H*W = 4.2 M elements of a 256 px
    LIN made the light 256 px ch 64 generator's float32 error 50x the port's (RMS 3.2e-5 vs
    6.2e-7 against float64; TF 1.7e-6); one axis at a time (<= 256 elements each) it is 5.8e-7."""
    for d in sorted(dims, reverse=True):
        x = x.mean(d, keepdim=True)
    return x


def _staged_normalize(x: torch.Tensor, dims, eps: float) -> torch.Tensor:
    """ops.instance_normalize / layer_normalize (TF's order: centre, then divide by
    sqrt(biased variance + eps)) with staged means."""
    centered = x - _staged_mean(x, dims)
    return centered / torch.sqrt(_staged_mean(centered.square(), dims) + eps)


@contextlib.contextmanager
def export_forms():
    """While tracing for export, AdaLIN / LIN normalise with `_staged_normalize` (the port's
    formula, staged reductions); the port itself is untouched outside the block, and the
    verification compares the exported graph with the port's own form."""
    from . import ops
    saved = ops.instance_normalize, ops.layer_normalize
    ops.instance_normalize = lambda x, eps: _staged_normalize(x, (2, 3), eps)
    ops.layer_normalize = lambda x, eps: _staged_normalize(x, tuple(range(1, x.dim())), eps)
    try:
        yield
    finally:
        ops.instance_normalize, ops.layer_normalize = saved


def _float32_eval(core: nn.Module) -> nn.Module:
    """`core` itself when it is float32, in eval mode and on the CPU (nothing here mutates it), else
    a copy made so (a full 256 px generator is 1.1 GB: no needless copies). The CPU: the export is
    traced with CPU example inputs and verified in ONNX Runtime's CPU provider, so a module on a
    GPU is exported from a CPU copy (the same weights), leaving the caller's on its GPU."""
    tensors = list(core.parameters()) + list(core.buffers())
    if not core.training and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        return core
    # each weight is copied straight to the CPU as float32 (the deep copy takes these for the
    # originals), so a GPU module costs no second copy on its GPU and no float64 copy anywhere
    memo = {}
    for t in tensors:
        cpu = t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype, copy=True)
        memo[id(t)] = nn.Parameter(cpu, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else cpu
    return copy.deepcopy(core, memo).eval()


def to_onnx(core: nn.Module, cfg: dict, io: str = "float", precision: str = "fp32",
            extra_inputs: dict | None = None):
    """The ONNX ModelProto of `Deployable(core)` with a dynamic batch axis on every input.
    extra_inputs: {name: per-sample shape} after `image` (Morph: {"w": (w_dim,)}).
    `core` is never modified (fp16 converts a copy)."""
    import onnx  # noqa: F401  (fail early with a clear ImportError)
    extra_inputs = dict(extra_inputs or {})
    core = _unwrapped(core)
    _check_stateless(core)
    _check_config_fits(core, cfg)
    core = _float32_eval(core)
    if precision == "fp16":
        core = copy.deepcopy(core).half()
    wrapper = (_ImageAndW if extra_inputs else _ImageOnly)(core, io, precision).eval()
    # example batch 2: torch.export specialises a size-1 axis to the constant 1
    shapes = _input_shapes(cfg, io, 2, extra_inputs)
    gen = torch.Generator().manual_seed(0)
    examples = []
    for name, shape in shapes.items():
        if name == INPUT and io == "uint8":
            examples.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
        else:
            examples.append(torch.rand(shape, generator=gen) * 2 - 1)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = tuple({0: batch} for _ in examples)
    with _quiet(), torch.no_grad(), export_forms():
        program = torch.onnx.export(wrapper, tuple(examples), dynamo=True, input_names=list(shapes),
                                    output_names=list(OUTPUTS), opset_version=OPSET, dynamic_shapes=dynamic,
                                    external_data=False, optimize=True, verbose=False)
    model = program.model_proto
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(shapes) or got_out != list(OUTPUTS):
        raise ExportError(f"internal: the exported graph has inputs {got_in} and outputs {got_out}, "
                          f"expected {list(shapes)} and {list(OUTPUTS)} (a state update would add outputs)")
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise ExportError(f"internal: the exporter wrote opset {opsets}, expected {OPSET}")
    return model


# -- reference runs --------------------------------------------------------------------------------

def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def to_uint8_pictures(images_nchw) -> np.ndarray:
    """The official inverse transform on NCHW [-1, 1] images, in float64: uint8 NHWC pictures."""
    from ugatit_common.results import to_uint8
    return to_uint8(np.asarray(images_nchw, np.float64).transpose(0, 2, 3, 1))


def verification_inputs(cfg: dict, io: str, batch: int, seed: int = 0, extra=None) -> dict:
    """Seeded inputs for one batch: {name: ndarray} as ONNX Runtime takes them. Float images are
    uniform in [-1, 1]; uint8 pictures uniform in 0..255. `extra(batch)` gives the other inputs."""
    rng = np.random.default_rng([seed, batch])
    s, c = int(cfg["img_size"]), int(cfg.get("img_ch", 3))
    if io == "uint8":
        feeds = {INPUT: rng.integers(0, 256, (batch, s, s, c), dtype=np.uint8)}
    else:
        feeds = {INPUT: rng.uniform(-1, 1, (batch, c, s, s)).astype(np.float32)}
    if extra is not None:
        feeds.update({k: np.asarray(v, np.float32) for k, v in extra(batch).items()})
    return feeds


def _float_image(feeds: dict, io: str) -> np.ndarray:
    """The NCHW float64 image the graph's input stands for (uint8: the official x / 127.5 - 1)."""
    x = feeds[INPUT]
    if io == "uint8":
        return x.astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1
    return x.astype(np.float64)


@torch.no_grad()
def _port_run(core: nn.Module, x: np.ndarray, extra: list[np.ndarray], dtype) -> dict:
    args = [torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)) for a in [x] + extra]
    return dict(zip(OUTPUTS, (_np(t) for t in core(*args))))


def tf_generator_runner(cfg: dict, core_state: dict, scope: str, threads: int | None = None):
    """A callable x_nhwc (float32) -> {translated NCHW, cam_logit, heatmap [B, h, w]} running
    tf_reference's official generator graph `scope` in float32 with the port's weights (mapped by
    the naming rule), or None when tf_reference / TensorFlow is not importable. `threads`: TF's
    intra-op threads (default: TF's own choice)."""
    try:
        from tf_reference.compat import session_config, tf
        from tf_reference.model import UGATITGraph

        from ugatit_common.tf_checkpoint import names as wc
    except ImportError:
        return None
    full_cfg = opt.config_from(cfg)
    sessions = {}

    def session(shape):
        if shape not in sessions:
            g = tf.Graph()
            with g.as_default():
                x = tf.placeholder(tf.float32, shape)
                image, cam, heat = UGATITGraph(full_cfg).generator(x, scope=scope)
                variables = tf.global_variables()
                feed = {}
                for v in variables:
                    key = wc.tf_to_torch_name(v.op.name)[len(scope) + 1:]
                    if key not in core_state:
                        raise ExportError(f"internal: TF variable {v.op.name} has no port weight {key}")
                    feed[v.initial_value] = wc.to_tf_layout(key, _np(core_state[key])).astype(np.float32)
                config = tf.ConfigProto()
                if threads:
                    config.intra_op_parallelism_threads, config.inter_op_parallelism_threads = int(threads), 1
                sess = tf.Session(graph=g, config=session_config(g, config))
                sess.run([v.initializer for v in variables], feed)
            sessions[shape] = (sess, x, (image, cam, heat))
        return sessions[shape]

    def run(x_nhwc: np.ndarray) -> dict:
        x_nhwc = np.asarray(x_nhwc, np.float32)
        sess, x, fetch = session(tuple(x_nhwc.shape))
        image, cam, heat = sess.run(fetch, {x: x_nhwc})
        b = x_nhwc.shape[0]
        return {"translated": image.transpose(0, 3, 1, 2), "cam_logit": cam,
                "heatmap": heat.reshape(b, x_nhwc.shape[1] // 4, x_nhwc.shape[2] // 4)}  # TF squeezes B = 1

    def close():
        for sess, _, _ in sessions.values():
            sess.close()
    run.close = close
    return run


# -- verification ----------------------------------------------------------------------------------

def judge_float32(ort: np.ndarray, ref32: np.ndarray, truth: np.ndarray) -> dict:
    tol = FLOAT32_TOL * _scale(ref32)
    diff = _max_abs(ort, ref32)
    rms_ort, rms_ref = _rms(ort, truth), _rms(ref32, truth)
    ok_max = diff <= tol
    ok_rms = rms_ort <= RMS_FACTOR * rms_ref
    return {"max_abs": diff, "tol": tol, "rms_vs_truth": rms_ort, "ref_rms_vs_truth": rms_ref,
            "ok": bool(ok_max or ok_rms), "by": "max" if ok_max else ("rms" if ok_rms else "none")}


def _judge_pictures(ort: np.ndarray, ref: np.ndarray, limit: int, share: float) -> dict:
    counts = np.abs(ort.astype(np.int32) - ref.astype(np.int32))
    worst, off = int(counts.max()), float(np.mean(counts > 0))
    return {"max_counts": worst, "share_differing": off, "limit_counts": limit, "limit_share": share,
            "ok": bool(worst <= limit and off <= share)}


def _fp16_picture_limit() -> int:
    return int(math.ceil(FP16_TOL * 127.5)) + 1


def _judge_output(name: str, ort: np.ndarray, port32: dict, truth: dict, tf32: dict | None, io: str,
                  precision: str) -> dict:
    picture = io == "uint8" and name == "translated"
    row = {}
    if precision == "fp16":
        if picture:
            row["truth"] = _judge_pictures(ort, to_uint8_pictures(truth[name]), _fp16_picture_limit(), 1.0)
        else:
            tol = FP16_TOL * _scale(truth[name])
            diff = _max_abs(ort, truth[name])
            row["truth"] = {"max_abs": diff, "tol": tol, "ok": bool(diff <= tol)}
        if tf32 is not None:  # information only: fp16 is judged against the truth
            row["tf32_max_abs"] = (_max_abs(ort, to_uint8_pictures(tf32[name])) if picture
                                   else _max_abs(ort, tf32[name]))
    elif picture:
        row["port32"] = _judge_pictures(ort, to_uint8_pictures(port32[name]), UINT8_COUNTS, UINT8_SHARE)
        if tf32 is not None:
            row["tf32"] = _judge_pictures(ort, to_uint8_pictures(tf32[name]), UINT8_COUNTS, UINT8_SHARE)
    else:
        row["port32"] = judge_float32(ort, port32[name], truth[name])
        if tf32 is not None:
            row["tf32"] = judge_float32(ort, tf32[name], truth[name])
    row["ok"] = all(v["ok"] for v in row.values() if isinstance(v, dict))
    return row


def _session(model_bytes: bytes):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def refuse_non_finite_outputs(port32: dict, got: dict, batch: int, precision: str) -> None:
    """NonFiniteOutput (exit 2; nothing written) when the port's float32 run, or the exported
    model, gives NaN / inf on the verification input: finite weights that overflow (near float32's
    limit; in float16 past 65504), not an exporter fault - without this the verification would
    fail on NaN differences (exit 1, an internal error). --no_verify runs neither."""
    from ugatit_common.finite import refuse_non_finite_output
    for name in OUTPUTS:
        refuse_non_finite_output(port32[name], f"the port's float32 {name} output on the verification input "
                                               f"(batch {batch})")
    for name in OUTPUTS:
        refuse_non_finite_output(got[name], f"the exported model's {name} output on the verification input "
                                            f"(batch {batch})", precision, "--fp16")


def verify_model(model_bytes: bytes, core: nn.Module, cfg: dict, io: str = "float", precision: str = "fp32",
                 extra=None, tf_run=None, batches=(1, 2), seed: int = 0) -> dict:
    """Run the serialized model in ONNX Runtime, `core` (the port, float32 and float64) and
    `tf_run` (tf_generator_runner, optional) on the same seeded inputs at each batch size; judge
    every output by the budget (module docstring). Returns the report; raises VerificationFailed
    (message: the worst failing figure) when any output is outside it."""
    session = _session(model_bytes)
    core32 = _float32_eval(_unwrapped(core))
    core64 = copy.deepcopy(core32).double()
    report = {"budget": BUDGET, "io": io, "precision": precision, "seed": seed, "batches": {},
              "tf_reference": "compared" if tf_run is not None else "not run"}
    failures = []
    for b in batches:
        feeds = verification_inputs(cfg, io, b, seed, extra)
        x64 = _float_image(feeds, io)
        others = [feeds[k] for k in feeds if k != INPUT]
        port32 = _port_run(core32, x64.astype(np.float32), others, np.float32)
        truth = _port_run(core64, x64, [o.astype(np.float64) for o in others], np.float64)
        tf32 = tf_run(x64.astype(np.float32).transpose(0, 2, 3, 1)) if tf_run is not None else None
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))
        refuse_non_finite_outputs(port32, got, b, precision)
        rows = {}
        for name in OUTPUTS:
            want_shape = port32[name].shape if not (io == "uint8" and name == "translated") \
                else to_uint8_pictures(port32[name]).shape
            if got[name].shape != want_shape:
                rows[name] = {"ok": False, "shape": [list(got[name].shape), list(want_shape)]}
                failures.append(f"batch {b} {name}: ONNX shape {list(got[name].shape)} != port {list(want_shape)}")
                continue
            rows[name] = row = _judge_output(name, got[name], port32, truth, tf32, io, precision)
            for ref, r in row.items():
                if isinstance(r, dict) and not r["ok"]:
                    figure = (f"{r['max_counts']} counts on {r['share_differing']:.2%} of values" if "max_counts" in r
                              else f"max |diff| {r['max_abs']:.3g} > {r['tol']:.3g}")
                    failures.append(f"batch {b} {name} vs {ref}: {figure}")
        report["batches"][str(b)] = rows
    report["ok"] = not failures
    if failures:
        raise VerificationFailed("verification failed: " + "; ".join(failures), report)
    return report


def verify_file(path: str, core: nn.Module, cfg: dict, **kw) -> dict:
    """verify_model on a written file; io/precision/extra as it was exported (metadata)."""
    meta = read_metadata(path)
    kw.setdefault("io", meta.get("ugatit.io", "float"))
    kw.setdefault("precision", meta.get("ugatit.precision", "fp32"))
    with open(path, "rb") as f:
        return verify_model(f.read(), core, cfg, **kw)


def read_metadata(path: str) -> dict:
    """The model's metadata_props as a dict (weights are not loaded)."""
    import onnx
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is "not an ONNX file"
        raise ExportError(f"{path!r}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    return {p.key: p.value for p in model.metadata_props}


def summary(report: dict) -> list[str]:
    """One line per batch and output with the figures."""
    lines = []
    for b, rows in report["batches"].items():
        for name, row in rows.items():
            parts = []
            for ref, r in row.items():
                if not isinstance(r, dict):
                    if ref == "tf32_max_abs":
                        parts.append(f"vs tf32 {r:.3g}")
                    continue
                if "max_counts" in r:
                    parts.append(f"vs {ref} {r['max_counts']} count(s) on {r['share_differing']:.3%}")
                elif "max_abs" in r:
                    parts.append(f"vs {ref} {r['max_abs']:.3g} (budget {r['tol']:.3g}"
                                 + (f", rms {r['rms_vs_truth']:.3g} vs {r['ref_rms_vs_truth']:.3g}" if "rms_vs_truth" in r
                                    else "") + ")")
            lines.append(f"  batch {b} {name:10s} " + "; ".join(parts) + ("" if row["ok"] else "  FAIL"))
    return lines


# -- export ----------------------------------------------------------------------------------------

def _versions() -> dict:
    import onnx
    import onnxruntime
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export(core: nn.Module, out: str, cfg: dict, *, direction: str, source: str, source_kind: str, step: int,
           io: str = "float", precision: str = "fp32", verify: bool = True, tf_run=None, batches=(1, 2),
           seed: int = 0, extra_inputs: dict | None = None, extra=None, metadata: dict | None = None,
           config_keys=(), mutate=None, companions: dict | None = None) -> dict:
    """Export `core` to `out` (atomically: nothing is written unless verification passes).
    Returns {"path", "report", "metadata"}; the metadata's config holds the architecture keys
    (ugatit_common.options.MODEL_KEYS) plus `config_keys`. `mutate(model_proto)` is a test seam applied before
    verification (to prove that a wrong file is caught). `companions`: {path: bytes} written with
    the model (Morph's direction codes): every file is written to a temp file first, and none
    replaces anything unless all were written. `out` may be a str or a path-like object."""
    out = os.fspath(out)
    if os.path.isdir(out):
        raise ExportError(f"output {out!r} is a folder; give a file name ending in .onnx")
    check_onnx_name(out)  # the API too: a photo.png given by mistake is never replaced by ONNX bytes
    check_generator_size(cfg.get("img_size"))
    core = _unwrapped(core)  # before the (slow) tracing
    model = to_onnx(core, cfg, io, precision, extra_inputs)
    if mutate is not None:
        mutate(model)
    report = None
    if verify:
        report = verify_model(model.SerializeToString(), core, cfg, io=io, precision=precision, extra=extra,
                              tf_run=tf_run, batches=batches, seed=seed)
    from .checkpoint import plain_config
    config_keys = set(opt.MODEL_KEYS) | set(config_keys or ())
    meta = {
        "ugatit.format": "1",
        "ugatit.config": json.dumps({k: v for k, v in plain_config(cfg).items() if k in config_keys}, sort_keys=True),
        "ugatit.direction": direction,
        "ugatit.source": source,
        "ugatit.source_kind": source_kind,
        "ugatit.step": str(int(step)),
        "ugatit.opset": str(OPSET),
        "ugatit.io": io,
        "ugatit.precision": precision,
        "ugatit.inputs": json.dumps(_io_doc(cfg, io, extra_inputs)[0]),
        "ugatit.outputs": json.dumps(_io_doc(cfg, io, extra_inputs)[1]),
        "ugatit.verification": strict_json.dumps(report) if report is not None else "not verified (--no_verify)",
        "ugatit.exporter": json.dumps(_versions()),
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    meta = {k: _utf8(v) for k, v in meta.items()}
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "faithful-ugatit"
    model.doc_string = _utf8(f"U-GAT-IT generator {direction} from {source} (step {step}); inputs/outputs: see "
                             f"the ugatit.inputs / ugatit.outputs metadata")
    data = model.SerializeToString()
    from ugatit_common.output_guard import recheck_live_run
    files = {out: data, **(companions or {})}
    for path in files:
        recheck_live_run(path)  # a training run may have taken the folder during the verification
    # all temp files written, then all renamed; a failure anywhere (a full disk, a folder gone read-only, a
    # rename failing after another) leaves every output as it was and names the one that failed
    write_files_atomic(files)
    return {"path": out, "report": report, "metadata": meta}


def _utf8(text: str) -> str:
    """`text` as valid UTF-8 for ONNX's string fields: a file name's undecodable bytes (held as
    surrogates) are written as \\xNN escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_onnx_name(path: str) -> None:
    """ExportError unless the output file's name ends in .onnx (any case): the name by which a
    later --overwrite recognises the file as this command's own output."""
    path = os.fspath(path)
    if not path.lower().endswith(".onnx"):
        raise ExportError(f"output {path!r}: give a file name ending in .onnx (or a folder)")


MIN_GENERATOR_SIZE = 8


def check_generator_size(size) -> None:
    """ExportError unless `size` is an image size the generator can run: a multiple of 4, at
    least MIN_GENERATOR_SIZE (it halves the image twice, and its norms need more than one pixel)."""
    if size is not None and (int(size) < MIN_GENERATOR_SIZE or int(size) % 4):
        raise ExportError(f"--img_size={size}: must be a multiple of 4 and at least {MIN_GENERATOR_SIZE} (the "
                          f"generator halves the image twice and its norms need more than one pixel)")


def _io_doc(cfg: dict, io: str, extra_inputs: dict | None):
    s, c = int(cfg["img_size"]), int(cfg.get("img_ch", 3))
    if io == "uint8":
        image = {"name": INPUT, "dtype": "uint8", "shape": ["batch", s, s, c], "range": "0..255 RGB"}
        translated = {"name": "translated", "dtype": "uint8", "shape": ["batch", s, s, c], "range": "0..255 RGB"}
    else:
        image = {"name": INPUT, "dtype": "float32", "shape": ["batch", c, s, s], "range": "[-1, 1] RGB"}
        translated = {"name": "translated", "dtype": "float32", "shape": ["batch", c, s, s], "range": "[-1, 1] RGB"}
    inputs = [image] + [{"name": k, "dtype": "float32", "shape": ["batch"] + list(v)}
                        for k, v in (extra_inputs or {}).items()]
    outputs = [translated, {"name": "cam_logit", "dtype": "float32", "shape": ["batch", 2]},
               {"name": "heatmap", "dtype": "float32", "shape": ["batch", s // 4, s // 4]}]
    return inputs, outputs


# -- checkpoints -----------------------------------------------------------------------------------

def load_checkpoint(path: str, overrides: dict | None = None) -> dict:
    """{"config", "state", "step", "source", "kind"} of any U-GAT-IT checkpoint
    (torch_port.checkpoint.load_any; `path`: a str or a path-like object); errors as ExportError
    (one line, exit 2)."""
    from .checkpoint import load_any
    try:
        return load_any(path, overrides)
    except ExportError:
        raise
    except opt.OptionError as e:
        raise ExportError(str(e)) from e


# -- command lines ---------------------------------------------------------------------------------

def add_export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--io", default="float", choices=IO_KINDS,
                   help="float: NCHW float32 [-1, 1] image in and out (default); uint8: NHWC uint8 RGB pictures, "
                        "official pre/post-processing in the graph")
    p.add_argument("--fp16", action="store_true", help="float16 weights and arithmetic (for GPUs); inputs/outputs unchanged")
    p.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="run ONNX Runtime, the port (float32, float64) and tf_reference before writing (default)")
    p.add_argument("--no_verify", dest="verify", action="store_false", help="skip the verification")
    p.add_argument("--tf", default="auto", choices=("auto", "on", "off"),
                   help="compare with tf_reference too: auto (when importable, default), on (required), off")
    p.add_argument("--batches", default="1,2", help="batch sizes verified (default: 1,2)")
    p.add_argument("--seed", type=opt.seed_value, default=0, help="seed of the verification inputs (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of the same kind (never "
                                                            "another kind of file, never an input)")


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise ExportError(f"--batches={text!r}: expected positive integers separated by commas, e.g. 1,2")
    return out


def _build_parser(prog: str, description: str, need_kind: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    if need_kind == "tensorflow":  # tf2onnx refuses the port's checkpoints: its help says what it takes
        p.add_argument("ckpt", type=opt.path_value, help="checkpoint: an official TF checkpoint folder or prefix (the port's checkpoints "
                                    "and .safetensors files: python -m torch_port export)")
    else:
        p.add_argument("ckpt", type=opt.path_value, help="checkpoint: an official TF checkpoint folder/prefix, a torch_port checkpoint "
                                    "folder, or a .safetensors file")
    p.add_argument("out", type=opt.path_value, help="the .onnx file to write (a folder: <direction>.onnx inside it)")
    p.add_argument("--direction", required=True, choices=("a2b", "b2a"), help="a2b (generator_B) or b2a (generator_A)")
    p.add_argument("--img_size", type=int, default=None,
                   help="image size (a light model's weights do not fix it: read from a TF checkpoint's .meta or "
                        "folder name when there, else 256; checked against what the checkpoint records)")
    p.add_argument("--smoothing", type=opt.str2bool, default=None,
                   help="AdaLIN smoothing (default: what the checkpoint records - its .meta, folder name "
                        "or config; else True, as officially)")
    add_export_flags(p)
    return p


def tf_runner_for(mode: str, cfg: dict, core_state: dict, scope: str):
    if mode == "off":
        return None
    run = tf_generator_runner(cfg, core_state, scope)
    if run is None and mode == "on":
        raise ExportError("--tf on: tf_reference (TensorFlow) is not importable here")
    return run


def print_result(result: dict, what: str) -> None:
    report = result["report"]
    print(f"wrote {result['path']} ({what}, opset {OPSET})")
    if report is None:
        print("  not verified (--no_verify)")
        return
    print(f"  verified (tf_reference: {report['tf_reference']}); budget: {report['budget']}")
    for line in summary(report):
        print(line)


def refuse_non_finite_generators(state: dict, source: str) -> None:
    """NonFiniteWeights (exit 2) naming the first generator tensor holding NaN / inf: an export or
    a translation never runs on such weights (the discriminators are not used here)."""
    from ugatit_common.finite import refuse_non_finite
    refuse_non_finite({k: v for k, v in state.items() if k.startswith("generator")}, source)


def run_export(args, loaded: dict, prog: str) -> int:
    """Shared by `python -m torch_port export` and `weights_convert.py tf2onnx`."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # checked by _cli (train.check_threads)
    refuse_non_finite_generators(loaded["state"], f"checkpoint {loaded['source']}")
    cfg = loaded["config"]
    batches = parse_batches(args.batches)
    core = generator_from_state(cfg, loaded["state"], args.direction)
    scope = "generator_B" if args.direction == "a2b" else "generator_A"
    tf_run = tf_runner_for(args.tf, cfg, core.state_dict(), scope) if args.verify else None
    precision = "fp16" if args.fp16 else "fp32"
    try:
        result = export(core, args.out, cfg, direction=args.direction, source=loaded["source"],
                        source_kind=loaded["kind"], step=loaded["step"], io=args.io, precision=precision,
                        verify=args.verify, tf_run=tf_run, batches=batches, seed=args.seed)
    finally:
        if tf_run is not None:
            tf_run.close()
    print_result(result, f"{args.direction}, io {args.io}, {precision}")
    return 0


def _cli(argv, prog: str, description: str, overrides_from, need_kind: str | None = None) -> int:
    p = _build_parser(prog, description, need_kind)
    args = p.parse_args(argv)
    from ugatit_common.output_guard import place_output, release_claims
    try:
        args.out = place_output(args.out, "onnx", [args.ckpt], args.overwrite, f"{args.direction}.onnx")
        check_onnx_name(args.out)  # after the guard's own refusals (they say more)
        parse_batches(args.batches)
        from .train import check_threads
        check_threads(args.threads)
        check_generator_size(args.img_size)
        if args.tf == "on" and not args.verify:
            raise ExportError("--tf on compares the export with tf_reference during the verification, which "
                              "--no_verify skips: give one of them")
        loaded = load_checkpoint(args.ckpt, overrides_from(args))
        if need_kind is not None and loaded["kind"] != need_kind:
            raise ExportError(f"{args.ckpt!r} is a {loaded['kind']} checkpoint, not an official TensorFlow one "
                              f"(export it with python -m torch_port export)")
        return run_export(args, loaded, prog)
    except VerificationFailed as e:
        print(f"{prog}: {e} (no file written)", file=sys.stderr)
        for line in summary(e.report):
            print(line, file=sys.stderr)
        return EXIT_VERIFY
    except (ExportError, opt.OptionError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        release_claims()  # the output claimed by place_output (output_guard.claim)


def _overrides(args) -> dict:
    return {"img_size": args.img_size, "smoothing": args.smoothing}


def main(argv=None) -> int:
    """python -m torch_port export CKPT OUT.onnx --direction a2b|b2a [...]"""
    return _cli(sys.argv[1:] if argv is None else argv, "python -m torch_port export",
                "Export a generator of a U-GAT-IT checkpoint to ONNX, verified against the port and TF", _overrides)


def tf2onnx_main(argv=None) -> int:
    """python weights_convert.py tf2onnx CKPT OUT.onnx --direction a2b|b2a [...] (no TensorFlow needed)"""
    return _cli(sys.argv[1:] if argv is None else argv, "weights_convert.py tf2onnx",
                "Export a generator of an official TF U-GAT-IT checkpoint to ONNX (no TensorFlow needed)", _overrides,
                need_kind="tensorflow")


if __name__ == "__main__":
    sys.exit(main())
