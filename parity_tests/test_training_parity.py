"""Losses, gradients, optimizer steps and trajectories: torch_port vs tf_reference and the
official golden bundle.

Gradients, measured not chosen. The port's float64 gradients equal TF's own float64 gradients
(same graph built with float64 variables) within 1e-9 of a tensor's largest entry at every run
of the trajectory (measured <= 5.3e-13): no semantic difference. In float32 the loss is
piecewise smooth: an element within float32 rounding of a relu / leaky_relu / |x| / max-pooling
kink can land on the other side in a float32 run, and the exact gradient jumps there by up to a
few % of a tensor's max (parity_tests/kinks.py). TF's float32 runs cross 0-3 such kinks per run
(its 1e-3 to 1e-2 errors on the generators vs float64), the port's 0-2 (the 4-5% at iteration
3 G). So the port's float32 gradient is judged against the float64 gradient on its own float32
run's kink branches, and must be as close as TF's own float32 gradient is to float64 (2x, a
64-ulp floor, never above 1e-4 of the tensor's max; `trajectory.float32_tolerance`). On its
branches the port stays within 3.7e-5 of max |g| (generators) and 1.9e-6 (discriminators);
TF's float32 error on its own branches reaches 2.3e-4. Adam then turns agreeing-but-not-equal
small gradients into different ±lr steps; those are reported.
"""
import contextlib
import copy
import os

import numpy as np
import pytest
import torch

import weights_convert as wc
from parity_tests import golden
from parity_tests import trajectory as tj
from parity_tests.kinks import KinkBranches
from parity_tests.conftest import GOLDEN
from torch_port import build_ugatit
from torch_port.ops import spectral_norm_run
from ugatit_common.options import config_from

pytestmark = pytest.mark.tf


def golden_inputs():
    a, b = golden.load("real_A.npy"), golden.load("real_B.npy")
    return a, b, torch.from_numpy(a.transpose(0, 3, 1, 2).copy()), torch.from_numpy(b.transpose(0, 3, 1, 2).copy())


def torch_grads(model, which, A, B, dtype, kinks=None):
    """{param name: (param name, gradient)} of the G or D loss on a copy of `model` in `dtype`;
    `kinks` (a KinkBranches) records or replays the kink branches around the evaluation."""
    m = copy.deepcopy(model).to(dtype)
    with spectral_norm_run(m), (kinks if kinks is not None else contextlib.nullcontext()):
        if which == "G":
            total = m.generator_losses(A.to(dtype), B.to(dtype))[0]
            params = m.g_params()
        else:
            total = m.discriminator_losses(A.to(dtype), B.to(dtype))[0]
            params = m.d_params()
        grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    return {n: (n, g) for (n, _), g in zip(params, grads)}


@pytest.fixture(scope="module")
def golden_graph():
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    cfg = config_from(golden.record()["config"])
    a, b, _, _ = golden_inputs()
    g = tf.Graph()
    with g.as_default():
        pa, pb = tf.placeholder(tf.float32, a.shape), tf.placeholder(tf.float32, b.shape)
        m = UGATITGraph(cfg).build_train(pa, pb)
        sess = tf.Session(graph=g)
        saver = tf.train.Saver()
        yield cfg, g, m, sess, saver, {pa: a, pb: b}
        sess.close()


@pytest.fixture(scope="module")
def golden_graph64():
    """The same train graph in float64: TF's own float64 gradients of any state."""
    cfg = config_from(golden.record()["config"])
    a, b, _, _ = golden_inputs()
    graph = tj.TFFloat64Gradients(cfg, a, b)
    yield graph
    graph.close()


def tf_named(grads: dict, sn: set) -> dict:
    """torch_grads' output as {TF name: float64 array in TF layout}."""
    return {wc.torch_to_tf_name(n, sn): wc.to_tf_layout(n, g.detach().numpy().astype(np.float64))
            for n, g in grads.values()}


@pytest.mark.parametrize("which", ["G", "D"])
def test_gradients_every_parameter(golden_graph, which):
    """At the golden init: the port's float32 gradient vs the port's float64 gradient on the
    float32 run's kink branches, judged by TF's own float32 error vs the plain float64 one
    (tj.float32_tolerance). The float64 semantics against TF's own float64 gradients are checked
    at every run of the trajectory test (its first D run is this state)."""
    from tf_reference.compat import tf
    cfg, g, m, sess, saver, feed = golden_graph
    with g.as_default():
        saver.restore(sess, os.path.join(GOLDEN, "init", "UGATIT.model-0"))
        scope = "generator" if which == "G" else "discriminator"
        tvars = [v for v in tf.trainable_variables() if scope in v.name]
        loss = m.Generator_loss if which == "G" else m.Discriminator_loss
        tf_g = dict(zip([v.op.name for v in tvars], sess.run(tf.gradients(loss, tvars), feed)))
    _, state = wc.tf_to_torch(os.path.join(GOLDEN, "init"), overrides={"img_size": 64})
    model = build_ugatit(cfg)
    model.load_state_dict(state)
    _, _, A, B = golden_inputs()
    sn = {k[:-2] for k in state if k.endswith(".u")}
    kinks = KinkBranches()
    g32 = tf_named(torch_grads(model, which, A, B, torch.float32, kinks), sn)
    g64 = tf_named(torch_grads(model, which, A, B, torch.float64), sn)
    g64_branches = tf_named(torch_grads(model, which, A, B, torch.float64, kinks.replay()), sn)
    assert set(g32) == set(tf_g)
    bad, worst = [], (0.0, "")
    for name, grad32 in g32.items():
        if golden.NORM_FED_BIAS.match(name):
            continue
        truth = g64[name]
        scale = float(np.abs(truth).max()) or 1.0
        err_port = float(np.abs(grad32 - g64_branches[name]).max())
        err_tf = float(np.abs(tf_g[name] - truth).max())
        bound = tj.float32_tolerance(err_tf, scale)
        worst = max(worst, (err_port / scale, name))
        if err_port > bound:
            bad.append(f"{name}: port error {err_port:.3g} > {bound:.3g} (TF's own {err_tf:.3g}, max |g| {scale:.3g})")
    print(f"{which}: {kinks.flips} kink(s) crossed by the port's float32 run; worst port gradient error "
          f"{worst[0]:.3g} of max|g| ({worst[1]})")
    assert not bad, "\n".join(bad[:20])


@pytest.mark.slow
def test_teacher_forced_trajectory_5_iterations(golden_graph, golden_graph64):
    """5 iterations D→G from the golden init: before every run torch takes TF's exact state.
    Asserted after each run: losses, u and powers, and per tensor the gradient rules of
    parity_tests/trajectory.py against TF's own float64 gradients of that run (float64
    semantics 1e-9; the port's float32 gradient as close as 2x TF's own, 64-ulp floor, 1e-4 cap)."""
    cfg, g, m, sess, saver, feed = golden_graph
    from tf_reference.compat import tf
    _, _, A, B = golden_inputs()
    model = build_ugatit(cfg)
    G, D = model.make_optimizers(cfg["lr"])
    sn = {k[:-2] for k in model.state_dict() if k.endswith(".u")}
    feed = dict(feed)
    feed[m.lr] = cfg["lr"]
    report, failures, classes = [], [], {}
    with g.as_default():
        saver.restore(sess, os.path.join(GOLDEN, "init", "UGATIT.model-0"))
        for it in range(5):
            for step in "DG":
                before = tj.tf_session_state(sess, tf)
                tj.torch_state_from_tf(model, G, D, before)
                start = copy.deepcopy(model)
                kinks = KinkBranches()
                with kinks:
                    res = (model.d_step if step == "D" else model.g_step)(A, B, cfg["lr"])
                # float64 on the float32 step's kink branches; the plain float64 run only differs
                # when the port crossed a kink
                port64_branches = tf_named(torch_grads(start, step, A, B, torch.float64, kinks.replay()), sn)
                port64 = port64_branches if kinks.flips == 0 else tf_named(
                    torch_grads(start, step, A, B, torch.float64), sn)
                tf64 = golden_graph64.grads(before, step)
                optim, loss = (m.D_optim, m.Discriminator_loss) if step == "D" else (m.G_optim, m.Generator_loss)
                _, tf_loss = sess.run([optim, loss], feed)
                ours = res["Discriminator_loss" if step == "D" else "Generator_loss"]
                # losses: float summation order, 1e-5 relative (measured <= 2.1e-6)
                assert ours == pytest.approx(float(tf_loss), rel=1e-5), (it, step)
                bad, rep = tj.compare_step(before, tj.tf_session_state(sess, tf), tj.torch_state_as_tf(model, G, D),
                                           cfg["lr"], tf64, port64, port64_branches)
                failures += [f"iteration {it} {step}: {f}" for f in bad]
                rows = rep["rows"]
                worst = {k: max((r[k] / r[1], n) for n, r in rows.items()) for k in (2, 3, 4, 5)}
                report.append(f"it {it} {step}: port kinks crossed {kinks.flips}; worst of max|g|: TF32 "
                              f"{worst[2][0]:.2e} ({worst[2][1]}), port32 {worst[3][0]:.2e} ({worst[3][1]}), "
                              f"port32 vs plain TF64 {worst[4][0]:.2e}, port64 vs TF64 {worst[5][0]:.2e}; "
                              f"Adam-amplified weight tensors {len(rep['amplified'])}")
                for cls, errs in tj.summarize(rows).items():
                    classes[cls] = [max(a, b) for a, b in zip(classes.get(cls, errs), errs)]
    print("\n".join(report))
    print("per class, worst over runs (of max|g|): TF32 vs TF64 | port32 vs its truth | port32 vs plain TF64 | "
          "port64 vs TF64")
    for cls, errs in sorted(classes.items()):
        print(f"  {cls:24s} " + "  ".join(f"{e:.2e}" for e in errs))
    assert not failures, "\n".join(failures[:30])


@pytest.mark.slow
def test_golden_three_iterations_in_torch():
    """Convert init/ (weights, Adam slots, powers), 3 iterations in torch → record.json losses,
    and final/ for the discriminators, u and the powers. Generator weights are reported: Adam
    amplifies TF's float32 gradient error (see module docstring) into ±lr differences there."""
    cfg = config_from(golden.record()["config"])
    st = wc.read_tf_training_state(os.path.join(GOLDEN, "init"), {"img_size": 64})
    assert st["step"] == 0
    model = build_ugatit(cfg)
    model.load_state_dict(st["model"])
    G, D = model.make_optimizers(cfg["lr"])
    G.load_named_slots(st["G_slots"], *st["G_powers"])
    D.load_named_slots(st["D_slots"], *st["D_powers"])
    _, _, A, B = golden_inputs()
    for i, ref in enumerate(golden.record()["steps"]):
        d = model.d_step(A, B, cfg["lr"])
        g = model.g_step(A, B, cfg["lr"])
        if i == 0:
            # first G step's fakes vs the golden: 1e-4 absolute (TF's own float32 error, measured 3e-5)
            np.testing.assert_allclose(g["fake_B"].numpy().transpose(0, 2, 3, 1), golden.load("step0_fake_B.npy"),
                                       atol=1e-4)
            np.testing.assert_allclose(g["fake_A"].numpy().transpose(0, 2, 3, 1), golden.load("step0_fake_A.npy"),
                                       atol=1e-4)
        assert d["Discriminator_loss"] == pytest.approx(ref["d_loss"], rel=1e-5)
        assert g["Generator_loss"] == pytest.approx(ref["g_loss"], rel=1e-5)
    from torch_port.tf_bundle import BundleReader
    with BundleReader(os.path.join(GOLDEN, "final")) as r:
        ref = dict(r.items())
    got = tj.torch_state_as_tf(model, G, D)
    failures, rows = golden.compare_checkpoint(got, ref, cfg["lr"])
    hard = [f for f in failures if not f.startswith("generator")]
    assert not hard, "\n".join(hard[:20])
    print(f"generator tensors with Adam-amplified differences: {len(failures) - len(hard)}")


def test_golden_final_test_phase_in_torch():
    """final/ converted → torch generators on test_input reproduce test_a2b/test_b2a; D_A outputs."""
    cfg, state = wc.tf_to_torch(os.path.join(GOLDEN, "final"), overrides={"img_size": 64})
    model = build_ugatit(config_from(cfg))
    model.load_state_dict(state)
    x = torch.from_numpy(golden.load("test_input.npy").transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        a2b = model.generator_B(x)[0].numpy().transpose(0, 2, 3, 1)
        b2a = model.generator_A(x)[0].numpy().transpose(0, 2, 3, 1)
        logits, cams, _, _ = model.discriminator_A(x)
    # 1e-5 absolute on [-1, 1] images (float summation order; measured ~1e-6)
    np.testing.assert_allclose(a2b, golden.load("test_a2b.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(b2a, golden.load("test_b2a.npy"), atol=1e-5, rtol=0)
    for got, name in zip([logits[0], logits[1], cams[0], cams[1]],
                         ["test_dA_local", "test_dA_global", "test_dA_cam_local", "test_dA_cam_global"]):
        ref = golden.load(name + ".npy")
        got = got.numpy()
        if got.ndim == 4:
            got = got.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
