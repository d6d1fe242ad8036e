"""Step-by-step training parity: the same D/G runs in tf_reference and torch_port.

The trajectory test restarts torch from TF's exact state before every run, so each comparison
measures one step's error, not a compounded one. Each run's gradient is recovered
from the Adam slot (g = (m_new - beta1 * m_old) / (1 - beta1)) in both frameworks and judged
against TF's own float64 gradient of the same run (`TFFloat64Gradients`: the same graph built
with float64 variables, loaded with the same state, evaluated before any `u` update).

Per tensor, every run (`compare_step`); no bound in it was measured on one CPU:

1. Semantics: the port's float64 gradient equals TF's float64 gradient within 1e-9 of the
   tensor's largest entry (float32's rounding here, below 1e-4 of max |g|, carried to float64's
   unit roundoff 2^-53 is ~2e-13; measured <= 5.3e-13 over the 10 golden runs).
2. Float32 gradient, judged against the float64 truth: the root mean square over the tensor of
   |port32 - truth| must be at most

       max(RMS_FACTOR * rms|tf32 - tf64|,  u * sqrt(K_run) * max|truth|),   u = 2^-24,

   the same rule as the forward criterion (parity_tests/harness.py). K_run counts the terms of
   the float32 sums along the longest chain of the run (`chain_sums`): a D run evaluates a
   generator for the fakes, then a discriminator branch forward and backward; a G run two
   generators in series (the cycle) forward and backward; and each gradient is one more sum
   over up to batch * img_size^2 output positions. Each sum of K terms rounds by ~u * sqrt(K)
   of its terms' size, sums in series add in quadrature; parallel calls (real and fake, A and B)
   add contributions of the same relative error and do not count twice. The first term carries
   the conditioning (norm layers amplify rounding in both frameworks alike): the port's
   rounding is of the size of TF's own in the same run.
   The loss is piecewise smooth (relu, leaky_relu, |x|, max pooling). A few elements per run
   sit within float32 rounding of a kink, and a float32 run (TF's or the port's) may take the
   other side there; each such flip moves a generator's exact gradient by up to a few % of a
   tensor's max (parity_tests/kinks.py). The port's truth is therefore TF's float64 gradient
   plus the port's flip term (its float64 gradient on its float32 run's branches minus its plain
   float64 gradient: zero when it crossed no kink), so the port's error is rounding only. TF's
   error is against plain float64 and includes TF's own flips where it crossed one: the first
   term is then loose for the tensors upstream of that kink in that run, and the floor still
   holds every other run. Root mean squares, not maxima: the max of two independent roundings
   of a 16-entry bias is noise (the old max-based rule failed on an Intel Xeon with AMX at
   "generator_A/MLP/linear_0/dense/bias: 7.03e-07 > 4.26e-07 (TF's own 2.13e-07)").
   Tensors whose exact gradient is zero in the measured runs (AdaLIN rho at the first G run,
   max |g| ~1e-11 of cancelling terms) have a tiny floor; TF's error (the same cancellation
   noise) is their budget.
3. Optimizer: the port's update is TF1 Adam applied to the port's own slots, element by element:
   v_new = beta2 * v_old + (1 - beta2) * g^2 and w_new = w_old - alpha * m_new / (sqrt(v_new) +
   eps), alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power), computed in float64 from the
   float32 hyper-parameters TF uses, rho clipped to [0, 1]; within the rounding of the float32
   operations (2u of the result plus 8u of the step for w, 2u plus (1 - beta2) * 8u * (g^2 +
   |v_old|) for v). A wrong epsilon, its placement, beta2 or the bias correction moves the small
   entries by far more.
4. Spectral-norm `u` (one power iteration, v = l2n(u W^T), u = l2n(v W)) against TF's float64
   run of the same state: rms |u_port - u64| <= max(RMS_FACTOR * rms |u_tf32 - u64|,
   u * sqrt(rows + cols of W)); the losses: |port - loss64| <= max(RMS_FACTOR * |tf32 - loss64|,
   u * sqrt(K_run) * |loss64|); the Adam powers (exact float32 products of the same constants):
   2u relative.

Measured margins per instruction set are in test_training_parity.py's docstring and the README.

Generator conv biases that feed an instance norm only (golden.NORM_FED_BIAS) have an exact gradient
of zero; their float noise becomes full +-lr Adam steps and is not compared. (The up-sampling
and adaptive-resblock conv biases feed LIN/AdaLIN, whose layer-norm part does not cancel a
per-channel bias: their gradients are real, up to ~800, and are compared.)

After the checks, weight elements that differ from TF's by more than 0.05*lr are reported: Adam's
first steps are ~lr * sign(g), so agreeing-but-not-equal gradients near zero move a weight by
up to 2*lr in one framework and not the other.
"""
from __future__ import annotations

import numpy as np

from parity_tests.golden import NORM_FED_BIAS
from parity_tests.harness import RMS_FACTOR, U32, rounding_floor

SEMANTIC_RTOL = 1e-9


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
            self._losses = {"G": m.Generator_loss, "D": m.Discriminator_loss}
            self._vars = tf.global_variables()
            self._inits = [v.initializer for v in self._vars]
            self._u = {v.op.name: v for v in self._vars if v.op.name.endswith("/u")}
            # no grappler: its passes (fusions, layout) only change float64 rounding here, and
            # optimizing this graph costs several seconds per fetch set
            config = tf.ConfigProto()
            config.graph_options.rewrite_options.disable_meta_optimizer = True
            self.sess = tf.Session(graph=self.graph, config=config)
        self._feed = {pa: real_a.astype(np.float64), pb: real_b.astype(np.float64)}

    def grads(self, state: dict, which: str) -> dict:
        return self.evaluate(state, which)[0]

    def evaluate(self, state: dict, which: str):
        """(gradients, loss, {u name: u after the run}) of one float64 run from `state`."""
        self.sess.run(self._inits, {v.initial_value: np.asarray(state[v.op.name], v.dtype.base_dtype.as_numpy_dtype)
                                    for v in self._vars})
        grads, loss = self.sess.run([self._grads[which], self._losses[which]], self._feed)
        return grads, float(loss), self.sess.run(self._u)

    def close(self):
        self.sess.close()


def float32_budget(tf_rms: float, scale: float, reduction: float) -> float:
    """Criterion 2: the largest root-mean-square float32 error vs the float64 truth the port may
    have (module docstring): max(RMS_FACTOR * TF's own, u * sqrt(reduction) * scale)."""
    return max(RMS_FACTOR * tf_rms, rounding_floor(reduction, scale))


def rms(a) -> float:
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(np.square(a)))) if a.size else 0.0


def chain_sums(cfg: dict) -> dict:
    """{"G": K, "D": K, "gen": K_gen, "dis": K_dis}: the float32 sum terms along the longest chain
    of a G run and a D run (module docstring), counted on the port's layers for `cfg`."""
    import torch
    from parity_tests.harness import torch_forward
    size = cfg["img_size"]
    red = {}
    torch_forward({}, cfg, torch.zeros(1, cfg.get("img_ch", 3), size, size), ("generator_B", "discriminator_A"),
                  reductions=red)
    k_gen = red["generator_B:image"]
    k_dis = max(red["discriminator_A:local"], red["discriminator_A:global"])
    k_grad = cfg.get("batch_size", 1) * size * size  # a gradient sums over at most every output position
    return {"gen": k_gen, "dis": k_dis, "D": k_gen + 2 * k_dis + k_grad,
            "G": 2 * max(2 * k_gen, k_gen + k_dis) + k_grad}


def adam_check(name: str, before: dict, after: dict, lr: float, beta1: float = 0.5, beta2: float = 0.999,
               eps: float = 1e-8) -> str | None:
    """Criterion 3 for one variable: `after` (one framework's state after the run) holds TF1 Adam
    applied to its own slots from `before`; returns a failure line or None."""
    f32 = lambda x: float(np.float32(x))  # TF's hyper-parameters are float32 constants
    b1, b2, e, lr32 = f32(beta1), f32(beta2), f32(eps), f32(lr)
    one_b2 = f32(1.0 - b2)  # 1 - float32(0.999), exact in float32 (Sterbenz)
    p1, p2 = float(before["beta1_power" if name.startswith("generator") else "beta1_power_1"]), \
        float(before["beta2_power" if name.startswith("generator") else "beta2_power_1"])
    m_old, v_old = (np.asarray(before[name + s], np.float64) for s in ("/Adam", "/Adam_1"))
    m_new, v_new = (np.asarray(after[name + s], np.float64) for s in ("/Adam", "/Adam_1"))
    g = (m_new - b1 * m_old) / (1 - b1)
    v_exp = v_old + (g * g - v_old) * one_b2
    # g carries the rounding of m_new (u of |m_new| and |g - m_old|, doubled by 1/(1 - beta1))
    g_err = (2 * U32 * (np.abs(m_new) + np.abs(g - m_old)) + U32 * np.abs(g)) / (1 - b1)
    tol_v = 2 * U32 * np.abs(v_exp) + one_b2 * (8 * U32 * (g * g + np.abs(v_old)) + 2 * np.abs(g) * g_err)
    bad_v = np.abs(v_new - v_exp) > tol_v
    alpha = lr32 * np.sqrt(1 - p2) / (1 - p1)
    step = alpha * m_new / (np.sqrt(v_new) + e)
    w_exp = np.asarray(before[name], np.float64) - step
    if name.endswith("/rho"):
        w_exp = np.clip(w_exp, 0.0, 1.0)
    w_new = np.asarray(after[name], np.float64)
    tol_w = 2 * U32 * np.abs(w_exp) + 8 * U32 * np.abs(step)
    bad_w = np.abs(w_new - w_exp) > tol_w
    if bad_v.any() or bad_w.any():
        i = int(np.argmax(np.abs(w_new - w_exp) / np.maximum(tol_w, 1e-300)))
        return (f"{name}: Adam update off TF1 Adam of its own slots: {int(bad_w.sum())} weight and {int(bad_v.sum())} "
                f"v entries of {w_new.size} (worst weight {w_new.flat[i]:.9g} vs {w_exp.flat[i]:.9g}, step "
                f"{step.flat[i]:.3g})")
    return None


def tensor_class(name: str) -> str:
    """generator_B/MLP/gamma/dense/kernel -> gen:MLP (for summaries)."""
    net = "gen" if name.startswith("generator") else "dis"
    for part in ("MLP", "conv_1x1", "CAM_logit", "adaptive_resblock", "resblock", "layer_ins_norm", "up_conv",
                 "G_logit", "D_logit", "conv_last", "ins_norm"):
        if part in name:
            return f"{net}:{part}"
    return f"{net}:conv"


def compare_step(before: dict, tf_after: dict, torch_after: dict, lr: float, tf64: dict, port64: dict,
                 port64_branches: dict, reduction: float, u64: dict | None = None, beta1: float = 0.5):
    """One run's comparison (criteria of the module docstring). `tf64`: TF's float64 gradients of
    this run's loss ({TF name: array}, exactly this run's trained variables); `port64` /
    `port64_branches`: the port's float64 gradients, plain and on the branches of the port's float32
    run (TF layout); `reduction`: K_run of this run (`chain_sums`); `u64`: TF's float64 `u` after
    the run (criterion 4, skipped when None).
    Returns (failures, report) with report["rows"] = {name: (class, scale, tf_rms, port_rms, budget,
    err_port_vs_tf64_rms, err64)} and report["amplified"]."""
    failures, rows, amplified = [], {}, {}
    for name, ref in tf_after.items():
        if "_power" in name:
            d = abs(float(torch_after[name]) - float(ref))
            if d > 2 * U32 * abs(float(ref)):
                failures.append(f"{name}: |port - TF| {d:.3g} > 2u relative")
        elif name.endswith("/u") and u64 is not None:
            truth = np.asarray(u64[name], np.float64)
            # the power iteration's two sums: over the kernel's rows (out) and its columns
            shape = np.shape(before.get(name[:-2] + "/kernel", truth))
            n_sum = int(np.prod(shape[:-1])) + shape[-1]
            port_e, tf_e = rms(torch_after[name] - truth), rms(tf_after[name] - truth)
            budget = float32_budget(tf_e, float(np.abs(truth).max()), n_sum)
            if port_e > budget:
                failures.append(f"{name}: float32 u error vs float64 rms {port_e:.3g} > {budget:.3g} (TF's {tf_e:.3g})")
    for name, truth in tf64.items():
        if NORM_FED_BIAS.match(name):
            continue
        truth = np.asarray(truth, np.float64)
        g_tf = (tf_after[name + "/Adam"].astype(np.float64) - beta1 * before[name + "/Adam"]) / (1 - beta1)
        g_port = (torch_after[name + "/Adam"].astype(np.float64) - beta1 * before[name + "/Adam"]) / (1 - beta1)
        scale = float(np.abs(truth).max())
        err64 = float(np.abs(port64[name] - truth).max())
        port_truth = truth + (port64_branches[name] - port64[name])
        tf_rms, port_rms = rms(g_tf - truth), rms(g_port - port_truth)
        budget = float32_budget(tf_rms, scale, reduction)
        rows[name] = (tensor_class(name), scale or 1.0, tf_rms, port_rms, budget, rms(g_port - truth), err64)
        if err64 > SEMANTIC_RTOL * max(scale, 1e-300):
            failures.append(f"{name}: float64 gradient |port - TF| {err64:.3g} > {SEMANTIC_RTOL:g} * {scale:.3g}")
        if port_rms > budget:
            failures.append(f"{name}: float32 gradient error vs float64, rms {port_rms:.3g} > budget {budget:.3g} "
                            f"(TF's own {tf_rms:.3g}, floor {U32 * np.sqrt(reduction) * scale:.3g}, "
                            f"max |g| {scale:.3g})")
            continue
        bad = adam_check(name, before, torch_after, lr)
        if bad:
            failures.append(bad)
            continue
        wdiff = np.abs(torch_after[name].astype(np.float64) - tf_after[name])
        if (wdiff > 0.05 * lr).any():
            amplified[name] = (int((wdiff > 0.05 * lr).sum()), int(wdiff.size), float(wdiff.max() / lr))
    return failures, {"rows": rows, "amplified": amplified}


def summarize(rows: dict) -> dict:
    """{class: (worst TF32 rms / max|g|, worst port32 rms / max|g|, worst port32 rms / budget, worst f64 / max|g|)}."""
    out = {}
    for cls, scale, tf_rms, port_rms, budget, _, err64 in rows.values():
        vals = [tf_rms / scale, port_rms / scale, port_rms / budget if budget else 0.0, err64 / scale]
        out[cls] = [max(a, b) for a, b in zip(out.get(cls, vals), vals)]
    return out
