"""Mixed-precision training steps (`--precision bf16|fp16` in `python -m torch_port` and `python -m
morph train`): what the trainer's `wrap_steps` seam returns for a reduced precision.

Master weights, their gradients, TF1 Adam's slots and powers, the spectral-norm `u` buffers and
the checkpoints stay float32. Each D / G step runs under `torch.autocast(<device>, bfloat16 or
float16)`, so the convolutions of the encoder, residual blocks, `conv_1x1`, adaptive blocks,
up-sampling and discriminators compute in the reduced dtype (forward and backward; the kernels
accumulate in float32), and these run in float32 with autocast off, the same split as the
inference fast paths (`torch_port.precision`):

- instance norm, AdaLIN, LIN (moments, normalisation, affine map: a norm divides by a channel's
  standard deviation, which amplifies input rounding; their float32 output keeps the residual
  stream in float32);
- the spectral norm's power iteration and sigma (sigma divides every output of the layer);
- CAM (pooling, the logit, the channel weighting), every dense / linear layer (the MLP, Morph's
  latent MLP and style maps: gamma and beta scale every AdaLIN output);
- the output convolutions `G_logit` and `D_logit`, so images, logits and every loss are float32.

fp16 adds dynamic loss scaling (`LossScaler`, one per optimizer): float16's largest value is
65504 and its smallest normal 6e-5, so the gradients flowing back through float16 convolutions
would underflow to zero at the official loss sizes. The loss is multiplied by a power of two
before the backward pass (exact: only the exponent changes, unless a value overflows), the
float32 gradients are divided by it, and a step whose gradients hold an inf / NaN is skipped
(weights, Adam slots and Adam's powers unchanged; the spectral-norm `u` has advanced, as the
forward pass ran) and the scale halved; after `growth_interval` good steps it doubles. Rule and
defaults are torch.amp.GradScaler's, applied to the TF1 Adam of the port. The scale travels in
the checkpoint (`loss_scale`), so a resumed fp16 run continues exactly. bf16 needs no scaling:
it has float32's exponent range. On CPU, fp16 convolutions run a slow reference kernel on most
CPUs (see `torch_port.precision.check_supported`): fp16 training is meant for CUDA."""
from __future__ import annotations

import torch
import torch.nn as nn

TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_SCALE_INIT = 2.0 ** 16  # torch.amp.GradScaler's; the official losses (cam_weight 1000) settle lower
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_training_precision(precision: str, device=None) -> None:
    """A precision training offers (and, given a device, one it can run); OptionError otherwise."""
    from ugatit_common.options import OptionError
    if precision not in TRAIN_PRECISIONS:
        raise OptionError(f"--precision={precision!r}: training runs in {', '.join(TRAIN_PRECISIONS)}")
    if precision != "fp32" and device is not None:
        import sys
        import warnings
        from .precision import check_supported
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                check_supported(precision, device)
            except ValueError as e:
                raise OptionError(str(e)) from e
        for w in said:  # e.g. fp16 on CPU: slow; one plain line, not a warnings traceback line
            print(f"warning: {w.message}", file=sys.stderr, flush=True)


class LossScaler:
    """Dynamic loss scaling of one optimizer (torch.amp.GradScaler's rule and defaults).

    `scale` multiplies the loss; `unscale_(grads)` divides the gradients by it in place and says
    whether all of them are finite; `update(finite)` halves the scale after a non-finite step and
    doubles it after `growth_interval` finite steps in a row."""

    def __init__(self, init_scale: float = LOSS_SCALE_INIT, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0   # finite steps since the last change of scale
        self.skipped = 0      # steps skipped so far (non-finite gradients)

    def unscale_(self, grads: list[torch.Tensor]) -> bool:
        if not grads:
            return True
        found = torch.zeros(1, device=grads[0].device)
        inv = torch.full((1,), 1.0 / self.scale, device=grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
        return not bool(found.item())

    def update(self, finite: bool) -> None:
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0
        else:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped += 1

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps, self.skipped = int(state["good_steps"]), int(state.get("skipped", 0))
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


def install_loss_scaler(optim, scaler: LossScaler) -> None:
    """Scale `optim`'s loss (`UGATIT._optimizer_update` multiplies by `optim.loss_scaler.scale`)
    and wrap its `step`: unscale the gradients, then step or skip, then update the scale. Under
    torchrun the gradient averaging wraps this step from outside, so every rank unscales the same
    averaged gradients (an inf on one rank is an inf in the sum) and all skip together."""
    if getattr(optim, "loss_scaler", None) is not None:
        optim.loss_scaler = scaler
        return
    original = optim.step

    def step(lr=None):
        s = optim.loss_scaler
        finite = s.unscale_([p.grad for _, p in optim.named_params if p.grad is not None])
        s.update(finite)
        if finite:
            return original(lr)
        if lr is not None:  # skipped: weights, slots and powers stay as they were
            optim.set_lr(lr)

    optim.step = step
    optim.loss_scaler = scaler


def loss_scalers(model) -> dict:
    """{"G": LossScaler, "D": LossScaler} of an fp16 run (empty otherwise)."""
    return {k: o.loss_scaler for k, o in (("G", model.G_optim), ("D", model.D_optim))
            if getattr(o, "loss_scaler", None) is not None}


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
    (outside autocast the wrappers change nothing). fp16: each optimizer gets a `LossScaler`
    (kept if it has one: a resumed state), and the steps also return `D_loss_scale` /
    `G_loss_scale`, the scale their loss was multiplied by."""
    device_type = torch.device(device).type
    dtype = AUTOCAST_DTYPES[precision]
    for _, m in float32_modules(model):
        if not getattr(m.forward, "float32_island", False):
            m.forward = _in_float32(m.forward, device_type)
    for m in model.modules():
        if hasattr(m, "_sn_sigma") and not getattr(m._sn_sigma, "float32_island", False):
            m._sn_sigma = _in_float32(m._sn_sigma, device_type)
    scalers = {}
    if precision == "fp16":
        for key, optim in (("D", model.D_optim), ("G", model.G_optim)):
            install_loss_scaler(optim, getattr(optim, "loss_scaler", None) or LossScaler(LOSS_SCALE_INIT))
            scalers[key] = optim.loss_scaler

    def autocast(step, key):
        def run(*args, **kwargs):
            scale = scalers[key].scale if key in scalers else None  # the scale this step's loss gets
            with torch.autocast(device_type, dtype=dtype):
                out = step(*args, **kwargs)
            if scale is not None:
                out[f"{key}_loss_scale"] = scale
            return out
        return run
    return autocast(d_step, "D"), autocast(g_step, "G")
