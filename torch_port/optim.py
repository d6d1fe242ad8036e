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
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

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


class TF1Adam:
    """TF1 Adam over named parameters.

    params_or_named_params: an iterable of (name, Parameter) pairs, or of Parameters (named
    "0", "1", ...). `constraints` maps a parameter name to a callable applied after its update
    (e.g. `clip_0_1` for every name ending in `rho`). Parameters whose `.grad` is None are
    skipped in a step (their slots stay as they are); the powers advance once per step."""

    def __init__(self, params_or_named_params, lr: float, beta1: float = 0.5,
                 beta2: float = 0.999, eps: float = 1e-8,
                 constraints: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None):
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
        self.lr = float(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._beta1_t = _f32(beta1, device)
        self._beta2_t = _f32(beta2, device)
        self._eps_t = _f32(eps, device)
        self._one = _f32(1.0, device)
        self._beta1_power = self._beta1_t.clone()
        self._beta2_power = self._beta2_t.clone()
        self.m = {n: torch.zeros_like(p, dtype=_slot_dtype(p)) for n, p in named}
        self.v = {n: torch.zeros_like(p, dtype=_slot_dtype(p)) for n, p in named}

    # -- hyper-parameters ----------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)

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

    # -- the update ----------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        if lr is not None:
            self.set_lr(lr)
        one = self._one
        lr_t = _f32(self.lr, one.device)
        alpha = lr_t * torch.sqrt(one - self._beta2_power) / (one - self._beta1_power)
        one_minus_b1 = one - self._beta1_t
        one_minus_b2 = one - self._beta2_t
        scratch = self._scratch_buffers()
        scalars64 = None
        for name, p in self.named_params:
            g = p.grad
            if g is None:
                continue
            m, v = self.m[name], self.v[name]
            if p.dtype == torch.float64:
                scalars64 = scalars64 or self._float64_scalars()
                self._step_float64(p, g, m, v, *scalars64)
                self._constrain(name, p)
                continue
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
            self._constrain(name, p)
        self._beta1_power = self._beta1_power * self._beta1_t
        self._beta2_power = self._beta2_power * self._beta2_t

    def _constrain(self, name: str, p: torch.Tensor) -> None:
        constraint = self.constraints.get(name)
        if constraint is not None:
            p.copy_(constraint(p))

    def _float64_scalars(self):
        """(alpha, 1 - beta1, 1 - beta2, eps) as TF's float64 ApplyAdam sees them: the float32
        lr/beta/epsilon tensors and float32 powers cast to float64, the arithmetic in float64."""
        lr, b1, b2, eps, p1, p2 = (t.to(torch.float64) for t in (
            _f32(self.lr, self._one.device), self._beta1_t, self._beta2_t, self._eps_t,
            self._beta1_power, self._beta2_power))
        one = torch.ones((), dtype=torch.float64, device=lr.device)
        alpha = lr * torch.sqrt(one - p2) / (one - p1)
        return alpha, one - b1, one - b2, eps

    @staticmethod
    def _step_float64(p, g, m, v, alpha, one_minus_b1, one_minus_b2, eps) -> None:
        """TF's ApplyAdam in float64, the float32 path's operation order (no scratch buffers: the
        float64 parity runs are small)."""
        m.add_((g - m) * one_minus_b1)
        v.add_((g * g - v) * one_minus_b2)
        p.sub_((m * alpha) / (torch.sqrt(v) + eps))

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
        taken from `state` when present."""
        for key in ("lr", "beta1", "beta2", "eps"):
            if key in state:
                setattr(self, key, float(state[key]))
        device = self._one.device
        self._beta1_t = _f32(self.beta1, device)
        self._beta2_t = _f32(self.beta2, device)
        self._eps_t = _f32(self.eps, device)
        self._beta1_power = torch.as_tensor(state["beta1_power"], dtype=torch.float32).to(device).clone()
        self._beta2_power = torch.as_tensor(state["beta2_power"], dtype=torch.float32).to(device).clone()
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
