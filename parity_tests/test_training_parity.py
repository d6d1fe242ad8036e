"""Losses, gradients, optimizer steps and trajectories: torch_port vs tf_reference and the
official golden bundle.

Gradients are judged by the rules of parity_tests/trajectory.py, none of them a bound measured
on one CPU: the port's float64 gradients equal TF's own float64 gradients (same graph built with
float64 variables) within 1e-9 of a tensor's largest entry (no semantic difference; measured
<= 5.3e-13); the port's float32 gradient, on its own float32 run's kink branches
(parity_tests/kinks.py), is within max(3x TF's own float32 error, u * sqrt(K_run) * max|g|) of
the float64 truth in root mean square (K_run: the float32 sum terms along the run's longest
chain, `trajectory.chain_sums`); each update is TF1 Adam of the port's own slots within float32
rounding; `u`, the powers and the losses against TF's float64 run the same way.

At the golden's 64 px the budget's floor u * sqrt(K_run) is 3.1e-5 of max |g| (526 u) for a G
run and 1.7e-5 (277 u) for a D run. Measured worst port float32 RMS error / budget over the 10
runs of the trajectory (AMD EPYC, TF 2.21, torch 2.13), per instruction set: README, "Parity:
what is proven, and how" (this file prints them with -s).
Adam then turns agreeing-but-not-equal small gradients into different ±lr steps; those are
reported, not failed.
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


@pytest.mark.slow
@pytest.mark.parametrize("which", ["G", "D"])
def test_gradients_every_parameter(golden_graph, golden_graph64, which):
    """At the golden init: the port's float64 gradients vs TF's float64 ones (criterion 1), and
    the port's float32 gradient vs the float64 truth on the float32 run's kink branches within
    the float32 budget of TF's own float32 gradient (`tj.float32_budget`, criterion 2)."""
    from tf_reference.compat import tf
    cfg, g, m, sess, saver, feed = golden_graph
    with g.as_default():
        saver.restore(sess, os.path.join(GOLDEN, "init", "UGATIT.model-0"))
        state = tj.tf_session_state(sess, tf)
        scope = "generator" if which == "G" else "discriminator"
        tvars = [v for v in tf.trainable_variables() if scope in v.name]
        loss = m.Generator_loss if which == "G" else m.Discriminator_loss
        tf_g = dict(zip([v.op.name for v in tvars], sess.run(tf.gradients(loss, tvars), feed)))
    tf64 = golden_graph64.grads(state, which)
    _, torch_state = wc.tf_to_torch(os.path.join(GOLDEN, "init"), overrides={"img_size": 64})
    model = build_ugatit(cfg)
    model.load_state_dict(torch_state)
    _, _, A, B = golden_inputs()
    sn = {k[:-2] for k in torch_state if k.endswith(".u")}
    kinks = KinkBranches()
    g32 = tf_named(torch_grads(model, which, A, B, torch.float32, kinks), sn)
    g64 = tf_named(torch_grads(model, which, A, B, torch.float64), sn)
    g64_branches = tf_named(torch_grads(model, which, A, B, torch.float64, kinks.replay()), sn)
    assert set(g32) == set(tf_g) == set(tf64)
    reduction = tj.chain_sums(cfg)[which]
    bad, worst = [], (0.0, "")
    for name, grad32 in g32.items():
        if golden.NORM_FED_BIAS.match(name):
            continue
        truth = np.asarray(tf64[name], np.float64)
        scale = float(np.abs(truth).max())
        err64 = float(np.abs(g64[name] - truth).max())
        if err64 > tj.SEMANTIC_RTOL * scale:
            bad.append(f"{name}: float64 gradient |port - TF| {err64:.3g} > {tj.SEMANTIC_RTOL:g} * {scale:.3g}")
        port_rms = tj.rms(grad32 - (truth + g64_branches[name] - g64[name]))
        tf_rms = tj.rms(tf_g[name] - truth)
        budget = tj.float32_budget(tf_rms, scale, reduction)
        worst = max(worst, (port_rms / budget, name))
        if port_rms > budget:
            bad.append(f"{name}: float32 error rms {port_rms:.3g} > budget {budget:.3g} (TF's own {tf_rms:.3g}, "
                       f"max |g| {scale:.3g})")
    print(f"{which}: {kinks.flips} kink(s) crossed by the port's float32 run; worst port float32 rms error / "
          f"budget {worst[0]:.3f} ({worst[1]})")
    assert not bad, "\n".join(bad[:20])


@pytest.mark.slow
def test_teacher_forced_trajectory_5_iterations(golden_graph, golden_graph64):
    """5 iterations D→G from the golden init: before every run torch takes TF's exact state.
    Asserted after each run, against TF's own float64 run of that state (parity_tests/trajectory.py):
    the loss, u and the powers, per tensor the float64 gradient (1e-9) and the float32 gradient
    (RMS within max(3x TF's own, u * sqrt(K_run) * max|g|)), and the Adam update."""
    teacher_forced_trajectory(golden_graph, golden_graph64, 5)


def test_teacher_forced_trajectory_first_iteration(golden_graph, golden_graph64):
    """The quick tier's trajectory: the first D run and G run of the one above, same assertions
    (at the golden init these also cover every parameter's gradient, as the full tier's
    test_gradients_every_parameter does, plus the Adam update, `u` and the powers)."""
    teacher_forced_trajectory(golden_graph, golden_graph64, 1)


def teacher_forced_trajectory(golden_graph, golden_graph64, iterations: int):
    cfg, g, m, sess, saver, feed = golden_graph
    from tf_reference.compat import tf
    _, _, A, B = golden_inputs()
    model = build_ugatit(cfg)
    G, D = model.make_optimizers(cfg["lr"])
    sn = {k[:-2] for k in model.state_dict() if k.endswith(".u")}
    feed = dict(feed)
    feed[m.lr] = cfg["lr"]
    report, failures, classes = [], [], {}
    chains = tj.chain_sums(cfg)
    with g.as_default():
        saver.restore(sess, os.path.join(GOLDEN, "init", "UGATIT.model-0"))
        for it in range(iterations):
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
                tf64, loss64, u64 = golden_graph64.evaluate(before, step)
                optim, loss = (m.D_optim, m.Discriminator_loss) if step == "D" else (m.G_optim, m.Generator_loss)
                _, tf_loss = sess.run([optim, loss], feed)
                ours = res["Discriminator_loss" if step == "D" else "Generator_loss"]
                loss_budget = tj.float32_budget(abs(float(tf_loss) - loss64), abs(loss64), chains[step])
                if abs(ours - loss64) > loss_budget:
                    failures.append(f"iteration {it} {step}: loss {ours!r} vs float64 {loss64!r}: error "
                                    f"{abs(ours - loss64):.3g} > {loss_budget:.3g} "
                                    f"(TF's {abs(float(tf_loss) - loss64):.3g})")
                bad, rep = tj.compare_step(before, tj.tf_session_state(sess, tf), tj.torch_state_as_tf(model, G, D),
                                           cfg["lr"], tf64, port64, port64_branches, chains[step], u64)
                failures += [f"iteration {it} {step}: {f}" for f in bad]
                rows = rep["rows"]
                worst = max((r[3] / r[4], n) for n, r in rows.items())
                report.append(f"it {it} {step}: port kinks crossed {kinks.flips}; worst port32 rms / budget "
                              f"{worst[0]:.3f} ({worst[1]}); "
                              f"loss error / budget {abs(ours - loss64) / loss_budget:.3f}; "
                              f"worst port64 vs TF64 {max(r[6] / r[1] for r in rows.values()):.2e} of max|g|; "
                              f"Adam-amplified weight tensors {len(rep['amplified'])}")
                for cls, errs in tj.summarize(rows).items():
                    classes[cls] = [max(a, b) for a, b in zip(classes.get(cls, errs), errs)]
    print("\n".join(report))
    print("per class, worst over runs: TF32 rms / max|g| | port32 rms / max|g| | port32 rms / budget | "
          "port64 vs TF64 / max|g|")
    for cls, errs in sorted(classes.items()):
        print(f"  {cls:24s} " + "  ".join(f"{e:.2e}" for e in errs))
    assert not failures, "\n".join(failures[:30])


def test_golden_three_iterations_in_torch():
    """Convert init/ (weights, Adam slots, powers), 3 iterations in torch → record.json losses,
    and final/ by golden.compare_checkpoint (generator elements that Adam amplified are reported)."""
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
    assert not failures, "\n".join(failures[:20])
    print(golden.summarize(rows))


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
    # against tf_reference's float64 run of final/, the golden's own float32 error as the measure
    got = {"test_a2b": a2b, "test_b2a": b2a}
    for t, name in zip([logits[0], logits[1], cams[0], cams[1]],
                       ["test_dA_local", "test_dA_global", "test_dA_cam_local", "test_dA_cam_global"]):
        got[name] = t.numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.numpy()
    bad = golden.judge_test_phase(got)
    assert not bad, "\n".join(bad)
