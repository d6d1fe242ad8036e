"""Mixed-precision training steps (`--precision bf16` in `python -m torch_port` and `python -m morph
train`): what the trainer's `wrap_steps` seam returns for a reduced precision.

Master weights, their gradients, TF1 Adam's slots and powers, the spectral-norm `u` buffers and
the checkpoints stay float32. Each D / G step runs under `torch.autocast(<device>, bfloat16)`, so
the convolutions of the encoder, residual blocks, `conv_1x1`, adaptive blocks, up-sampling and
discriminators compute in bfloat16 (forward and backward; the kernels accumulate in float32), and
these run in float32 with autocast off, the same split as the inference fast paths
(`torch_port.precision`):

- instance norm, AdaLIN, LIN (moments, normalisation, affine map: a norm divides by a channel's
  standard deviation, which amplifies input rounding; their float32 output keeps the residual
  stream in float32);
- the spectral norm's power iteration and sigma (sigma divides every output of the layer);
- CAM (pooling, the logit, the channel weighting), every dense / linear layer (the MLP, Morph's
  latent MLP and style maps: gamma and beta scale every AdaLIN output);
- the output convolutions `G_logit` and `D_logit`, so images, logits and every loss are float32.

fp16 training is not offered: float16's range (largest value 65504) needs loss scaling, which the
official loop does not have."""
from __future__ import annotations

import torch
import torch.nn as nn

TRAIN_PRECISIONS = ("fp32", "bf16")


def check_training_precision(precision: str, device=None) -> None:
    """A precision training offers (and, given a device, one it can run); OptionError otherwise."""
    from ugatit_common.options import OptionError
    if precision not in TRAIN_PRECISIONS:
        raise OptionError(f"--precision={precision!r}: training runs in {' or '.join(TRAIN_PRECISIONS)} "
                          f"(fp16 would need loss scaling)")
    if precision != "fp32" and device is not None:
        from .precision import check_supported
        try:
            check_supported(precision, device)
        except ValueError as e:
            raise OptionError(str(e)) from e


def float32_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that compute in float32 inside a reduced-precision step (see the docstring)."""
    from .ops import LIN, AdaLIN, CAMLogit, Dense, InstanceNorm
    from .precision import OUTPUT_CONVS
    keep = (InstanceNorm, AdaLIN, LIN, CAMLogit, Dense, nn.Linear)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, keep) or n.rsplit(".", 1)[-1] in OUTPUT_CONVS]


def _in_float32(fn, device_type: str):
    def run(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)
    run.float32_island = True
    return run


def mixed_precision_steps(model: nn.Module, d_step, g_step, precision: str, device):
    """(d_step, g_step) running under autocast in `precision` with the float32 modules (and every
    spectral-norm sigma) taken out of it. `model`'s float32 modules are wrapped once, in place
    (outside autocast the wrappers change nothing)."""
    device_type = torch.device(device).type
    dtype = {"bf16": torch.bfloat16}[precision]
    for _, m in float32_modules(model):
        if not getattr(m.forward, "float32_island", False):
            m.forward = _in_float32(m.forward, device_type)
    for m in model.modules():
        if hasattr(m, "_sn_sigma") and not getattr(m._sn_sigma, "float32_island", False):
            m._sn_sigma = _in_float32(m._sn_sigma, device_type)

    def autocast(step):
        def run(*args, **kwargs):
            with torch.autocast(device_type, dtype=dtype):
                return step(*args, **kwargs)
        return run
    return autocast(d_step), autocast(g_step)
