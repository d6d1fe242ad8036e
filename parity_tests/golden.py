"""The golden bundle and the one comparison rule every trajectory test uses.

Tolerances (measured with tf_reference against the golden, TF 2.21 CPU, oneDNN on):
- losses: 1e-5 relative (float summation order; measured <= 1e-7);
- weights: |diff| <= 0.05 * lr. After a few Adam steps a weight has moved by up to ~lr per
  step; float-noise differences in gradients near zero change m/sqrt(v) and so move a weight by
  a small fraction of one step (measured <= 0.014 * lr);
- Adam slots m (`/Adam`) and v (`/Adam_1`): |diff| <= 1e-2 * max|slot| of that tensor. They
  hold raw gradients; conv back-propagation sums thousands of terms with cancellation, so the
  smallest entries carry summation noise of ~1e-3 of the tensor's largest (measured <= 5.1e-3);
- spectral-norm `u` and the beta powers: 1e-5 absolute (unit vectors / exact products);
- conv biases that feed a normalisation (and their slots): presence and shape only. Their exact
  gradient is zero, so their float-noise gradients become full +-lr Adam steps; no two
  implementations agree on them (OFFICIAL_SEMANTICS, "Comparing training runs").
"""
import json
import os
import re

import numpy as np

from parity_tests.conftest import GOLDEN

# conv biases that feed a pure instance norm (which removes any per-channel constant): exact
# gradient zero. (The adaptive_resblock and up_conv biases feed AdaLIN / LIN, whose layer-norm
# part keeps a per-channel constant: their gradients are real and are compared.)
NORM_FED_BIAS = re.compile(
    r"^generator_[AB]/(conv|conv_\d+|resblock_\d+/res\d/conv_0)"
    r"/conv2d/bias(/Adam(_1)?)?$")


def record():
    with open(os.path.join(GOLDEN, "record.json")) as f:
        return json.load(f)


def load(name):
    return np.load(os.path.join(GOLDEN, name))


def compare_checkpoint(got: dict, ref: dict, lr: float):
    """Compare {name: array} dicts by the rule above. Returns (failures, report rows)."""
    failures, rows = [], []
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    if missing:
        failures.append(f"missing variables: {missing[:10]}")
    if extra:
        failures.append(f"unexpected variables: {extra[:10]}")
    for name in sorted(set(ref) & set(got)):
        a, b = np.asarray(got[name]), np.asarray(ref[name])
        if a.shape != b.shape:
            failures.append(f"{name}: shape {a.shape} != {b.shape}")
            continue
        if NORM_FED_BIAS.match(name):
            continue
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        if name.endswith("/Adam") or name.endswith("/Adam_1"):
            scale = float(np.abs(b).max()) or 1.0
            tol, kind = 1e-2 * scale, "slot"
        elif name.endswith("/u") or "_power" in name:
            tol, kind = 1e-5, "exact"
        else:
            tol, kind = 0.05 * lr, "weight"
        rows.append((name, kind, diff, tol))
        if not diff <= tol:
            failures.append(f"{name} ({kind}): max |diff| {diff:.3g} > {tol:.3g}")
    return failures, rows


def summarize(rows):
    """Worst difference per kind, relative to its tolerance."""
    out = {}
    for name, kind, diff, tol in rows:
        if kind not in out or diff / tol > out[kind][1] / out[kind][2]:
            out[kind] = (name, diff, tol)
    return out
