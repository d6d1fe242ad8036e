"""How a free run judges two training states: per tensor, relative to the tensor's scale.

- weights (every trainable variable and the spectral-norm `u`) and Adam's second moments
  (`/Adam_1`): max |got - ref| / max |ref| over the tensor (a tensor's rounding is relative to
  its largest entry, not to each element: an element near zero carries the absolute rounding of
  its neighbours);
- Adam's first moments (`/Adam`): max |got - ref| / max(max |m_ref|, max sqrt(v_ref)). m is a
  running mean of gradients that changes sign; its rounding is that of the gradients it
  averages, whose size is sqrt(v) (Adam's own measure, which it divides m by: the error of the
  step m / sqrt(v) is this ratio). Measured: a 2-entry up_conv bias had m = +-0.0013 at one
  iteration (+-0.1-0.3 around it, sqrt(v) = 1.02) with the same absolute difference as its
  neighbours, 2e-12: 1.5e-9 of max |m| but 1.9e-12 of sqrt(v);
- a CAM layer's bias (one scalar, and its slots) on the scale of its layer, kernel and bias
  together: the official `fully_connected_with_w` adds the bias to every kernel entry to make the
  channel weights, so they are one tensor in use. Alone, the scalar has no scale: its gradient
  is the difference of the real and fake logits' terms (hinge and wgan: -1 + 1 + ~1e-7 while
  every margin is active), which float64 carries only to ~u / 1e-7 of itself, and its value
  crosses zero. Measured (hinge, no sn, seed 2): TF and the port 1.8e-9 apart relative to the
  scalar at the first iteration, 1.5e-6 when it crossed zero; the port against itself started
  1e-15 away, 1e-11;
- the Adam powers by their effect, the bias correction sqrt(1 - beta2_power) / (1 - beta1_power)
  that ApplyAdam computes in float64: TF's CPU kernels flush float32 denormals to zero, so from
  the 126th update TF holds beta1_power = 0 where the port holds 0.5^127 (the product torch
  computes), which changes no update (1 - 0.5^127 = 1);
- losses (every loss term both trainers return): |got - ref| / max(|ref|, 1) (wgan's D loss
  crosses zero; a loss below 1 is judged absolutely);
- generator outputs on the fixed probe inputs (image and CAM logits of both generators):
  max |got - ref| / max |ref|. These judge the conv biases that feed an instance norm
  (golden.NORM_FED_BIAS, and their slots): their exact gradient is zero, so their updates are
  float noise passed through Adam (full +-lr steps in float32; in float64 the noise is below
  epsilon, ~1e-5 lr apart measured) that no two implementations share, and they are not compared
  elementwise; the norm removes them, so their only effect is the outputs' (float rounding).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from parity_tests.free_run import CATEGORIES
from parity_tests.golden import NORM_FED_BIAS

CAM_BIAS = re.compile(r"CAM_logit/bias(?=(/Adam(_1)?)?$)")


@dataclass
class Worst:
    value: float = 0.0
    name: str = ""
    index: tuple = ()

    def update(self, value: float, name: str, index: tuple = ()) -> None:
        if value > self.value or not self.name:
            self.value, self.name, self.index = float(value), name, tuple(int(i) for i in index)

    def as_json(self) -> dict:
        return {"value": self.value, "name": self.name, "index": list(self.index)}


def tensor_relative(got, ref, scale: float | None = None) -> tuple[float, tuple]:
    """(max |got - ref| / scale (default max |ref|), index of the largest difference); inf when
    the scale is zero and the difference is not."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    d = np.abs(got - ref)
    if d.size == 0 or not d.max() > 0:
        return (0.0, ()) if d.size == 0 or d.max() == 0 else (float("inf"), ())
    index = np.unravel_index(int(np.argmax(d)), d.shape) if d.ndim else ()
    scale = float(np.abs(ref).max()) if scale is None else scale
    return (float(d.max()) / scale if scale > 0 else float("inf")), index


def bias_correction(state: dict, suffix: str) -> float:
    """sqrt(1 - beta2_power) / (1 - beta1_power) in float64 (G: suffix "", D: "_1")."""
    p1, p2 = (float(np.float64(state[f"beta{i}_power{suffix}"])) for i in (1, 2))
    return float(np.sqrt(1.0 - p2) / (1.0 - p1))


def _own_scale(name: str, ref_state: dict) -> float:
    ref = np.asarray(ref_state[name], np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    if name.endswith("/Adam"):  # m: the gradients' scale
        scale = max(scale, float(np.sqrt(np.abs(np.asarray(ref_state[name + "_1"], np.float64))).max()))
    return scale


def scale(name: str, ref_state: dict) -> float:
    """The scale a tensor's difference is judged on (module docstring)."""
    own = _own_scale(name, ref_state)
    if CAM_BIAS.search(name):
        own = max(own, _own_scale(CAM_BIAS.sub("CAM_logit/kernel", name), ref_state))
    return own


def compare(ref_state: dict, got_state: dict, ref_losses: dict, got_losses: dict, ref_probe: dict,
            got_probe: dict, lr: float) -> dict:
    """{"losses"|"weights"|"slots"|"outputs": Worst, "norm_fed_bias_lr": max |diff| / lr of the
    biases judged by their effect (information only)}."""
    out = {c: Worst() for c in CATEGORIES}
    bias_lr = 0.0
    for name, ref in ref_state.items():
        got = got_state[name]
        if "_power" in name:
            continue
        if NORM_FED_BIAS.match(name):
            if not name.endswith(("/Adam", "/Adam_1")):
                bias_lr = max(bias_lr, float(np.abs(np.asarray(got, np.float64) - ref).max()) / lr)
            continue
        value, index = tensor_relative(got, ref, scale(name, ref_state))
        out["slots" if name.endswith(("/Adam", "/Adam_1")) else "weights"].update(value, name, index)
    for net, suffix in (("G", ""), ("D", "_1")):
        ref = bias_correction(ref_state, suffix)
        out["slots"].update(abs(bias_correction(got_state, suffix) - ref) / ref, f"{net} Adam bias correction")
    for name in sorted(set(ref_losses) & set(got_losses)):
        ref = ref_losses[name]
        out["losses"].update(abs(got_losses[name] - ref) / max(abs(ref), 1.0), name)
    for name, ref in ref_probe.items():
        value, index = tensor_relative(got_probe[name], ref)
        out["outputs"].update(value, name, index)
    return {**out, "norm_fed_bias_lr": bias_lr}
