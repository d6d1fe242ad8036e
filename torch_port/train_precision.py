"""Mixed-precision training steps (`--precision tf32|bf16|fp16` in `python -m torch_port` and
`python -m morph train`): what the trainer's `wrap_steps` seam returns for a reduced precision.

tf32 (CUDA only): the fp32 path with TF32 convolutions and matrix products (`tf32_math`); every
other operation, the weights, Adam and the checkpoints are float32 as in the exact path. On a CPU
there is no TF32 (refused with one line: train in fp32 or bf16 there).

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
the checkpoint (`loss_scale`), so a resumed fp16 run continues exactly. The decision is made on
the device (a found-inf flag, the update applied with `torch.where`, the scale updated by the same
rule), so the step reads nothing back and can be captured in a CUDA graph; its outcomes are the
host rule's bit for bit (parity_tests/test_train_graphs.py). bf16 needs no scaling:
it has float32's exponent range. On CPU, fp16 convolutions run a slow reference kernel on most
CPUs (see `torch_port.precision.check_supported`): fp16 training is meant for CUDA."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

TRAIN_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
LOSS_SCALE_INIT = 2.0 ** 16  # torch.amp.GradScaler's; the official losses (cam_weight 1000) settle lower
LOSS_SCALE_GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's: finite steps in a row before the scale doubles
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_training_precision(precision: str, device=None) -> None:
    """A precision training offers (and, given a device, one it can run); OptionError otherwise."""
    from ugatit_common.options import OptionError
    if precision not in TRAIN_PRECISIONS:
        raise OptionError(f"--precision={precision!r}: training runs in {', '.join(TRAIN_PRECISIONS)}")
    if precision == "tf32" and device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            raise OptionError(f"--precision=tf32: TF32 is a mode of NVIDIA tensor cores (CUDA); on {device.type} "
                              f"train in fp32 (the exact port) or bf16")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise OptionError(f"--precision=tf32: this GPU ({torch.cuda.get_device_name(device)}, compute capability "
                              f"{major}.{minor}) has no TF32 tensor cores (8.0 or newer); use fp32 or fp16")
        return
    if precision not in ("fp32", "tf32") and device is not None:
        import sys
        import warnings
        from .precision import check_supported
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                check_supported(precision, device)
            except ValueError as e:
                raise OptionError(str(e)) from e
        from ugatit_common.options import other_torchrun_rank
        for w in said if not other_torchrun_rank() else ():  # e.g. fp16 on CPU: slow; one plain line (rank 0)
            print(f"warning: {w.message}", file=sys.stderr, flush=True)


class LossScaler:
    """Dynamic loss scaling of one optimizer (torch.amp.GradScaler's rule and defaults), its state
    on the optimizer's device so that a step decides and reads back nothing on the host (a CUDA
    graph captures it; parity_tests/test_train_graphs.py proves the outcomes equal the host rule).

    `scale_tensor` ([1] float32, a power of two) multiplies the loss; `found_inf(grads)` divides
    the gradients by it in place and returns a [1] device flag, nonzero when one of them holds an
    inf / NaN; `update(found)` halves the scale after a non-finite step and doubles it after
    `growth_interval` finite steps in a row. `scale`, `good_steps` and `skipped` read the device
    values (a host synchronisation: for logs, checkpoints and tests, not inside a step)."""

    def __init__(self, init_scale: float = LOSS_SCALE_INIT, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, device=None):
        device = torch.device("cpu") if device is None else torch.device(device)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale_tensor = torch.full((1,), float(init_scale), dtype=torch.float32, device=device)
        self._good_steps = torch.zeros(1, dtype=torch.int64, device=device)  # finite steps since the last change
        self._skipped = torch.zeros(1, dtype=torch.int64, device=device)     # steps skipped so far
        self.last_skipped = torch.zeros(1, dtype=torch.float32, device=device)  # 1: the latest step was skipped

    # -- host views (synchronising reads) ------------------------------------------------------
    @property
    def scale(self) -> float:
        return float(self.scale_tensor.item())

    @scale.setter
    def scale(self, value: float) -> None:
        self.scale_tensor.fill_(float(value))

    @property
    def good_steps(self) -> int:
        return int(self._good_steps.item())

    @property
    def skipped(self) -> int:
        return int(self._skipped.item())

    def to(self, device) -> "LossScaler":
        """Move the state to `device` (the optimizer's); in place of the tensors' identities."""
        self.scale_tensor = self.scale_tensor.to(device)
        self._good_steps = self._good_steps.to(device)
        self._skipped = self._skipped.to(device)
        self.last_skipped = self.last_skipped.to(device)
        return self

    # -- the device-side rule ------------------------------------------------------------------
    def found_inf(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Unscale `grads` in place (exact: the scale is a power of two); a [1] float flag on the
        device, nonzero when a gradient holds an inf or NaN."""
        found = torch.zeros(1, dtype=torch.float32, device=self.scale_tensor.device)
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self.scale_tensor.reciprocal())
        return found

    def update(self, found) -> None:
        """GradScaler's rule, on the device: a non-finite step (`found` nonzero, or the bool
        False for "not finite" on the host API) halves the scale, resets the count of good steps
        and counts a skip; otherwise the count grows and reaching `growth_interval` doubles the
        scale and restarts the count."""
        if isinstance(found, bool):  # the host API: update(finite)
            found = torch.full((1,), 0.0 if found else 1.0, device=self.scale_tensor.device)
        bad = found.reshape(1) != 0
        good = torch.where(bad, torch.zeros_like(self._good_steps), self._good_steps + 1)
        grow = good >= self.growth_interval
        new_scale = torch.where(bad, self.scale_tensor * self.backoff_factor,
                                torch.where(grow, self.scale_tensor * self.growth_factor, self.scale_tensor))
        self.scale_tensor.copy_(new_scale)
        self._good_steps.copy_(torch.where(grow, torch.zeros_like(good), good))
        self._skipped.add_(bad.to(self._skipped.dtype))
        self.last_skipped.copy_(bad.to(self.last_skipped.dtype))

    def unscale_(self, grads: list[torch.Tensor]) -> bool:
        """`found_inf` read back on the host: True when every gradient is finite."""
        return not bool(self.found_inf(grads).item())

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict) -> None:
        """Load a `state_dict()` into the existing device tensors (in place)."""
        self.scale_tensor.fill_(float(state["scale"]))
        self._good_steps.fill_(int(state["good_steps"]))
        self._skipped.fill_(int(state.get("skipped", 0)))
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


def install_loss_scaler(optim, scaler: LossScaler) -> None:
    """Scale `optim`'s loss (`UGATIT._optimizer_update` multiplies by `optim.loss_scaler`'s
    `scale_tensor`) and wrap its `step`: unscale the gradients, then step where they are finite
    (decided on the device: `TF1Adam.step(found_inf=...)`), then update the scale. Under torchrun
    the gradient averaging wraps this step from outside, so every rank unscales the same averaged
    gradients (an inf on one rank is an inf in the sum) and all skip together."""
    scaler.to(optim._one.device)
    if getattr(optim, "loss_scaler", None) is not None:
        optim.loss_scaler = scaler
        return
    original = optim.step

    def step(lr=None):
        s = optim.loss_scaler
        found = s.found_inf([p.grad for _, p in optim.named_params if p.grad is not None])
        original(lr, found_inf=found)  # skipped where found: weights, slots and powers stay as they were
        s.update(found)

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
    `G_loss_scale`, the scale their loss was multiplied by, and `D_step_skipped` /
    `G_step_skipped`, 1 where a non-finite gradient skipped the step (device tensors when the
    model's steps return tensors). The losses of a skipped step may be non-finite themselves:
    a gradient penalty's inner gradient is taken at the loss scale and can overflow float16
    (`torch_port.losses`); the training loop says so and goes on (`torch_port.train`).

    Autocast runs without its cast cache (`cache_enabled=False`, which a CUDA graph capture
    requires; eager and graphed steps are then one function): each use of a float32 weight casts
    it afresh, so the gradient of a weight used several times in a step (the generators run six
    times per G step, the discriminators four times per D step) is summed in float32 at the
    weight, not in the reduced dtype at one cached cast."""
    device_type = torch.device(device).type
    if precision == "tf32":
        return tf32_steps(d_step, g_step, device_type)
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
            install_loss_scaler(optim, getattr(optim, "loss_scaler", None)
                                or LossScaler(LOSS_SCALE_INIT, growth_interval=LOSS_SCALE_GROWTH_INTERVAL))
            scalers[key] = optim.loss_scaler

    def autocast(step, key):
        def run(*args, **kwargs):
            scale = None
            if key in scalers:  # the scale this step's loss gets (read before the step updates it)
                s = scalers[key]
                scale = s.scale_tensor.reshape(()).clone() if getattr(model, "loss_values", "float") == "tensor" \
                    else s.scale
            with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
                out = step(*args, **kwargs)
            if scale is not None:
                out[f"{key}_loss_scale"] = scale
                skipped = scalers[key].last_skipped.reshape(())
                out[f"{key}_step_skipped"] = skipped.clone() if torch.is_tensor(scale) else float(skipped.item())
            return out
        return run
    return autocast(d_step, "D"), autocast(g_step, "G")


@contextlib.contextmanager
def tf32_math(device_type: str):
    """TF32 convolutions and matrix products for the block (CUDA tensor cores: float32 range,
    10 mantissa bits in the products, float32 sums); the flags are restored afterwards, so the
    exact fp32 path (TF32 off, `torch_port.train.pick_device`) is unaffected."""
    if device_type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_steps(d_step, g_step, device_type: str):
    """(d_step, g_step) with TF32 convolutions and matrix products (`--precision tf32`, CUDA):
    everything else, the weights, Adam and the checkpoints are the fp32 path's."""
    def wrap(step):
        def run(*args, **kwargs):
            with tf32_math(device_type):
                return step(*args, **kwargs)
        return run
    return wrap(d_step), wrap(g_step)


@contextlib.contextmanager
def deterministic_math():
    """`torch.use_deterministic_algorithms(True)` and no cuDNN timing for the block, restored
    afterwards: the exact fp32 path on CUDA (deterministic cuDNN algorithms, cuBLAS with a fixed
    workspace - CUBLAS_WORKSPACE_CONFIG, set by `torch_port.train.pick_device` - and the port's
    deterministic reflection-pad backward, `torch_port.deterministic_pad`), so that two runs of
    the same steps give the same bits and 2N iterations equal N + resume + N on CUDA too."""
    import torch.utils.deterministic as det
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    # deterministic mode also fills every new tensor with NaN first (a debugging aid, one more
    # pass over each allocation); the step reads no memory it has not written
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        det.fill_uninitialized_memory = saved[3]


def cuda_steps(d_step, g_step, precision: str, device, deterministic: bool = True):
    """The CUDA math settings of a run's steps. fp32 (the exact path): deterministic
    (`deterministic_math`; `deterministic=False` leaves cuDNN's default heuristics and ATen's
    atomic reflection-pad backward: faster, not bit-reproducible). tf32 / bf16 / fp16: cuDNN
    times its algorithms for the fixed shapes once (`cudnn.benchmark` during the steps): the
    fastest, but its choice, and so the last bits, may differ from run to run. Each setting holds
    during the steps only; the process's own is back after each (a later fp32 run or test phase in
    the same process keeps its algorithms). A CPU: unchanged."""
    if torch.device(device).type != "cuda":
        return d_step, g_step
    if precision != "fp32":
        math = cudnn_benchmark
    elif deterministic:
        math = deterministic_math
    else:
        return d_step, g_step

    def wrap(step):
        def run(*args, **kwargs):
            with math():
                return step(*args, **kwargs)
        return run
    return wrap(d_step), wrap(g_step)


@contextlib.contextmanager
def cudnn_benchmark(on: bool = True):
    """cuDNN's benchmark mode on (or off) for the block, the process's setting restored afterwards."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(on)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
