"""Step-by-step training parity: the same D/G runs in tf_reference and torch_port.

The trajectory test restarts torch from TF's exact state before every run, so each comparison
measures one step's error, not a compounded one. Each run's gradient is recovered
from the Adam slot (g = (m_new - beta1 * m_old) / (1 - beta1)) in both frameworks and judged
against TF's own float64 gradient of the same run (`TFFloat64Gradients`: the same graph built
with float64 variables, loaded with the same state, evaluated before any `u` update).

Per tensor, every run (`compare_step`):

1. Semantics: the port's float64 gradient equals TF's float64 gradient within 1e-9 of the
   tensor's largest entry (measured <= 5.3e-13 over the 10 golden runs: summation order only).
2. Float32: the port's float32 gradient is no further from the float64 truth than twice TF's
   own float32 gradient is, with a floor of 64 float32 ulps of the tensor's largest entry, and
   never further than 1e-4 of it.
   The loss is piecewise smooth (relu, leaky_relu, |x|, max pooling). A few elements per run
   sit within float32 rounding of a kink, and a float32 run (TF's or the port's) may take the
   other side there; each such flip moves a generator's exact gradient by up to a few % of a
   tensor's max (parity_tests/kinks.py). TF's float32 runs cross 0-3 kinks per run (its 1e-3 to
   1e-2 errors vs float64), the port's 0-2. So the truth for the port is TF's float64 gradient
   plus the flip term: the port's float64 gradient on the branches its float32 run took minus
   its plain float64 gradient (exactly zero when the port crossed no kink). TF's error is taken
   against plain TF float64, kinks included, so 2x TF's error can be loose on a run where TF
   crossed a kink: the 1e-4 cap holds the port to its own measured rounding level then
   (branch-matched port error <= 3.7e-5 of max over the 10 runs; TF's branch-matched rounding
   reaches 2.3e-4 on the generators).
   Floors: 64 ulps (3.8e-6) of max|g|: a gradient entry sums thousands of float32 products, and
   at the discriminator runs both frameworks sit at 1-50 ulps of max|g| from float64, where the
   ratio of two independent roundings of one tensor is noise (measured up to 6.9); 1e-10
   absolute for tensors whose whole gradient is float noise (AdaLIN rho at the first G run:
   max |g| 1.2e-11).

Generator conv biases that feed an instance norm only (golden.NORM_FED_BIAS) have an exact gradient
of zero; their float noise becomes full +-lr Adam steps and is not compared. (The up-sampling
and adaptive-resblock conv biases feed LIN/AdaLIN, whose layer-norm part does not cancel a
per-channel bias: their gradients are real, up to ~800, and are compared.)

After the gradient check, weight elements that differ by more than 0.05*lr are reported: Adam's
first steps are ~lr * sign(g), so agreeing-but-not-equal gradients near zero move a weight by
up to 2*lr in one framework and not the other.
"""
from __future__ import annotations

import numpy as np

from parity_tests.golden import NORM_FED_BIAS

SEMANTIC_RTOL = 1e-9
ULP_FLOOR = 64 * 2.0 ** -24  # of max |g|
F32_CAP = 1e-4  # of max |g|
ABS_FLOOR = 1e-10


def tf_session_state(sess, tf):
    return sess.run({v.op.name: v for v in tf.global_variables()})


def torch_state_from_tf(model, g_optim, d_optim, state):
    import torch

    from ugatit_common.tf_checkpoint import names as wc
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
    from ugatit_common.tf_checkpoint import names as wc
    state = dict(model.state_dict())
    state.update(g_optim.named_slots())
    state.update(d_optim.named_slots())
    state["optimizer.G.beta1_power"], state["optimizer.G.beta2_power"] = g_optim.powers
    state["optimizer.D.beta1_power"], state["optimizer.D.beta2_power"] = d_optim.powers
    sn = {k[: -len(".u")] for k in state if k.endswith(".u")}
    return {wc.torch_to_tf_name(k, sn): wc.to_tf_layout(k, v.detach().cpu().numpy().copy()) for k, v in state.items()}


class TFFloat64Gradients:
    """tf_reference's train graph built in float64 (the variable scope's default dtype):
    `grads(state, "G"|"D")` loads a TF state (every variable, `u` included, in one run) and
    returns {TF name: float64 gradient} of Generator_loss / Discriminator_loss, as
    `tf.gradients` of the official loss graph. Reloading before each call undoes the `u`
    assignments the previous evaluation made."""

    def __init__(self, cfg: dict, real_a: np.ndarray, real_b: np.ndarray):
        from tf_reference.compat import tf
        from tf_reference.model import UGATITGraph
        self.graph = tf.Graph()
        with self.graph.as_default(), tf.variable_scope(tf.get_variable_scope(), dtype=tf.float64):
            pa, pb = tf.placeholder(tf.float64, real_a.shape), tf.placeholder(tf.float64, real_b.shape)
            m = UGATITGraph(cfg).build_train(pa, pb)
            # the gradients the official Adam ops apply (what tf.gradients of each loss gives;
            # reusing them saves building two more gradient graphs)
            grads = {op.inputs[0].op.name: op.inputs[9] for op in self.graph.get_operations() if op.type == "ApplyAdam"}
            self._grads = {"G": {n: t for n, t in grads.items() if "generator" in n},
                           "D": {n: t for n, t in grads.items() if "discriminator" in n}}
            self._vars = tf.global_variables()
            self._inits = [v.initializer for v in self._vars]
            # no grappler: its passes (fusions, layout) only change float64 rounding here, and
            # optimizing this graph costs several seconds per fetch set
            config = tf.ConfigProto()
            config.graph_options.rewrite_options.disable_meta_optimizer = True
            self.sess = tf.Session(graph=self.graph, config=config)
        self._feed = {pa: real_a.astype(np.float64), pb: real_b.astype(np.float64)}

    def grads(self, state: dict, which: str) -> dict:
        self.sess.run(self._inits, {v.initial_value: np.asarray(state[v.op.name], v.dtype.base_dtype.as_numpy_dtype)
                                    for v in self._vars})
        return self.sess.run(self._grads[which], self._feed)

    def close(self):
        self.sess.close()


def float32_tolerance(err_tf: float, scale: float) -> float:
    """How far the port's float32 gradient may be from the float64 truth (see module docstring)."""
    return max(min(F32_CAP * scale, max(2.0 * err_tf, ULP_FLOOR * scale)), ABS_FLOOR)


def tensor_class(name: str) -> str:
    """generator_B/MLP/gamma/dense/kernel -> gen:MLP (for summaries)."""
    net = "gen" if name.startswith("generator") else "dis"
    for part in ("MLP", "conv_1x1", "CAM_logit", "adaptive_resblock", "resblock", "layer_ins_norm", "up_conv",
                 "G_logit", "D_logit", "conv_last", "ins_norm"):
        if part in name:
            return f"{net}:{part}"
    return f"{net}:conv"


def compare_step(before: dict, tf_after: dict, torch_after: dict, lr: float, tf64: dict, port64: dict,
                 port64_branches: dict, beta1: float = 0.5):
    """One run's comparison. `tf64`: TF's float64 gradients of this run's loss ({TF name: array},
    exactly this run's trained variables); `port64` / `port64_branches`: the port's float64
    gradients, plain and on the branches of the port's float32 run (TF layout).
    Returns (failures, report) with report["rows"] = {name: (class, scale, err_tf, err_port,
    err_port_vs_tf64, err64)} (absolute max errors) and report["amplified"]."""
    failures, rows, amplified = [], {}, {}
    for name, ref in tf_after.items():
        if name.endswith("/u") or "_power" in name:
            d = float(np.abs(torch_after[name] - ref).max())
            if d > 1e-5:
                failures.append(f"{name}: max |diff| {d:.3g} > 1e-5")
    for name, truth in tf64.items():
        if NORM_FED_BIAS.match(name):
            continue
        truth = np.asarray(truth, np.float64)
        g_tf = (tf_after[name + "/Adam"].astype(np.float64) - beta1 * before[name + "/Adam"]) / (1 - beta1)
        g_port = (torch_after[name + "/Adam"].astype(np.float64) - beta1 * before[name + "/Adam"]) / (1 - beta1)
        scale = float(np.abs(truth).max()) or 1.0
        err64 = float(np.abs(port64[name] - truth).max())
        port_truth = truth + (port64_branches[name] - port64[name])
        err_tf = float(np.abs(g_tf - truth).max())
        err_port = float(np.abs(g_port - port_truth).max())
        rows[name] = (tensor_class(name), scale, err_tf, err_port, float(np.abs(g_port - truth).max()), err64)
        if err64 > SEMANTIC_RTOL * scale:
            failures.append(f"{name}: float64 gradient |port - TF| {err64:.3g} > {SEMANTIC_RTOL:g} * {scale:.3g}")
        tol = float32_tolerance(err_tf, scale)
        if err_port > tol:
            failures.append(f"{name}: float32 gradient error {err_port:.3g} > {tol:.3g} (TF's own {err_tf:.3g}, "
                            f"max |g| {scale:.3g})")
            continue
        wdiff = np.abs(torch_after[name].astype(np.float64) - tf_after[name])
        bad = wdiff > 0.05 * lr
        if bad.any():
            amplified[name] = (int(bad.sum()), int(bad.size), float(wdiff.max() / lr))
    return failures, {"rows": rows, "amplified": amplified}


def summarize(rows: dict) -> dict:
    """{class: (worst TF32 rel, worst port32 rel vs its truth, worst port32 rel vs plain TF64, worst f64 rel)}."""
    out = {}
    for cls, scale, *errs in rows.values():
        rel = [e / scale for e in errs]
        out[cls] = [max(a, b) for a, b in zip(out.get(cls, rel), rel)]
    return out
