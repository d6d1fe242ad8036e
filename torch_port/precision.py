"""Dtype policy of the fast inference paths (`torch_port.optimize`, `torch_port.fast`).

Precisions: "fp32" (the exact parity path, unchanged), "bf16" (bfloat16: 8 mantissa bits,
float32's exponent range), "fp16" (float16: 11 mantissa bits, largest value 65504) and, on CUDA
only, "tf32": every tensor stays float32 and cuDNN / cuBLAS round the inputs of convolutions and
matrix products to TF32 (10 explicit mantissa bits, as fp16; sums in float32) on the tensor cores.
CPUs have no TF32 (oneDNN would run float32), so tf32 on a CPU is refused, not run as fp32.
The reduced precisions are not torch.autocast: autocast casts float32 weights on every call
(the full model's 1 GiB MLP kernel re-cast per image) and its op lists differ between CPU and
CUDA. Here each layer computes in its parameters' dtype (`torch_port.ops`: a layer casts its
input to that dtype on entry), and `lowp_plan` decides once which parameters get the reduced
dtype; the same plan holds on CPU and CUDA.

Which op runs in which dtype (D = the reduced dtype, bf16 or fp16):

| op | dtype | why |
|---|---|---|
| convolutions of the encoder, residual blocks, `conv_1x1`, adaptive blocks, `up_conv_*`, the discriminators' convs (kernel and bias) | D | nearly all of the arithmetic; the product sums accumulate in float32 inside the kernels (oneDNN, cuDNN), only the inputs, weights and outputs are rounded (unit roundoff 2^-8 bf16, 2^-11 fp16) |
| reflect / zero padding, relu, leaky relu, up-sampling, the heatmap sum | the dtype flowing in (D after a D conv) | exact (padding, relu, nearest up-sampling move values) or one rounding per element |
| instance norm, AdaLIN, LIN: moments, normalisation and affine map | float32 | a norm divides by a channel's standard deviation: rounding errors of the input are amplified by up to 1/std, and a bf16 mean / variance over H*W terms would lose the 2^-9 relative accuracy altogether where |mean| >> std. The norm's output (float32) keeps the residual stream in float32 |
| spectral norm: the power iteration (u, v, sigma) | float32, on the float32 kernel | sigma divides every output of the layer; the layer keeps its float32 `weight` for it and convolves with `weight_lowp`, a copy made once, so `u` advances exactly as on the float32 path |
| CAM (GAP / GMP pooling, the C-term logit, the channel weighting) | float32 | the logits are outputs; pooling sums H*W terms; the cost is negligible |
| output convolutions `G_logit` (-> tanh, the image) and `D_logit` | float32 | the network's outputs: a bf16 image would carry up to 2^-9 (0.25 of an 8-bit level) of output rounding alone; 3 or 1 output channels, ~2% of the generator's FLOPs |
| dense / linear layers on [B, <=256] vectors (the light MLP, the full MLP's `linear_1`, `gamma`, `beta`; Morph's mapping and style layers) | float32 | no measurable cost, and gamma / beta scale every AdaLIN output |
| the full model's `MLP.linear_0` (reads the whole flattened feature map: a 1 GiB kernel in float32 at 256 px) | D | a matrix-vector product bound by reading the kernel: half the bytes in D, cast once |

tf32 has no table of its own: no parameter changes dtype (`lowp_plan` is empty); the fast path
turns TF32 on around each call (`torch_port.fast`), so every convolution and matrix product,
the output convolutions and dense layers included, rounds its inputs to TF32; the norms,
elementwise ops and CAM pooling are float32 arithmetic. The other precisions run with TF32 off
on CUDA, so their float32 layers are float32.

Returned tensors (image, logits, heatmaps) are float32.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "OUTPUT_CONVS", "compute_dtype", "check_supported", "lowp_plan",
           "describe", "uses_tf32"]

PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs whose tensor cores take TF32
BF16_MIN_CAPABILITY = (8, 0)  # ... and bfloat16 (Volta / Turing only emulate it)
OUTPUT_CONVS = ("G_logit", "D_logit")  # official scope names of the output convolutions


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def uses_tf32(precision: str) -> bool:
    """Whether `precision` runs its float32 convolutions and matrix products in TF32."""
    compute_dtype(precision)
    return precision == "tf32"


def check_supported(precision: str, device: torch.device) -> None:
    """Raise for a precision the device cannot run; warn where it runs but slowly.

    CPU float16: torch 2.13 runs float16 convolutions in NCHW through a reference kernel on CPUs
    without AVX512-FP16 / AMX-FP16 (measured here, AMD EPYC: 25 s for one 3x3 256->256 conv at
    64x64 that takes 0.15 s in float32) - correct but unusable beyond tiny images."""
    dtype = compute_dtype(precision)
    device = torch.device(device)
    if uses_tf32(precision):
        if device.type != "cuda":
            raise ValueError(f"precision tf32: TF32 is a mode of NVIDIA tensor cores (CUDA); this device is "
                             f"{device.type}, which has none: use fp32 (the exact path) or bf16")
        if torch.cuda.get_device_capability(device) < TF32_MIN_CAPABILITY:
            raise ValueError(f"precision tf32: this GPU ({torch.cuda.get_device_name(device)}) has no TF32 tensor "
                             f"cores (compute capability 8.0 or later); use fp32 or fp16")
        return
    if device.type == "cuda":
        # this device's own capability: torch.cuda.is_bf16_supported() asks the current device, and says
        # True for GPUs before Ampere too, where bfloat16 is emulated (slow, and cuDNN has no bf16 kernels)
        major, minor = torch.cuda.get_device_capability(device)
        if dtype == torch.bfloat16 and not torch.version.hip and (major, minor) < BF16_MIN_CAPABILITY:
            raise ValueError(f"precision bf16: this GPU ({torch.cuda.get_device_name(device)}, compute capability "
                             f"{major}.{minor}) has no native bfloat16 (8.0 or later); use fp16 or fp32")
    elif device.type == "cpu":
        if dtype == torch.float16:
            warnings.warn("precision fp16 on CPU: float16 convolutions run a slow reference kernel on most CPUs "
                          "(correct, but often 10-100x slower than fp32); bf16 is the CPU fast path",
                          RuntimeWarning, stacklevel=3)
    elif dtype != torch.float32:
        raise ValueError(f"precision {precision}: only cpu and cuda devices are supported, got {device}")


def _is_output_conv(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in OUTPUT_CONVS


def lowp_plan(module: nn.Module) -> dict:
    """{module path: what changes} for the reduced precisions: "cast" (weight and bias to the
    reduced dtype), "sn" (bias cast, float32 weight kept for the power iteration plus a reduced
    copy `weight_lowp`); every other layer keeps float32. Paths are `named_modules` names."""
    from .networks import MLP
    from .ops import Conv
    plan = {}
    for name, m in module.named_modules():
        if isinstance(m, Conv):
            if _is_output_conv(name):
                continue
            plan[name] = "sn" if m.sn else "cast"
        elif isinstance(m, MLP) and not m.light:  # the full model's map-reading dense layer
            plan[f"{name}.linear_0" if name else "linear_0"] = "cast"
    return plan


def describe(module: nn.Module, precision: str) -> list[tuple[str, str, str]]:
    """[(module path, layer type, compute dtype)] for every layer with parameters."""
    dtype = compute_dtype(precision)
    plan = lowp_plan(module) if dtype != torch.float32 else {}
    rows = []
    for name, m in module.named_modules():
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        rows.append((name, type(m).__name__, str(dtype if name in plan else torch.float32).replace("torch.", "")))
    return rows
