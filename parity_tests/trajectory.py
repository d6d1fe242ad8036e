"""Step-by-step training parity: the same D/G runs in tf_reference and torch_port.

`teacher_forced_steps` restarts torch from TF's exact state before every run, so each
comparison measures one step's error, not a compounded one. At Adam's first steps an update
is ~lr * sign(g): an element whose gradient is at float-noise level can move by up to 2*lr in
one framework and not the other. The comparison therefore recovers each run's gradient from
the Adam slot (g = (m_new - beta1 * m_old) / (1 - beta1)) and accepts a weight element that
differs by more than 0.05*lr only where the two frameworks' gradients agree within the
gradient tolerance (the difference is Adam's amplification of agreeing gradients, reported).
"""
from __future__ import annotations

import numpy as np

GRAD_RTOL = 1e-3  # per tensor: max |g_torch - g_tf| <= 1e-3 * max |g_tf| (float summation order)


def tf_session_state(sess, tf):
    return sess.run({v.op.name: v for v in tf.global_variables()})


def torch_state_from_tf(model, g_optim, d_optim, state):
    import torch
    import weights_convert as wc
    weights, slots = {}, {"G": {}, "D": {}}
    for name, value in state.items():
        tname = wc.tf_to_torch_name(name)
        t = torch.from_numpy(np.array(wc.to_torch_layout(name, value)))
        if tname.startswith("optimizer."):
            continue
        if name.endswith(wc.SLOT_SUFFIXES):
            slots["G" if name.startswith("generator") else "D"][tname] = t
        else:
            weights[tname] = t
    model.load_state_dict(weights)
    g_optim.load_named_slots(slots["G"], torch.tensor(state["beta1_power"]), torch.tensor(state["beta2_power"]))
    d_optim.load_named_slots(slots["D"], torch.tensor(state["beta1_power_1"]), torch.tensor(state["beta2_power_1"]))


def torch_state_as_tf(model, g_optim, d_optim):
    import weights_convert as wc
    state = dict(model.state_dict())
    state.update(g_optim.named_slots())
    state.update(d_optim.named_slots())
    state["optimizer.G.beta1_power"], state["optimizer.G.beta2_power"] = g_optim.powers
    state["optimizer.D.beta1_power"], state["optimizer.D.beta2_power"] = d_optim.powers
    sn = {k[: -len(".u")] for k in state if k.endswith(".u")}
    return {wc.torch_to_tf_name(k, sn): wc.to_tf_layout(k, v.detach().cpu().numpy().copy()) for k, v in state.items()}


def compare_step(before: dict, tf_after: dict, torch_after: dict, lr: float, beta1: float = 0.5,
                 truth: dict | None = None):
    """One run's comparison. Returns (failures, report dict). With `truth` (TF name → float64
    gradient of this run), a tensor's gradient passes when the port is as close to the truth as
    TF's float32 gradient, within a factor 2 (floors 1e-4 of its max and 1e-10 absolute)."""
    from parity_tests.golden import NORM_FED_BIAS
    failures, amplified, worst_grad = [], {}, (0.0, "")
    for name, ref in tf_after.items():
        if name.endswith(("/Adam", "/Adam_1")) or NORM_FED_BIAS.match(name):
            continue
        got = torch_after[name]
        if name.endswith("/u") or "_power" in name:
            d = float(np.abs(got - ref).max())
            if d > 1e-5:
                failures.append(f"{name}: max |diff| {d:.3g} > 1e-5")
            continue
        if np.array_equal(before[name], ref) and np.array_equal(before[name], got):
            continue  # not updated by this run
        g_tf = (tf_after[name + "/Adam"] - beta1 * before[name + "/Adam"]) / (1 - beta1)
        g_t = (torch_after[name + "/Adam"] - beta1 * before[name + "/Adam"]) / (1 - beta1)
        scale = float(np.abs(g_tf).max())
        gdiff = np.abs(g_t - g_tf)
        gtol = GRAD_RTOL * scale + 1e-12
        if truth is not None and name in truth:
            err_tf = float(np.abs(g_tf - truth[name]).max())
            gdiff = np.abs(g_t - truth[name])
            # factor 2: both gradients are recovered from Adam slots, whose float32 rounding adds
            # error of the same order to each side ("as accurate as the reference", not "more")
            gtol = max(2 * err_tf, 1e-4 * scale, 1e-10)
        rel = float(gdiff.max()) / (scale or 1.0)
        if rel > worst_grad[0]:
            worst_grad = (rel, name)
        if gdiff.max() > gtol:
            failures.append(f"{name}: gradient max |diff| {gdiff.max():.3g} > {gtol:.3g} (max |g| {scale:.3g})")
            continue
        wdiff = np.abs(got.astype(np.float64) - ref)
        bad = wdiff > 0.05 * lr
        if bad.any():
            amplified[name] = (int(bad.sum()), int(bad.size), float(wdiff.max() / lr))
    return failures, {"worst_grad_rel": worst_grad, "amplified": amplified}
