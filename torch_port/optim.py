"""TF1 `tf.train.AdamOptimizer`, bit-for-bit in float32 with TF's CPU kernel order.

TF1's ApplyAdam:
    alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power)
    m += (g - m) * (1 - beta1)
    v += (g*g - v) * (1 - beta2)
    w -= (m * alpha) / (sqrt(v) + eps)          # eps outside the bias correction
then, after every variable of the step, `beta1_power *= beta1; beta2_power *= beta2`.
The powers start at beta1, beta2, so after t updates they hold beta^(t+1). Variable
constraints (the `rho` clip) are applied right after that variable's update.

Checkpoint mapping (for a converter):
    `named_slots()`  -> {"<param name>/Adam": m, "<param name>/Adam_1": v}
    `beta1_power`, `beta2_power` -> TF `beta1_power`/`beta2_power` for the G optimizer (built
    first) and `beta1_power_1`/`beta2_power_1` for the D optimizer.
    `state_dict()`   -> {"lr", "beta1", "beta2", "eps", "beta1_power", "beta2_power",
                         "m": {name: tensor}, "v": {name: tensor}}

Two implementations of the same operations, bit for bit (parity_tests/test_train_graphs.py):
one pass per parameter into two reused scratch buffers (the CPU default: a fresh temporary per
operation costs page faults on the 134 MB discriminator kernels), and multi-tensor
`torch._foreach_*` kernels over all parameters at once (the CUDA default: a handful of launches
instead of ~10 per parameter). The learning rate, the powers and the constants live in 0-d
tensors on the parameters' device, updated in place, so a step reads no value back to the host
and can be captured in a CUDA graph (`torch_port.train_graphs`). `step(found_inf=...)` applies
the update only where a device flag says the gradients were finite (fp16 loss scaling decided on
the device, `torch_port.train_precision`).

float64 parameters (the free-running float64 comparison, parity_tests/free_run.py) get float64
slots and TF's float64 ApplyAdam: TF's float64 graph keeps lr, beta1, beta2, epsilon and the
powers as float32 tensors and casts them to float64 for the update, so alpha, 1 - beta1 and
1 - beta2 are computed in float64 from float32 values; the operation order is the float32 path's.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn as nn

__all__ = ["TF1Adam", "clip_0_1"]


def clip_0_1(p: torch.Tensor) -> torch.Tensor:
    """The official `rho` constraint: tf.clip_by_value(x, 0, 1)."""
    return torch.clamp(p, 0.0, 1.0)


def _f32(x, device) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, device=device)


def _slot_dtype(p: torch.Tensor) -> torch.dtype:
    """float64 slots for float64 parameters (TF's float64 graph), float32 for every other."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class TF1Adam:
    """TF1 Adam over named parameters.

    params_or_named_params: an iterable of (name, Parameter) pairs, or of Parameters (named
    "0", "1", ...). `constraints` maps a parameter name to a callable applied after its update
    (e.g. `clip_0_1` for every name ending in `rho`). Parameters whose `.grad` is None are
    skipped in a step (their slots stay as they are); the powers advance once per step.
    `foreach`: the multi-tensor implementation (None: on CUDA only; both give the same bits)."""

    def __init__(self, params_or_named_params, lr: float, beta1: float = 0.5,
                 beta2: float = 0.999, eps: float = 1e-8,
                 constraints: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 foreach: bool | None = None):
        items = list(params_or_named_params)
        named = []
        for i, item in enumerate(items):
            if isinstance(item, (tuple, list)):
                named.append((str(item[0]), item[1]))
            else:
                named.append((str(i), item))
        names = [n for n, _ in named]
        if len(set(names)) != len(names):
            raise ValueError("duplicate parameter names")
        if not named:
            raise ValueError("TF1Adam got an empty parameter list")
        self.named_params: list[tuple[str, nn.Parameter]] = named
        self.constraints = dict(constraints or {})
        unknown = set(self.constraints) - set(names)
        if unknown:
            raise ValueError(f"constraints for unknown parameters: {sorted(unknown)}")
        device = named[0][1].device
        self.foreach = foreach
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._lr = float(lr)
        self._lr_t = _f32(self._lr, device)
        self._beta1_t = _f32(beta1, device)
        self._beta2_t = _f32(beta2, device)
        self._eps_t = _f32(eps, device)
        self._one = _f32(1.0, device)
        self._beta1_power = self._beta1_t.clone()
        self._beta2_power = self._beta2_t.clone()
        self.m = {n: torch.zeros_like(p, dtype=_slot_dtype(p)) for n, p in named}
        self.v = {n: torch.zeros_like(p, dtype=_slot_dtype(p)) for n, p in named}

    # -- hyper-parameters ----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        value = float(value)
        if value != self._lr:
            if _capturing():  # a fill inside a capture would freeze this value into the graph
                raise RuntimeError("TF1Adam: the learning rate changed inside a CUDA graph capture")
            self._lr_t.fill_(value)  # on the device, no read back; the same float32 rounding as _f32
        self._lr = value

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    @property
    def beta1_power(self) -> torch.Tensor:
        return self._beta1_power

    @property
    def beta2_power(self) -> torch.Tensor:
        return self._beta2_power

    @property
    def powers(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._beta1_power, self._beta2_power

    @property
    def step_count(self) -> int:
        """t, the number of updates so far (beta1_power = beta1^(t+1))."""
        import math
        return int(round(math.log(float(self._beta1_power)) / math.log(self.beta1))) - 1

    def uses_foreach(self) -> bool:
        if self.foreach is not None:
            return bool(self.foreach)
        return self._one.device.type == "cuda"

    # -- the update ----------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, lr: float | None = None, found_inf: torch.Tensor | None = None) -> None:
        """One TF1 Adam update of every parameter with a gradient. `found_inf`: a one-element
        device tensor; where it is nonzero the step changes nothing (weights, slots, powers),
        decided on the device."""
        if lr is not None:
            self.set_lr(lr)
        one = self._one
        alpha = self._lr_t * torch.sqrt(one - self._beta2_power) / (one - self._beta1_power)
        live = [(name, p) for name, p in self.named_params if p.grad is not None]
        skip = None if found_inf is None else found_inf.reshape(()) != 0
        live64 = [(name, p) for name, p in live if p.dtype == torch.float64]
        if live64:
            live = [(name, p) for name, p in live if p.dtype != torch.float64]
            self._step_float64(live64, skip)
        if self.uses_foreach():
            self._step_foreach(live, alpha, skip)
        else:
            self._step_loop(live, alpha, skip)
        for power, beta in ((self._beta1_power, self._beta1_t), (self._beta2_power, self._beta2_t)):
            new = power * beta
            power.copy_(new if skip is None else torch.where(skip, power, new))

    def _update_each(self, live, skip, update) -> None:
        """`update(p, g, m, v)` per parameter in place, then its constraint; with `skip` (fp16
        loss scaling) computed aside and the old values kept where the device flag is set."""
        for name, p in live:
            m, v = self.m[name], self.v[name]
            old = None if skip is None else (p.clone(), m.clone(), v.clone())
            update(p, p.grad, m, v)
            constraint = self.constraints.get(name)
            if constraint is not None:
                p.copy_(constraint(p))
            if old is not None:
                for now, before in zip((p, m, v), old):
                    now.copy_(torch.where(skip, before, now))

    def _step_loop(self, live, alpha, skip) -> None:
        one = self._one
        one_minus_b1 = one - self._beta1_t
        one_minus_b2 = one - self._beta2_t
        scratch = self._scratch_buffers()

        def update(p, g, m, v):
            # TF's ApplyAdam, operation by operation, into two reused scratch buffers (a fresh
            # temporary per operation costs page faults on the 134 MB discriminator kernels)
            t1 = scratch[0][: p.numel()].view_as(p)
            t2 = scratch[1][: p.numel()].view_as(p)
            torch.sub(g, m, out=t1).mul_(one_minus_b1)           # (g - m) * (1 - beta1)
            m.add_(t1)
            torch.mul(g, g, out=t1).sub_(v).mul_(one_minus_b2)    # (g^2 - v) * (1 - beta2)
            v.add_(t1)
            torch.sqrt(v, out=t1).add_(self._eps_t)               # sqrt(v) + eps
            torch.mul(m, alpha, out=t2).div_(t1)                  # (m * alpha) / (...)
            p.sub_(t2)
        self._update_each(live, skip, update)

    def _float64_scalars(self):
        """(alpha, 1 - beta1, 1 - beta2, eps) as TF's float64 ApplyAdam sees them: the float32
        lr / beta / epsilon tensors and float32 powers cast to float64, the arithmetic in float64."""
        one = torch.ones((), dtype=torch.float64, device=self._one.device)
        lr, b1, b2, eps, p1, p2 = (t.to(torch.float64) for t in (
            self._lr_t, self._beta1_t, self._beta2_t, self._eps_t, self._beta1_power, self._beta2_power))
        return lr * torch.sqrt(one - p2) / (one - p1), one - b1, one - b2, eps

    def _step_float64(self, live, skip) -> None:
        """TF's ApplyAdam in float64 (module docstring), per parameter in the float32 path's
        operation order (no scratch buffers: the float64 parity runs are small)."""
        alpha, one_minus_b1, one_minus_b2, eps = self._float64_scalars()

        def update(p, g, m, v):
            m.add_((g - m) * one_minus_b1)
            v.add_((g * g - v) * one_minus_b2)
            p.sub_((m * alpha) / (torch.sqrt(v) + eps))
        self._update_each(live, skip, update)

    def _step_foreach(self, live, alpha, skip) -> None:
        """The loop's operations over all parameters at once, in the same order and dtypes: each
        `_foreach_*` op is the loop's op per tensor (float32 slots; float64 parameters take
        `_step_float64`)."""
        if not live:
            return
        one = self._one
        names = [n for n, _ in live]
        params = [p for _, p in live]
        grads = [p.grad for p in params]
        ms = [self.m[n] for n in names]
        vs = [self.v[n] for n in names]

        def f32(ts):
            return [t if t.dtype == torch.float32 else t.to(torch.float32) for t in ts]
        def add(targets, deltas, sign=1):  # in place, or aside when the device decides later
            if skip is None:
                (torch._foreach_add_ if sign > 0 else torch._foreach_sub_)(targets, deltas)
                return targets
            return (torch._foreach_add if sign > 0 else torch._foreach_sub)(targets, deltas)
        t1 = f32(torch._foreach_sub(grads, ms))                     # (g - m)
        torch._foreach_mul_(t1, one - self._beta1_t)                # * (1 - beta1)
        new_m = add(ms, t1)                                         # m += ...
        t1 = f32(torch._foreach_mul(grads, grads))                  # g^2
        torch._foreach_sub_(t1, vs)                                 # - v
        torch._foreach_mul_(t1, one - self._beta2_t)                # * (1 - beta2)
        new_v = add(vs, t1)                                         # v += ...
        t1 = torch._foreach_sqrt(new_v)                             # sqrt(v)
        torch._foreach_add_(t1, self._eps_f32())                    # + eps (its float32 value, as a scalar)
        t2 = torch._foreach_mul(new_m, alpha)                       # m * alpha
        torch._foreach_div_(t2, t1)                                 # / (...)
        new_p = add(params, t2, -1)                                 # w -= ...
        clipped = [i for i, n in enumerate(names) if self.constraints.get(n) is clip_0_1]
        if clipped:  # the rho clip of every such parameter in two launches (equal to torch.clamp, NaN included)
            group = [new_p[i] for i in clipped]
            torch._foreach_clamp_min_(group, 0.0)
            torch._foreach_clamp_max_(group, 1.0)
        for i, n in enumerate(names):
            constraint = self.constraints.get(n)
            if constraint is not None and constraint is not clip_0_1:
                new_p[i].copy_(constraint(new_p[i]))
        if skip is not None:
            for olds, news in ((params, new_p), (ms, new_m), (vs, new_v)):
                for old, new in zip(olds, news):
                    old.copy_(torch.where(skip, old, new))

    def _eps_f32(self) -> float:
        """eps rounded to float32 as a Python float: adding it as a scalar is adding `_eps_t` (the
        kernels add in float32), without a tensor-scalar add (ATen's meta kernel of that reads
        the value back: the no-read-back test runs the step on the meta device)."""
        import numpy as np
        return float(np.float32(self.eps))

    def _scratch_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two flat float32 buffers as large as the largest parameter, kept between steps."""
        n = max((p.numel() for _, p in self.named_params if p.dtype != torch.float64), default=0)
        bufs = getattr(self, "_scratch", None)
        p0 = self.named_params[0][1] if self.named_params else None
        if bufs is None or bufs[0].numel() < n or (p0 is not None and bufs[0].device != p0.device):
            device = p0.device if p0 is not None else "cpu"
            bufs = self._scratch = (torch.empty(n, device=device), torch.empty(n, device=device))
        return bufs

    # -- state ---------------------------------------------------------------------------------
    def named_slots(self) -> dict[str, torch.Tensor]:
        """{"<name>/Adam": m, "<name>/Adam_1": v} for every parameter (TF slot naming)."""
        out = {}
        for name, _ in self.named_params:
            out[f"{name}/Adam"] = self.m[name]
            out[f"{name}/Adam_1"] = self.v[name]
        return out

    def state_dict(self) -> dict:
        return {
            "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
            "beta1_power": self._beta1_power.clone(), "beta2_power": self._beta2_power.clone(),
            "m": {n: t.clone() for n, t in self.m.items()},
            "v": {n: t.clone() for n, t in self.v.items()},
        }

    def load_state_dict(self, state: Mapping, strict: bool = True) -> None:
        """Load a `state_dict()`; m/v tensors are copied into the existing slots. With
        strict=False, parameters missing from `state` keep their slots. `lr`/betas/eps are
        taken from `state` when present. Every tensor is written in place (a captured CUDA
        graph keeps reading the same memory)."""
        for key in ("lr", "beta1", "beta2", "eps"):
            if key in state:
                setattr(self, key, float(state[key]))
        with torch.no_grad():
            for t, value in ((self._beta1_t, self.beta1), (self._beta2_t, self.beta2), (self._eps_t, self.eps)):
                t.copy_(_f32(value, "cpu"))
            for t, key in ((self._beta1_power, "beta1_power"), (self._beta2_power, "beta2_power")):
                t.copy_(torch.as_tensor(state[key], dtype=torch.float32).reshape(t.shape))
        for slot_name, slots in (("m", self.m), ("v", self.v)):
            given = state.get(slot_name, {})
            if strict:
                missing = set(slots) - set(given)
                extra = set(given) - set(slots)
                if missing or extra:
                    raise KeyError(f"{slot_name} slots: missing {sorted(missing)[:5]}, "
                                   f"unexpected {sorted(extra)[:5]}")
            for name, t in given.items():
                if name in slots:
                    with torch.no_grad():
                        slots[name].copy_(torch.as_tensor(t, dtype=slots[name].dtype))

    def load_named_slots(self, slots: Mapping[str, torch.Tensor], beta1_power=None,
                         beta2_power=None) -> None:
        """Inverse of `named_slots()` (keys "<name>/Adam" and "<name>/Adam_1"), plus the powers."""
        state = {"beta1_power": self._beta1_power if beta1_power is None else beta1_power,
                 "beta2_power": self._beta2_power if beta2_power is None else beta2_power,
                 "m": {}, "v": {}}
        for key, t in slots.items():
            if key.endswith("/Adam_1"):
                state["v"][key[: -len("/Adam_1")]] = t
            elif key.endswith("/Adam"):
                state["m"][key[: -len("/Adam")]] = t
            else:
                raise KeyError(f"not an Adam slot name: {key!r}")
        self.load_state_dict(state, strict=False)
