"""The parity criteria can fail: real port errors, injected into the torch side, are flagged.

Every float32 criterion of the parity suites is judged against a float64 truth with a budget
from float32 rounding (parity_tests/harness.py, parity_tests/trajectory.py), not against one
machine's float32 run. A looser criterion would pass on every CPU and prove nothing, so this
file injects errors a port could really make, by patching torch_port at run time (nothing in
torch_port is edited), and requires the criteria to flag each one:

- forward (`harness.compare` on the stored activation fixtures, no TensorFlow needed):
  semantic errors (a wrong epsilon, padding, kernel layout, smoothing, leaky-relu slope,
  flatten order, up-sampling, CAM bias; each on one fixture where its code path runs) must fail
  criterion 1 (float64); precision errors that leave the float64 run untouched (convolutions in
  bfloat16 or TF32, float16 dense outputs; on all three fixtures) must fail criterion 2
  (float32) while criterion 1 passes;
- `test_precision_threshold`: how many mantissa bits one convolution may lose before criterion
  2 notices (measured, printed, and bounded);
- gradients and updates (`trajectory.compare_step` on one D run and one G run from the golden
  init, with TensorFlow): Adam epsilon 1e-6, epsilon inside the bias correction (torch.optim.Adam),
  beta2 0.99, no bias correction, rho not clipped (the optimizer check); the L2 regulariser
  dropped for the CAM kernels or the whole G loss (the float64 gradient check); bfloat16
  discriminator and TF32 generator convolutions (the float32 gradient budget).
"""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

from parity_tests.activation_fixtures import CONFIGS, fixture_path, read
from parity_tests.harness import compare, torch_forward

FIXTURES = list(CONFIGS)


# ---------------------------------------------------------------------------------------------
# injections: context managers that patch torch_port (or the converted state / config)
# ---------------------------------------------------------------------------------------------

def _round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 x rounded to nearest with `bits` explicit mantissa bits (23 = unchanged); other
    dtypes pass through (the float64 run stays the truth)."""
    if x.dtype != torch.float32 or bits >= 23:
        return x
    drop = 23 - bits
    i = x.contiguous().view(torch.int32)
    half = 1 << (drop - 1)
    i = ((i + half + ((i >> drop) & 1) - 1) >> drop) << drop  # round half to even on the kept bits
    return i.view(torch.float32)


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def instance_norm_eps(eps):
    from torch_port import ops

    def forward(self, x):
        return F.instance_norm(x, weight=self.gamma, bias=self.beta, eps=eps)
    return _patched(ops.InstanceNorm, "forward", forward)


def adalin_eps(eps):
    """AdaLIN and LIN normalise with `eps` instead of 1e-5."""
    from torch_port import ops
    orig = ops._ins_layer_mix
    return _patched(ops, "_ins_layer_mix", lambda x, rho, _eps: orig(x, rho, eps))


def zero_padding():
    """Zero padding where the official conv reflects."""
    from torch_port import ops
    orig = ops.Conv.forward

    def forward(self, x):
        if self.pad_type == "reflect":
            self.pad_type = "zero"
            try:
                return orig(self, x)
            finally:
                self.pad_type = "reflect"
        return orig(self, x)
    return _patched(ops.Conv, "forward", forward)


def mirrored_asymmetric_padding():
    """Where kernel - stride is odd the official conv pads `pad` top/left and the rest
    bottom/right; this pads the other way round (same output shape)."""
    from torch_port import ops
    orig = ops.tf_conv_padding

    def pads(kernel, stride, pad):
        top, bottom, left, right = orig(kernel, stride, pad)
        return (bottom, top, right, left)
    return _patched(ops, "tf_conv_padding", pads)


def symmetric_padding():
    """`pad` on every side also where the official padding is asymmetric (4x4 stride-1 convs of
    the discriminator): the output loses a row and a column."""
    from torch_port import ops
    return _patched(ops, "tf_conv_padding", lambda kernel, stride, pad: (pad,) * 4 if pad > 0 else (0,) * 4)


def leaky_slope(alpha):
    """Every leaky relu with slope `alpha` (the discriminator's official slope is 0.2)."""
    from torch_port import networks, ops
    return _patched(networks, "lrelu", lambda x, _alpha=0.01: ops.lrelu(x, alpha))


def nchw_flatten():
    """The full model's MLP flattens the map in NCHW order (TF flattens NHWC)."""
    from torch_port import networks
    orig = networks.MLP.forward

    def forward(self, x):
        if self.light:
            return orig(self, x)
        x = F.relu(self.linear_0(x.reshape(x.shape[0], -1)))
        x = F.relu(self.linear_1(x))
        return self.gamma(x), self.beta(x)
    return _patched(networks.MLP, "forward", forward)


def bilinear_upsampling():
    from torch_port import networks
    return _patched(networks, "up_sample",
                    lambda x, scale_factor=2: F.interpolate(x, scale_factor=scale_factor, mode="bilinear"))


def cam_bias_dropped():
    """The CAM scales the map by w instead of the official w + bias."""
    from torch_port import ops
    orig = ops.CAMLogit.forward

    def forward(self, x):
        gap, gmp, _, _ = orig(self, x)
        w = self._sn_weight(self.weight) if self.sn else self.weight
        scaled = x * w.reshape(1, -1, 1, 1)
        return gap, gmp, scaled, scaled
    return _patched(ops.CAMLogit, "forward", forward)


def conv_mantissa(bits, only=None):
    """Convolutions whose float32 inputs and kernels are rounded to `bits` mantissa bits first
    (bfloat16: 7, TF32 and float16: 10), as reduced-precision kernels do (oneDNN's BF16 fpmath
    mode on AMX, CUDA's allow_tf32); `only`: just the conv at that module path."""
    from torch_port import ops
    orig = ops.Conv.forward
    conv2d = F.conv2d

    def rounded(x, w, *a, **k):
        return conv2d(_round_mantissa(x, bits), _round_mantissa(w, bits), *a, **k)

    def forward(self, x):
        if only is not None and getattr(self, "_path", None) != only:
            return orig(self, x)
        with _patched(F, "conv2d", rounded):
            return orig(self, x)
    return _stack(_patched(ops.Conv, "forward", forward), _module_paths())


def _module_paths():
    """Every module of a model built by torch_port.build_ugatit knows its path (`_path`)."""
    import torch_port
    orig = torch_port.build_ugatit

    def build(cfg):
        model = orig(cfg)
        for name, module in model.named_modules():
            module._path = name
        return model
    return _patched(torch_port, "build_ugatit", build)


def dense_output_float16():
    """Every dense layer's output stored in float16 (the MLP computing gamma / beta in half)."""
    from torch_port import ops
    orig = ops.Dense.forward

    def forward(self, x):
        y = orig(self, x)
        return y.half().float() if y.dtype == torch.float32 else y
    return _patched(ops.Dense, "forward", forward)


def naive_variance():
    """AdaLIN / LIN moments as var = E[x^2] - E[x]^2 (cancels in float32 where |mean| >> std;
    exact enough in float64)."""
    from torch_port import ops

    def normalize(dims):
        def f(x, eps):
            mean = x.mean(dims, keepdim=True)
            var = (x * x).mean(dims, keepdim=True) - mean * mean
            return (x - mean) / torch.sqrt(var + eps)
        return f
    return _stack(_patched(ops, "instance_normalize", normalize((2, 3))),
                  _patched(ops, "layer_normalize", normalize((1, 2, 3))))


@contextlib.contextmanager
def _stack(*cms):
    with contextlib.ExitStack() as stack:
        for cm in cms:
            stack.enter_context(cm)
        yield


class Injection:
    """A port error: `patch()` a context manager patching torch_port, `state(sd)` a changed
    converted state dict, `config(cfg)` a changed config; `applies(cfg)` where the code path runs."""

    def __init__(self, patch=None, state=None, config=None, applies=None):
        self.patch = patch or contextlib.nullcontext
        self.state = state or (lambda sd: sd)
        self.config = config or (lambda cfg: cfg)
        self.applies = applies or (lambda cfg: True)


def conv_kernel_spatially_transposed(state):
    """The HWIO -> OIHW conversion with kh and kw swapped."""
    return {k: (v.transpose(-1, -2).contiguous() if v.ndim == 4 and v.shape[-1] > 1 else v) for k, v in state.items()}


def dense_kernel_not_transposed(state):
    """tf.layers.dense kernels [in, out] loaded without the transpose (the square ones load)."""
    return {k: (v.t().contiguous() if v.ndim == 2 and v.shape[0] == v.shape[1] and v.shape[0] > 1 else v)
            for k, v in state.items()}


# semantic errors: criterion 1 (float64) must flag them
SEMANTIC = {
    "instance norm eps 1e-3": Injection(lambda: instance_norm_eps(1e-3)),
    "instance norm eps 1e-6": Injection(lambda: instance_norm_eps(1e-6)),
    "AdaLIN/LIN eps 1e-3": Injection(lambda: adalin_eps(1e-3)),
    "AdaLIN/LIN eps 1e-6": Injection(lambda: adalin_eps(1e-6)),
    "zero instead of reflect padding": Injection(zero_padding),
    "asymmetric padding mirrored": Injection(mirrored_asymmetric_padding),
    "symmetric instead of asymmetric padding": Injection(symmetric_padding),
    "leaky relu slope 0.01 instead of 0.2": Injection(lambda: leaky_slope(0.01)),
    "MLP flatten in NCHW order": Injection(nchw_flatten, applies=lambda cfg: not cfg["light"]),
    "bilinear instead of nearest up-sampling": Injection(bilinear_upsampling),
    "CAM bias not added to the channel weights": Injection(cam_bias_dropped),
    "conv kernel kh/kw swapped": Injection(state=conv_kernel_spatially_transposed),
    "dense kernel not transposed": Injection(state=dense_kernel_not_transposed),
    "AdaLIN smoothing flipped": Injection(config=lambda cfg: dict(cfg, smoothing=not cfg["smoothing"])),
}
# float32-only precision errors: the float64 run is unchanged, criterion 2 must flag them
PRECISION = {
    "convolutions in bfloat16": Injection(lambda: conv_mantissa(7)),
    "convolutions in TF32": Injection(lambda: conv_mantissa(10)),
    "dense outputs in float16": Injection(dense_output_float16),
}
# Not flagged reliably, so not asserted: AdaLIN / LIN moments computed as E[x^2] - E[x]^2
# (`naive_variance`) cancel only where a channel's |mean| >> std; on the fixtures that costs
# ~1-4x the budget (native 1.15 / 3.0 / 3.7 on the three fixtures, 0.88 on the first under
# AVX2). Like ATen's fused x * rstd - mean * rstd form (2x TF's error), it is a precision loss
# of 1-2 bits that criterion 2 is not sharp enough to see; see test_precision_threshold.


# ---------------------------------------------------------------------------------------------
# forward: harness.compare on the stored fixtures
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _fixture(name):
    from ugatit_common.options import config_from
    data = read(fixture_path(name))
    return data, config_from(**data["config"])


def _state(data):
    from ugatit_common.tf_checkpoint import names as wc
    return {wc.tf_to_torch_name(n): torch.from_numpy(wc.to_torch_layout(n, v)) for n, v in data["weights"].items()}


@functools.lru_cache(maxsize=None)
def _clean64(name):
    """The unpatched port's float64 run of fixture `name` and its sum lengths."""
    data, cfg = _fixture(name)
    x = torch.from_numpy(data["input"].transpose(0, 3, 1, 2).copy())
    reductions = {}
    torch_forward(_state(data), cfg, x, reductions=reductions)
    return torch_forward(_state(data), cfg, x, dtype=torch.float64), reductions


def judge_fixture(name, injection: Injection | None = None, float32_only: bool = False):
    """harness.compare of the stored fixture `name` against the port with `injection` applied.
    `float32_only`: the injection leaves float64 runs alone (conv_mantissa), so the clean float64
    run is reused."""
    data, cfg = _fixture(name)
    injection = injection or Injection()
    state, cfg = injection.state(_state(data)), injection.config(cfg)
    x = torch.from_numpy(data["input"].transpose(0, 3, 1, 2).copy())
    with injection.patch():
        reductions = {}
        torch32 = torch_forward(state, cfg, x, reductions=reductions)
        torch64 = _clean64(name)[0] if float32_only else torch_forward(state, cfg, x, dtype=torch.float64)
    return compare(data["float32"], torch32, data["float64"], torch64, reductions)


def _flags(rows):
    """(criterion 1 flagged, criterion 2 flagged, shape mismatches, worst f32 ratio, worst f64 ratio)."""
    shape = [n for n, r in rows.items() if "budget" not in r]
    f64 = [n for n, r in rows.items() if "err64" in r and r["err64"] > r["tol64"]]
    f32 = [n for n, r in rows.items() if "budget" in r and not r["ok32"]]
    w32 = max((r["port_rms"] / r["budget"] for r in rows.values() if "budget" in r), default=0.0)
    w64 = max((r["err64"] / r["tol64"] for r in rows.values() if "err64" in r), default=0.0)
    return f64, f32, shape, w32, w64


def test_no_injection_passes():
    """The unmodified port passes on every fixture (the baseline the injections are measured from)."""
    for name in FIXTURES:
        f64, f32, shape, w32, w64 = _flags(judge_fixture(name))
        assert not (f64 or f32 or shape), (name, f64[:3], f32[:3], shape[:3])
        print(f"{name}: clean port, worst float32 rms / budget {w32:.3f}, worst float64 diff / tol {w64:.2e}")


def _run_injection(label, injection, kind):
    checked = 0
    for name in FIXTURES:
        if not injection.applies(_fixture(name)[1]):
            continue
        if kind == "semantic" and checked:
            break  # flagged by 1e3-1e9 x on every fixture where measured: one is enough
        f64, f32, shape, w32, w64 = _flags(judge_fixture(name, injection))
        print(f"{label} on {name}: criterion 1 flags {len(f64)}, criterion 2 flags {len(f32)}, shape mismatches "
              f"{len(shape)}; worst float64 diff / tol {w64:.3g}, worst float32 rms / budget {w32:.3g}")
        if kind == "semantic":
            assert f64 or shape, f"{label} passed criterion 1 on {name}"
        else:
            assert not f64 and not shape, f"{label} changed the float64 run on {name}: {f64[:3]}"
            assert f32, f"{label} passed criterion 2 on {name} (worst rms / budget {w32:.3g})"
        checked += 1
    assert checked


@pytest.mark.parametrize("label", list(SEMANTIC))
def test_semantic_error_fails_float64_criterion(label):
    _run_injection(label, SEMANTIC[label], "semantic")


@pytest.mark.parametrize("label", list(PRECISION))
def test_precision_error_fails_float32_criterion(label):
    _run_injection(label, PRECISION[label], "precision")


def test_precision_threshold():
    """One convolution whose inputs are rounded to 12 mantissa bits (11 of float32's 23 lost), at
    any depth of any network, fails criterion 2; a 20-bit one passes (16 bits printed). Measured on
    light32_ch4_dis4_sn_smooth, worst rms / budget at 20 / 16 / 14 / 12 / 10 bits (native):
    generator_B.conv 0.14 / 1.23 / 5.1 / 23 / 67; resblock_1.res1.conv_0 0.14 / 0.68 / 2.6 / 11 / 41;
    up_conv_1 0.14 / 0.16 / 0.52 / 2.0 / 8.4; G_logit 0.14 / 0.14 / 0.47 / 1.75 / 6.3;
    discriminator_A global.conv_last 0.14 / 0.59 / 2.3 / 10 / 37; local.D_logit 0.14 / 0.14 / 0.37 / 1.9 / 9.5.
    (The old rule, |torch32 - tf32| <= 1e-5 or RMS <= 3x TF's, flagged 14-16 bits early in the
    generator and 10 bits at D_logit: the new floor trades ~2 bits at the deepest generator
    layers for holding on every CPU.)"""
    layers = ["generator_B.conv", "generator_B.resblock_1.res1.conv_0", "generator_B.up_conv_1",
              "generator_B.G_logit", "discriminator_A.global.conv_last", "discriminator_A.local.D_logit"]
    for layer in layers:
        ratios = {}
        for bits in (20, 16, 12):
            rows = judge_fixture(FIXTURES[0], Injection(lambda: conv_mantissa(bits, layer)), float32_only=True)
            f64, f32, shape, w32, _ = _flags(rows)
            assert not f64 and not shape, (layer, bits)
            ratios[bits] = w32
        print(f"{layer}: worst float32 rms / budget " + ", ".join(f"{b} bits {r:.2f}" for b, r in ratios.items()))
        assert ratios[20] <= 1.0 and ratios[12] > 1.0, (layer, ratios)


# ---------------------------------------------------------------------------------------------
# gradients and the optimizer: trajectory.compare_step on one D run and one G run (TensorFlow)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_runs():
    """TF's float32 D run and G run from the golden init, and TF's float64 evaluation of both."""
    import os
    from parity_tests import golden
    from parity_tests import trajectory as tj
    from parity_tests.conftest import GOLDEN
    from parity_tests.test_training_parity import golden_inputs
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    from ugatit_common.options import config_from
    cfg = config_from(golden.record()["config"])
    a, b, A, B = golden_inputs()
    g = tf.Graph()
    out = {"cfg": cfg, "A": A, "B": B, "chains": tj.chain_sums(cfg)}
    with g.as_default():
        pa, pb = tf.placeholder(tf.float32, a.shape), tf.placeholder(tf.float32, b.shape)
        m = UGATITGraph(cfg).build_train(pa, pb)
        saver = tf.train.Saver()
        with tf.Session(graph=g) as sess:
            for step in "DG":
                saver.restore(sess, os.path.join(GOLDEN, "init", "UGATIT.model-0"))
                before = tj.tf_session_state(sess, tf)
                sess.run(m.D_optim if step == "D" else m.G_optim, {pa: a, pb: b, m.lr: cfg["lr"]})
                out[step] = {"before": before, "tf_after": tj.tf_session_state(sess, tf)}
    graph64 = tj.TFFloat64Gradients(cfg, a, b)
    try:
        for step in "DG":
            grads, loss, u64 = graph64.evaluate(out[step]["before"], step)
            out[step].update(tf64=grads, u64=u64)
    finally:
        graph64.close()
    return out


def judge_run(runs, step, patch=contextlib.nullcontext, optimizer_only=False):
    """trajectory.compare_step of the port's `step` run from the golden init with `patch` active.
    `optimizer_only`: the patch changes TF1Adam only, so the port's float32 loss and gradients,
    its kink branches and so its float64 gradients are the clean run's (reused)."""
    import copy
    from parity_tests import trajectory as tj
    from parity_tests.kinks import KinkBranches
    from parity_tests.test_training_parity import tf_named, torch_grads
    from torch_port import build_ugatit
    cfg, A, B, run = runs["cfg"], runs["A"], runs["B"], runs[step]
    with patch():
        model = build_ugatit(cfg)
        G, D = model.make_optimizers(cfg["lr"])
        sn = {k[:-2] for k in model.state_dict() if k.endswith(".u")}
        tj.torch_state_from_tf(model, G, D, run["before"])
        start = copy.deepcopy(model)
        kinks = KinkBranches()
        with kinks:
            (model.d_step if step == "D" else model.g_step)(A, B, cfg["lr"])
        clean = runs.setdefault("clean64", {})
        if optimizer_only and step in clean:
            port64, port64_branches = clean[step]
        else:
            port64_branches = tf_named(torch_grads(start, step, A, B, torch.float64, kinks.replay()), sn)
            port64 = port64_branches if kinks.flips == 0 else tf_named(torch_grads(start, step, A, B, torch.float64),
                                                                       sn)
            if patch is contextlib.nullcontext:
                clean[step] = (port64, port64_branches)
        return tj.compare_step(run["before"], run["tf_after"], tj.torch_state_as_tf(model, G, D), cfg["lr"],
                               run["tf64"], port64, port64_branches, runs["chains"][step], run["u64"])


def adam_patch(**changes):
    """TF1Adam with other hyper-parameters: eps, beta2, `eps_in_bias_correction` (torch.optim.Adam's
    placement: eps added to sqrt(v / (1 - beta2^t))), `no_bias_correction` (alpha = lr),
    `no_clip` (the rho constraint skipped)."""
    from torch_port import optim
    orig = optim.TF1Adam.step

    def step(self, lr=None):
        saved = (self._eps_t, self._beta2_t, self._beta1_power, self._beta2_power, self.constraints)
        if "eps" in changes:
            self._eps_t = torch.tensor(changes["eps"], dtype=torch.float32)
        if "beta2" in changes:
            self._beta2_t = torch.tensor(changes["beta2"], dtype=torch.float32)
        if changes.get("eps_in_bias_correction"):
            self._eps_t = self._eps_t * torch.sqrt(1 - self._beta2_power)
        if changes.get("no_bias_correction"):
            self._beta1_power, self._beta2_power = torch.tensor(0.0), torch.tensor(0.0)
        if changes.get("no_clip"):
            self.constraints = {}
        try:
            orig(self, lr)
        finally:
            powers = (self._beta1_power, self._beta2_power)
            self._eps_t, self._beta2_t, self._beta1_power, self._beta2_power, self.constraints = saved
            if not changes.get("no_bias_correction"):
                self._beta1_power, self._beta2_power = powers
            else:
                self._beta1_power, self._beta2_power = saved[2] * self._beta1_t, saved[3] * self._beta2_t
    return lambda: _patched(optim.TF1Adam, "step", step)


def regulariser_patch(keep):
    """The L2 regulariser summed over the kernels `keep(name)` only."""
    from torch_port import model as model_mod
    orig = model_mod.regularization_loss
    return lambda: _patched(model_mod, "regularization_loss",
                            lambda named, scale=1e-4: orig([(n, p) for n, p in named if keep(n)], scale))


# name -> (run, patch, kind): kind "f64" = caught by the float64 gradient check, "adam" = by the
# optimizer check, "f32" = by the float32 gradient budget
GRADIENT_INJECTIONS = {
    "Adam eps 1e-6 instead of 1e-8": ("D", adam_patch(eps=1e-6), "adam"),
    "Adam eps inside the bias correction (torch.optim.Adam)": ("G", adam_patch(eps_in_bias_correction=True), "adam"),
    "Adam beta2 0.99 instead of 0.999": ("D", adam_patch(beta2=0.99), "adam"),
    "Adam without bias correction": ("G", adam_patch(no_bias_correction=True), "adam"),
    "rho not clipped to [0, 1]": ("G", adam_patch(no_clip=True), "adam"),
    "CAM kernels not regularised": ("D", regulariser_patch(lambda n: "CAM_logit" not in n), "f64"),
    "no L2 regulariser in the G loss": ("G", regulariser_patch(lambda n: False), "f64"),
    "discriminator convolutions in bfloat16": ("D", lambda: conv_mantissa(7), "f32"),
    "generator convolutions in TF32": ("G", lambda: conv_mantissa(10), "f32"),
}


@pytest.mark.slow
@pytest.mark.tf
def test_gradient_criteria_pass_clean_port(golden_runs):
    for step in "DG":
        failures, rep = judge_run(golden_runs, step)
        worst = max(r[3] / r[4] for r in rep["rows"].values())
        print(f"{step} run from the golden init: worst float32 rms / budget {worst:.3f}")
        assert not failures, "\n".join(failures[:10])


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize("label", list(GRADIENT_INJECTIONS))
def test_gradient_injection_is_flagged(golden_runs, label):
    step, patch, kind = GRADIENT_INJECTIONS[label]
    if kind == "adam" and step not in golden_runs.get("clean64", {}):
        judge_run(golden_runs, step)  # the clean float64 gradients the optimizer injections reuse
    failures, rep = judge_run(golden_runs, step, patch, optimizer_only=kind == "adam")
    kinds = {"f64": "float64 gradient", "adam": "Adam update", "f32": "float32 gradient error"}
    hits = [f for f in failures if kinds[kind] in f]
    print(f"{label} ({step} run): {len(failures)} failures, {len(hits)} by the {kinds[kind]} check; "
          f"first: {failures[0] if failures else '-'}")
    assert hits, f"{label} not flagged by the {kinds[kind]} check: {failures[:5]}"
