"""TF-free unit tests of torch_port: naming rule vs the official manifests, shapes, TF layer
semantics, spectral-norm `u` bookkeeping, TF1 Adam, losses, gradient penalty and the D/G steps."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_port import TF1Adam, UGATIT, Discriminator, Generator, build_ugatit
from torch_port import losses as L
from torch_port.ops import (AdaLIN, CAMLogit, Conv, InstanceNorm, LIN, l2_normalize,
                            spectral_norm_run, spectral_normalize, tf_conv_padding, up_sample)
from torch_port.optim import clip_0_1

HERE = Path(__file__).resolve().parent


def _manifest_path(name: str) -> Path:
    for base in (HERE / "fixtures", HERE.parent.parent / "shared" / "reference"):
        if (base / name).exists():
            return base / name
    pytest.skip(f"{name} not available")


def mapped_manifest(name: str) -> dict[str, list[int]]:
    """The naming rule applied to an official variable manifest: drop Adam slots and beta powers,
    `/` -> `.`, drop `conv2d`/`dense`, `kernel` -> `weight` (OIHW / [out, in])."""
    out = {}
    for line in _manifest_path(name).read_text().splitlines():
        if not line.strip():
            continue
        var, shape = line.split(" ", 1)
        if var.endswith("/Adam") or var.endswith("/Adam_1") or "_power" in var:
            continue
        shape = [int(s) for s in shape.strip().strip("[]").split(",") if s.strip()]
        parts = [p for p in var.split("/") if p not in ("conv2d", "dense")]
        if parts[-1] == "kernel":
            parts[-1] = "weight"
            shape = [shape[3], shape[2], shape[0], shape[1]] if len(shape) == 4 else shape[::-1]
        out[".".join(parts)] = shape
    return out


def _shapes(sd, prefix=""):
    return {prefix + k: list(v.shape) for k, v in sd.items()}


def small_cfg(**kw):
    cfg = dict(light=True, ch=4, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True)
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------------------------------------
# Naming rule and shapes
# ---------------------------------------------------------------------------------------------

def test_light256_state_dict_matches_official_manifest():
    manifest = mapped_manifest("official_variables_light256_train.txt")
    with torch.device("meta"):
        model = build_ugatit(dict(light=True, ch=64, n_res=4, n_dis=6, img_size=256, sn=True,
                                  smoothing=True))
    got = _shapes(model.state_dict())
    assert set(got) == set(manifest), (sorted(set(got) - set(manifest))[:10],
                                       sorted(set(manifest) - set(got))[:10])
    bad = {k: (got[k], manifest[k]) for k in manifest if got[k] != manifest[k]}
    assert not bad, bad
    # u buffers are persistent buffers, everything else trainable parameters
    buffers = {n for n, _ in model.named_buffers()}
    assert buffers == {k for k in manifest if k.endswith(".u")}
    # only kernels are called `weight`
    weights = {n for n, _ in model.named_parameters() if n.endswith("weight")}
    assert all(n.split(".")[-1] == "weight" for n in weights)


def test_full256_generators_match_official_manifest():
    manifest = mapped_manifest("official_variables_full256_test.txt")
    with torch.device("meta"):
        model = build_ugatit(dict(light=False, ch=64, n_res=4, n_dis=6, img_size=256, sn=True,
                                  smoothing=True))
    got = {k: v for k, v in _shapes(model.state_dict()).items() if k.startswith("generator")}
    assert set(got) == set(manifest)
    bad = {k: (got[k], manifest[k]) for k in manifest if got[k] != manifest[k]}
    assert not bad, bad
    assert got["generator_A.MLP.linear_0.weight"] == [256, 1048576]
    # discriminators do not depend on light
    light = mapped_manifest("official_variables_light256_train.txt")
    disc = {k: v for k, v in _shapes(model.state_dict()).items() if k.startswith("discriminator")}
    assert disc == {k: v for k, v in light.items() if k.startswith("discriminator")}


def test_global_branch_key_and_attribute():
    d = Discriminator(ch=4, n_dis=6)
    keys = d.state_dict().keys()
    assert "global.conv_0.weight" in keys and "local.conv_0.u" in keys
    assert d.global_ is getattr(d, "global")


def test_discriminator_output_sizes_256():
    torch.manual_seed(0)
    d = Discriminator(ch=4, n_dis=6, sn=True)
    logits, cams, local_hm, global_hm = d(torch.randn(1, 3, 256, 256))
    assert logits[0].shape == (1, 1, 32, 32)
    assert logits[1].shape == (1, 1, 8, 8)
    assert cams[0].shape == (1, 2) and cams[1].shape == (1, 2)
    assert local_hm.shape == (1, 32, 32) and global_hm.shape == (1, 8, 8)


@pytest.mark.parametrize("light", [True, False])
def test_generator_shapes(light):
    torch.manual_seed(0)
    g = Generator(ch=4, n_res=4, img_size=32, light=light)
    img, cam, heat = g(torch.randn(2, 3, 32, 32))
    assert img.shape == (2, 3, 32, 32) and cam.shape == (2, 2) and heat.shape == (2, 8, 8)
    assert img.abs().max() <= 1


# ---------------------------------------------------------------------------------------------
# Layer semantics
# ---------------------------------------------------------------------------------------------

def test_padding_rule():
    assert tf_conv_padding(3, 2, 1) == (1, 0, 1, 0)
    assert tf_conv_padding(4, 1, 1) == (1, 2, 1, 2)
    assert tf_conv_padding(7, 1, 3) == (3, 3, 3, 3)
    assert tf_conv_padding(4, 2, 1) == (1, 1, 1, 1)
    assert tf_conv_padding(3, 1, 1) == (1, 1, 1, 1)
    assert tf_conv_padding(1, 1, 0) == (0, 0, 0, 0)


def test_conv_reflect_padding_matches_manual():
    torch.manual_seed(0)
    conv = Conv(2, 3, 4, 1, pad=1, pad_type="reflect")
    x = torch.randn(1, 2, 6, 6)
    ref = F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), conv.weight, conv.bias)
    assert torch.equal(conv(x), ref)
    assert conv(x).shape == (1, 3, 6, 6)
    assert torch.all(conv.bias == 0)


def test_deterministic_reflection_pad_has_atens_gradients():
    """The exact CUDA path's reflection pad (torch_port.deterministic_pad, taken under
    deterministic mode on CUDA only): forward, gradient and the gradient of the gradient (the
    penalty losses differentiate twice) equal ATen's reflection pad's, in float64, for every
    pad of the port's convolutions (0-3 per side, unequal sides as TF's SAME rule gives) on odd
    and even sizes; gradcheck and gradgradcheck pass. float64 sums of at most 3 terms: exact but
    for the order (1e-12)."""
    from torch_port.deterministic_pad import reflect_pad_deterministic
    gen = torch.Generator().manual_seed(0)
    for h, w in ((4, 5), (6, 6), (7, 4)):
        for pad in ((1, 1, 1, 1), (3, 3, 3, 3), (1, 2, 1, 2), (0, 1, 0, 1), (2, 0, 1, 3), (0, 0, 0, 0)):
            x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
            ours, aten = reflect_pad_deterministic(x, pad), F.pad(x, pad, mode="reflect")
            assert torch.equal(ours, aten)
            # the incoming gradient depends on the weights in a penalty: differentiate through it
            g = torch.randn(ours.shape, dtype=torch.float64, generator=gen, requires_grad=True)
            (gx_ours,) = torch.autograd.grad(ours, x, g, create_graph=True)
            (gx_aten,) = torch.autograd.grad(aten, x, g, create_graph=True)
            torch.testing.assert_close(gx_ours, gx_aten, rtol=0, atol=1e-12)
            v = torch.randn(x.shape, dtype=torch.float64, generator=gen)
            (gg_ours,) = torch.autograd.grad((gx_ours * v).sum(), g)
            (gg_aten,) = torch.autograd.grad((gx_aten * v).sum(), g)
            torch.testing.assert_close(gg_ours, gg_aten, rtol=0, atol=1e-12)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reflect_pad_deterministic(t, (1, 2, 2, 1)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: reflect_pad_deterministic(t, (1, 2, 2, 1)), (x,))


def test_instance_norm_formula():
    torch.manual_seed(0)
    norm = InstanceNorm(3)
    with torch.no_grad():
        norm.gamma.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.beta.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    norm = norm.double()
    xn = x.numpy()
    m = xn.mean(axis=(2, 3), keepdims=True)
    v = xn.var(axis=(2, 3), keepdims=True)
    g = norm.gamma.detach().numpy().reshape(1, 3, 1, 1)
    b = norm.beta.detach().numpy().reshape(1, 3, 1, 1)
    ref = (xn - m) / np.sqrt(v + 1e-5) * g + b
    np.testing.assert_allclose(norm(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def _ins_layer_ref(x, rho):
    mi, vi = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    ml, vl = x.mean(axis=(1, 2, 3), keepdims=True), x.var(axis=(1, 2, 3), keepdims=True)
    r = rho.reshape(1, -1, 1, 1)
    return r * (x - mi) / np.sqrt(vi + 1e-5) + (1 - r) * (x - ml) / np.sqrt(vl + 1e-5)


@pytest.mark.parametrize("smoothing", [True, False])
def test_adalin_formula(smoothing):
    torch.manual_seed(0)
    norm = AdaLIN(3, smoothing=smoothing).double()
    assert torch.all(norm.rho == 1.0)
    with torch.no_grad():
        norm.rho.copy_(torch.tensor([1.0, 0.05, 0.5], dtype=torch.float64))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    gamma = torch.randn(2, 3, dtype=torch.float64)
    beta = torch.randn(2, 3, dtype=torch.float64)
    rho = np.array([1.0, 0.05, 0.5])
    if smoothing:
        rho = np.clip(rho - 0.1, 0, 1)
    ref = (_ins_layer_ref(x.numpy(), rho) * gamma.numpy()[:, :, None, None]
           + beta.numpy()[:, :, None, None])
    np.testing.assert_allclose(norm(x, gamma, beta).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_lin_formula_and_init():
    norm = LIN(3).double()
    assert torch.all(norm.rho == 0) and torch.all(norm.gamma == 1) and torch.all(norm.beta == 0)
    with torch.no_grad():
        norm.rho.copy_(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
        norm.gamma.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.beta.copy_(torch.tensor([0.5, 0.0, -0.5]))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ref = (_ins_layer_ref(x.numpy(), np.array([0.0, 0.3, 1.0])) * np.array([1.0, 2, 3]).reshape(1, 3, 1, 1)
           + np.array([0.5, 0, -0.5]).reshape(1, 3, 1, 1))
    np.testing.assert_allclose(norm(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("which", ["instance", "layer"])
def test_centered_normalize_gradient(which):
    """The AdaLIN/LIN normalisations compute TF's (x - mean) / sqrt(var + eps) forward and ATen's
    fused norm backward: check that backward against finite differences, batch 2, offset mean."""
    from torch_port.ops import instance_normalize, layer_normalize
    fn = instance_normalize if which == "instance" else layer_normalize
    x = (torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.7 + 3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, 1e-5), (x,))
    y = fn(x, 1e-5)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()  # not twice differentiable: says so instead of a silently wrong answer


def test_cam_logit_weights_are_kernel_plus_bias():
    torch.manual_seed(0)
    cam = CAMLogit(4)
    with torch.no_grad():
        cam.bias.fill_(0.3)
    x = torch.randn(2, 4, 3, 3)
    gap_logit, gmp_logit, x_gap, x_gmp = cam(x)
    w = cam.weight.detach()
    assert torch.allclose(gap_logit, x.mean((2, 3)) @ w.t() + 0.3)
    assert torch.allclose(gmp_logit, x.amax((2, 3)) @ w.t() + 0.3)
    assert torch.allclose(x_gap, x * (w + 0.3).reshape(1, 4, 1, 1))
    assert torch.allclose(x_gmp, x_gap)


def test_gmp_gradient_splits_ties_like_tf():
    cam = CAMLogit(1)
    with torch.no_grad():
        cam.weight.fill_(1.0)
    x = torch.tensor([[[[2.0, 2.0], [0.0, 1.0]]]], requires_grad=True)
    _, gmp_logit, _, _ = cam(x)
    gmp_logit.sum().backward()
    assert torch.allclose(x.grad[0, 0], torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


def test_upsample_nearest_x2():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    ref = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(up_sample(x, 2), ref)


def test_full_mlp_flattens_nhwc():
    torch.manual_seed(0)
    g = Generator(ch=2, n_res=4, img_size=16, light=False)
    x = torch.randn(1, 8, 4, 4)
    flat = x.permute(0, 2, 3, 1).reshape(1, -1)
    h = F.relu(flat @ g.MLP.linear_0.weight.t() + g.MLP.linear_0.bias)
    h = F.relu(F.linear(h, g.MLP.linear_1.weight, g.MLP.linear_1.bias))
    gamma, beta = g.style(x)
    assert torch.allclose(gamma, F.linear(h, g.MLP.gamma.weight, g.MLP.gamma.bias))
    assert torch.allclose(beta, F.linear(h, g.MLP.beta.weight, g.MLP.beta.bias))


# ---------------------------------------------------------------------------------------------
# Spectral norm
# ---------------------------------------------------------------------------------------------

def _power_iteration(weight: torch.Tensor, u: torch.Tensor):
    """float64 numpy reference with TF's [kh*kw*in, out] matrix: (u_hat, sigma)."""
    w = weight.detach().double().numpy()
    mat = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]) if w.ndim == 4 else w.T
    u = u.detach().double().numpy()
    v = u @ mat.T
    v = v / max(np.sqrt((v ** 2).sum()), 1e-6)
    u_hat = v @ mat
    u_hat = u_hat / max(np.sqrt((u_hat ** 2).sum()), 1e-6)
    return u_hat, (v @ mat @ u_hat.T).item()


def test_l2_normalize_matches_tf_formula():
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(l2_normalize(x), torch.tensor([[0.6, 0.8]]))
    z = torch.zeros(1, 3)
    assert torch.equal(l2_normalize(z), z)


def test_spectral_normalize_sigma_and_u_hat():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    u = torch.randn(1, 5)
    w_normed, u_hat = spectral_normalize(w, u)
    ref_u, sigma = _power_iteration(w, u)
    np.testing.assert_allclose(u_hat.numpy(), ref_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_normed.numpy(), w.numpy() / sigma, rtol=1e-5, atol=1e-6)


def test_spectral_norm_outside_run_moves_u_every_call():
    torch.manual_seed(0)
    conv = Conv(3, 5, 3, 1, pad=1, pad_type="reflect", sn=True)
    x = torch.randn(1, 3, 8, 8)
    u0 = conv.u.clone()
    conv(x)
    u1 = conv.u.clone()
    np.testing.assert_allclose(u1.numpy(), _power_iteration(conv.weight, u0)[0], rtol=1e-5, atol=1e-6)
    conv(x)
    np.testing.assert_allclose(conv.u.numpy(), _power_iteration(conv.weight, u1)[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(conv.u, u1)


def test_spectral_norm_inside_run_uses_start_u_and_commits_once():
    torch.manual_seed(0)
    disc = Discriminator(ch=4, n_dis=4, sn=True)
    layer = disc.local.conv_0
    cam = disc.local.CAM_logit
    x = torch.randn(1, 3, 32, 32)
    u0, cam_u0 = layer.u.clone(), cam.u.clone()
    w0, cam_w0 = layer.weight.detach().clone(), cam.weight.detach().clone()
    with spectral_norm_run(disc):
        out1 = disc(x)
        out2 = disc(x)
        out3 = disc(x)
        assert torch.equal(layer.u, u0)  # nothing moves inside the run
        for a, b in ((out1, out2), (out1, out3)):
            assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][1], b[1][1])
        with torch.no_grad():  # an optimizer step inside the run must not affect the commit
            layer.weight.add_(1.0)
            cam.weight.mul_(-3.0)
    np.testing.assert_allclose(layer.u.numpy(), _power_iteration(w0, u0)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cam.u.numpy(), _power_iteration(cam_w0, cam_u0)[0], rtol=1e-5, atol=1e-6)
    assert cam.u.shape == (1, 1)


def test_spectral_norm_run_commits_nothing_on_error():
    torch.manual_seed(0)
    conv = Conv(3, 4, 4, 2, pad=1, sn=True)
    u0 = conv.u.clone()
    with pytest.raises(RuntimeError):
        with spectral_norm_run(conv):
            conv(torch.randn(1, 3, 8, 8))
            raise RuntimeError("boom")
    assert torch.equal(conv.u, u0)
    conv(torch.randn(1, 3, 8, 8))  # state is reset: outside a run u moves again
    assert not torch.equal(conv.u, u0)


# ---------------------------------------------------------------------------------------------
# TF1 Adam
# ---------------------------------------------------------------------------------------------

def _tf1_adam_ref(w, grads, lr, b1=0.5, b2=0.999, eps=1e-8):
    """float64 formula; the betas are the float32 values TF feeds its kernel."""
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    w = np.array(w, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    p1, p2 = b1, b2
    for g in grads:
        alpha = lr * math.sqrt(1 - p2) / (1 - p1)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        w = w - m * alpha / (np.sqrt(v) + eps)
        p1, p2 = p1 * b1, p2 * b2
    return w, m, v, p1, p2


def test_tf1_adam_matches_formula_for_three_steps():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(20))
    w0 = p.detach().double().numpy().copy()
    grads = [np.random.default_rng(i).standard_normal(20) * 10.0 ** (-i) for i in range(3)]
    opt = TF1Adam([("p", p)], lr=1e-3)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    w, m, v, p1, p2 = _tf1_adam_ref(w0, [np.float32(g).astype(np.float64) for g in grads], 1e-3)
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-6, atol=1e-8)
    slots = opt.named_slots()
    np.testing.assert_allclose(slots["p/Adam"].numpy(), m, rtol=1e-5)
    np.testing.assert_allclose(slots["p/Adam_1"].numpy(), v, rtol=1e-5)
    assert opt.beta1_power.dtype == torch.float32
    assert float(opt.beta1_power) == pytest.approx(0.0625)
    assert float(opt.beta2_power) == pytest.approx(p2, rel=1e-6)
    assert float(opt.beta1_power) == p1
    assert opt.step_count == 3


def test_tf1_adam_differs_from_torch_adam_on_tiny_v():
    g = torch.full((4,), 1e-8)
    p_tf = torch.nn.Parameter(torch.zeros(4))
    p_pt = torch.nn.Parameter(torch.zeros(4))
    opt_tf = TF1Adam([p_tf], lr=1e-3)
    opt_pt = torch.optim.Adam([p_pt], lr=1e-3, betas=(0.5, 0.999), eps=1e-8)
    p_tf.grad, p_pt.grad = g.clone(), g.clone()
    opt_tf.step()
    opt_pt.step()
    # TF1: lr*sqrt(1-b2)/(1-b1) * 0.5g / (sqrt(0.001)|g| + eps) ~ 0.0306 lr; torch: lr*g/(|g|+eps) = 0.5 lr
    expected_tf = 1e-3 * math.sqrt(0.001) / 0.5 * 0.5e-8 / (math.sqrt(0.001) * 1e-8 + 1e-8)
    assert torch.allclose(-p_tf.detach(), torch.full((4,), expected_tf), rtol=1e-5)
    assert torch.allclose(-p_pt.detach(), torch.full((4,), 0.5e-3), rtol=1e-4)
    assert (p_pt.detach() - p_tf.detach()).abs().min() > 1e-4


def test_tf1_adam_skips_none_grads_and_lr_changes():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = TF1Adam([("a", a), ("b", b)], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and torch.all(opt.v["b"] == 0)
    assert torch.allclose(a.detach(), torch.full((2,), 0.9))  # step 1 moves by lr * sign(g)
    a.grad = torch.ones(2)
    before = a.detach().clone()
    opt.step(lr=0.0)
    assert torch.equal(a.detach(), before)
    assert opt.lr == 0.0 and opt.step_count == 2


def test_tf1_adam_state_roundtrip():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3))
    opt = TF1Adam([("p", p)], lr=0.01)
    p.grad = torch.randn(3)
    opt.step()
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = TF1Adam([("p", q)], lr=0.01)
    opt2.load_state_dict(state)
    opt3 = TF1Adam([("p", torch.nn.Parameter(p.detach().clone()))], lr=0.01)
    opt3.load_named_slots(opt.named_slots(), opt.beta1_power, opt.beta2_power)
    g = torch.randn(3)
    for o in (opt, opt2, opt3):
        o.named_params[0][1].grad = g.clone()
        o.step()
    assert torch.equal(p.detach(), q.detach())
    assert torch.equal(p.detach(), opt3.named_params[0][1].detach())


def test_rho_is_clipped_after_update():
    p = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.5]))
    opt = TF1Adam([("x.rho", p)], lr=0.1, constraints={"x.rho": clip_0_1})
    p.grad = torch.tensor([-1.0, 1.0, 1.0])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1.0, 0.0, 0.4]))

    torch.manual_seed(0)
    model = build_ugatit(small_cfg())
    g_opt, d_opt = model.make_optimizers(lr=0.5)
    rho_names = {n for n, _ in model.g_params() if n.endswith("rho")}
    assert set(g_opt.constraints) == rho_names and len(rho_names) == 2 * (2 * 4 + 2)
    assert not d_opt.constraints
    for n, p in model.g_params():
        p.grad = torch.full_like(p, -1.0 if "adaptive" in n else 1.0)
    g_opt.step()
    for n, p in model.g_params():
        if n.endswith("rho"):
            assert p.min() >= 0 and p.max() <= 1
    assert torch.all(model.generator_A.adaptive_resblock0.res1.instance_layer_norm.rho == 1.0)
    assert torch.all(model.generator_A.layer_ins_norm_0.rho == 0.0)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

def _np_sigmoid_ce(x, z):
    return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


def _heads(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
            torch.randn(2, 2, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("gan_type", ["lsgan", "gan", "dragan", "hinge", "wgan-gp", "wgan-lp"])
def test_gan_losses_match_numpy(gan_type):
    real, fake = _heads(1), _heads(2)
    d_ref, g_ref = 0.0, 0.0
    for r, f in zip(real, fake):
        r, f = r.numpy(), f.numpy()
        if "wgan" in gan_type:
            d_ref += -r.mean() + f.mean()
            g_ref += -f.mean()
        elif gan_type == "lsgan":
            d_ref += ((r - 1) ** 2).mean() + (f ** 2).mean()
            g_ref += ((f - 1) ** 2).mean()
        elif gan_type in ("gan", "dragan"):
            d_ref += _np_sigmoid_ce(r, 1).mean() + _np_sigmoid_ce(f, 0).mean()
            g_ref += _np_sigmoid_ce(f, 1).mean()
        else:
            d_ref += np.maximum(1 - r, 0).mean() + np.maximum(1 + f, 0).mean()
            g_ref += -f.mean()
    assert float(L.discriminator_loss(gan_type, real, fake)) == pytest.approx(d_ref, rel=1e-10)
    assert float(L.generator_loss(gan_type, fake)) == pytest.approx(g_ref, rel=1e-10)


def test_unknown_gan_type_rejected():
    with pytest.raises(ValueError):
        L.generator_loss("wgan", _heads(0))


def test_cam_l1_and_regularization_losses():
    s, n = _heads(3)[1], _heads(4)[1]
    ref = _np_sigmoid_ce(s.numpy(), 1).mean() + _np_sigmoid_ce(n.numpy(), 0).mean()
    assert float(L.cam_loss(source=s, non_source=n)) == pytest.approx(ref, rel=1e-10)
    assert float(L.l1_loss(s, n)) == pytest.approx(np.abs(s.numpy() - n.numpy()).mean(), rel=1e-12)

    torch.manual_seed(0)
    g = Generator(ch=2, n_res=4, img_size=16, light=True)
    ref = sum(1e-4 * float((p.detach().double() ** 2).sum()) / 2 for n, p in g.named_parameters()
              if n.endswith("weight"))
    n_kernels = sum(1 for n, _ in g.named_parameters() if n.endswith("weight"))
    assert n_kernels == 3 + 4 * 2 + 1 + 1 + 4 + 4 * 2 + 2 + 1  # convs, CAM, 1x1, MLP, ada, up, logit
    assert L.regularization_loss(g).item() == pytest.approx(ref, rel=1e-5)
    assert L.regularization_loss(g.named_parameters(), scale=2e-4).item() == pytest.approx(2 * ref, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Gradient penalty
# ---------------------------------------------------------------------------------------------

def _gp_setup():
    torch.manual_seed(0)
    disc = Discriminator(ch=4, n_dis=4, sn=True)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = torch.rand(2, 3, 32, 32) * 2 - 1
    alpha = torch.rand(2, 1, 1, 1)
    noise = torch.rand(2, 3, 32, 32)
    return disc, real, fake, alpha, noise


@pytest.mark.parametrize("gan_type", ["wgan-gp", "wgan-lp", "dragan"])
def test_gradient_penalty_deterministic_with_draws(gan_type):
    disc, real, fake, alpha, noise = _gp_setup()
    results = []
    for _ in range(2):
        d = copy.deepcopy(disc)
        gp, cam_gp = L.gradient_penalty(d, real, fake, gan_type, 10, alpha=alpha, noise=noise)
        assert gp.requires_grad and cam_gp.requires_grad
        grads = torch.autograd.grad(gp + cam_gp, [d.local.conv_0.weight, d.global_.D_logit.weight])
        assert all(torch.isfinite(g).all() for g in grads)
        if (gp + cam_gp).item() > 0:  # wgan-lp is exactly 0 while every norm is below 1
            assert all(g.abs().sum() > 0 for g in grads)
        results.append((gp.item(), cam_gp.item()))
    assert results[0] == results[1]
    assert all(math.isfinite(v) and v >= 0 for v in results[0])


def test_gradient_penalty_formula_and_dragan_noise():
    disc, real, fake, alpha, noise = _gp_setup()
    d = copy.deepcopy(disc)
    with spectral_norm_run(d):
        gp, cam_gp = L.gradient_penalty(d, real, fake, "wgan-gp", 10, alpha=alpha)
        x = (real + alpha * (fake - real)).requires_grad_(True)
        logits, cams, _, _ = d(x)
        ref_gp = 0.0
        for out in logits:
            g, = torch.autograd.grad(out.sum(), x, retain_graph=True)
            ref_gp += 10 * float(((g.flatten(1).norm(dim=1) - 1) ** 2).mean())
        ref_cam = 0.0
        for out in cams:
            g, = torch.autograd.grad(out.sum(), x, retain_graph=True)
            ref_cam += 10 * float(((g.flatten(1).norm(dim=1) - 1) ** 2).mean())
    assert gp.item() == pytest.approx(ref_gp, rel=1e-5)
    assert cam_gp.item() == pytest.approx(ref_cam, rel=1e-5)

    # dragan ignores the fake and perturbs the real with 0.5 * std(real) * noise
    outs = []
    for f in (fake, torch.zeros_like(fake)):
        d = copy.deepcopy(disc)
        outs.append(tuple(t.item() for t in L.gradient_penalty(d, real, f, "dragan", 10, alpha, noise)))
    assert outs[0] == outs[1]
    with pytest.raises(ValueError):
        L.gradient_penalty(disc, real, fake, "lsgan", 10)


# ---------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------

def _snapshot(named):
    return {n: p.detach().clone() for n, p in named}


@pytest.mark.parametrize("light,gan_type", [(True, "lsgan"), (False, "lsgan"), (True, "wgan-gp"),
                                            (True, "dragan"), (False, "hinge")])
def test_d_step_and_g_step_update_the_right_parameters(light, gan_type):
    torch.manual_seed(0)
    model = build_ugatit(small_cfg(light=light, gan_type=gan_type))
    real_A = torch.rand(1, 3, 32, 32) * 2 - 1
    real_B = torch.rand(1, 3, 32, 32) * 2 - 1
    g0, d0 = _snapshot(model.g_params()), _snapshot(model.d_params())
    layer = model.discriminator_A.local.conv_0
    u0, w0 = layer.u.clone(), layer.weight.detach().clone()
    draws = {"alpha_A": torch.rand(1, 1, 1, 1), "alpha_B": torch.rand(1, 1, 1, 1),
             "noise_A": torch.rand(1, 3, 32, 32), "noise_B": torch.rand(1, 3, 32, 32)}

    d = model.d_step(real_A, real_B, lr=1e-4, gp_draws=draws)
    assert set(d) == {"Discriminator_loss", "D_A_loss", "D_B_loss"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in d.values())
    reg = float(L.regularization_loss([(n, d0[n]) for n in d0]))
    assert d["Discriminator_loss"] == pytest.approx(d["D_A_loss"] + d["D_B_loss"] + reg, rel=1e-5)
    g1, d1 = _snapshot(model.g_params()), _snapshot(model.d_params())
    assert all(torch.equal(g0[n], g1[n]) for n in g0)
    # (hinge: the D_logit biases get an exactly zero gradient while |logits| < 1)
    changed = [n for n in d0 if not torch.equal(d0[n], d1[n])]
    assert len(changed) > 0.9 * len(d0)
    # u advanced once, from the start value, with the pre-update kernel
    np.testing.assert_allclose(layer.u.numpy(), _power_iteration(w0, u0)[0], rtol=1e-5, atol=1e-6)
    assert float(model.D_optim.beta1_power) == 0.25 and float(model.G_optim.beta1_power) == 0.5

    u1, w1 = layer.u.clone(), layer.weight.detach().clone()
    g = model.g_step(real_A, real_B, lr=1e-4)
    expected = {"Generator_loss", "G_A_loss", "G_A_gan", "G_A_cycle", "G_A_identity", "G_A_cam",
                "G_B_loss", "G_B_gan", "G_B_cycle", "G_B_identity", "G_B_cam", "fake_A", "fake_B"}
    assert set(g) == expected
    assert g["fake_A"].shape == (1, 3, 32, 32) and not g["fake_A"].requires_grad
    for side in "AB":
        parts = sum(g[f"G_{side}_{t}"] for t in ("gan", "cycle", "identity", "cam"))
        assert g[f"G_{side}_loss"] == pytest.approx(parts, rel=1e-5)
    g2, d2 = _snapshot(model.g_params()), _snapshot(model.d_params())
    assert all(torch.equal(d1[n], d2[n]) for n in d1)
    changed = [n for n in g1 if not torch.equal(g1[n], g2[n])]
    assert len(changed) > 0.9 * len(g1)
    np.testing.assert_allclose(layer.u.numpy(), _power_iteration(w1, u1)[0], rtol=1e-5, atol=1e-6)
    assert float(model.G_optim.beta1_power) == 0.25
    for n, p in model.g_params():
        if n.endswith("rho"):
            assert p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("gan_type", ["wgan-gp", "dragan"])
def test_gp_draws_make_d_step_deterministic(gan_type):
    """Injected penalty draws decide the D run: the same draws give the same losses, other draws
    other penalties (so a d_step that drew its own would fail one half or the other). wgan-gp /
    dragan: their penalty is non-zero at initialisation (wgan-lp's is exactly 0 there, which would
    pin nothing)."""
    torch.manual_seed(0)
    base = build_ugatit(small_cfg(gan_type=gan_type))
    real_A, real_B = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)

    def draws(seed):
        gen = torch.Generator().manual_seed(seed)
        out = {"alpha_A": torch.rand(1, 1, 1, 1, generator=gen), "alpha_B": torch.rand(1, 1, 1, 1, generator=gen)}
        if gan_type == "dragan":
            out.update(noise_A=torch.rand(1, 3, 32, 32, generator=gen), noise_B=torch.rand(1, 3, 32, 32, generator=gen))
        return out
    torch.manual_seed(123)  # a d_step drawing its own values would draw other ones in each call below
    results = [copy.deepcopy(base).d_step(real_A, real_B, 1e-4, gp_draws=draws(1)) for _ in range(2)]
    other = copy.deepcopy(base).d_step(real_A, real_B, 1e-4, gp_draws=draws(2))
    assert results[0] == results[1]
    assert other["D_A_loss"] != results[0]["D_A_loss"] and other["D_B_loss"] != results[0]["D_B_loss"]


def test_translate_and_load_state():
    torch.manual_seed(0)
    model = build_ugatit(small_cfg())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a2b = model.translate(x, "a2b")
        b2a = model.translate(x, "b2a")
    assert a2b.shape == b2a.shape == (2, 3, 32, 32)
    assert torch.equal(a2b, model.generator_B(x)[0].detach())
    with pytest.raises(ValueError):
        model.translate(x, "a2a")
    other = build_ugatit(small_cfg())
    other.load_tf_state(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert isinstance(model, UGATIT)
    # nn.Module machinery (.to / .double) must not be shadowed by the model's helpers
    assert model.double().generator_A.conv.weight.dtype == torch.float64
    with pytest.raises(KeyError):
        build_ugatit({"light": True})


def test_keep_freed_memory_is_a_glibc_setting_only():
    """The CLI's allocator setting (in a child: it is a process setting): accepted by glibc,
    a clean False elsewhere; tensors allocated after it behave normally."""
    import platform
    import subprocess
    import sys
    code = ("import torch; from torch_port.cpu_memory import keep_freed_memory; ok = keep_freed_memory(); "
            "big = torch.ones(10 * 2**20); assert float(big.sum()) == big.numel(); print(ok)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    assert out[-1] == ("True" if platform.libc_ver()[0] == "glibc" else out[-1]) and out[-1] in ("True", "False")


def test_channels_last_model_computes_the_nchw_gradients():
    """The port with channels-last weights and inputs (what a GPU fast path or inductor's layout
    optimisation uses) gives the NCHW port's D and G loss gradients: every tensor within 1e-4 of
    its largest element (float32 rounding of other kernels' summation orders: measured <= 2e-6).
    ATen's CPU instance norm reads a channels-last gradient in the wrong layout (errors of 100 %
    of the gradient before `ops._GradContiguous`). The NCHW graph is unchanged (no extra node)."""
    from parity_tests.golden import NORM_FED_BIAS
    from torch_port.ops import spectral_norm_run
    torch.manual_seed(1)
    base = build_ugatit(dict(light=True, img_size=32, ch=4, n_dis=4, n_res=4, sn=True, smoothing=True))
    g = torch.Generator().manual_seed(2)
    x, y = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))

    def gradients(channels_last, which):
        m = copy.deepcopy(base)
        xx, yy = x, y
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            xx, yy = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
        with spectral_norm_run(m):
            total = m.discriminator_losses(xx, yy)[0] if which == "D" else m.generator_losses(xx, yy)[0]
        named = m.d_params() if which == "D" else m.g_params()
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
        return {n: t for (n, _), t in zip(named, grads) if t is not None}

    checked = 0
    for which in ("D", "G"):
        a, b = gradients(False, which), gradients(True, which)
        assert a.keys() == b.keys()
        for name in a:
            if NORM_FED_BIAS.match(name.replace(".", "/").replace("/bias", "/conv2d/bias")):
                continue  # exact gradient 0 (an instance norm cancels the bias): float noise in every run
            err = float((a[name] - b[name]).abs().max() / a[name].abs().max().clamp_min(1e-30))
            assert err <= 1e-4, (which, name, err)
            checked += 1
    assert checked > 60
    nchw = InstanceNorm(4)(torch.rand(1, 4, 8, 8, requires_grad=True))
    assert "GradContiguous" not in type(nchw.grad_fn).__name__, type(nchw.grad_fn).__name__


def test_networks_refuse_what_is_not_a_batch_of_pictures_naming_what_they_expect():
    """The Python API (README "Python API", "Fast paths"): the generators and discriminators take
    a float NCHW batch [B, 3, H, W]. Anything else was a torch error from deep inside a layer
    that named none of it (an empty batch: `IndexError: select(): index 0 out of range`; one
    picture without its batch axis: `weight should contain 256 elements not 16`; NHWC: a
    padding-size error; a numpy array: `'numpy.ndarray' object has no attribute 'to'`; 62 px:
    a 60 px picture back), or a uint8 / bool tensor translated as if it were in [-1, 1]; and
    build_ugatit with n_res != 4 built a model whose first call failed in AdaLIN. Now each is a
    ValueError / TypeError naming the expected layout, with the fast paths alike; inputs that
    are a valid batch in another float dtype or memory layout give the float32 input's result."""
    from torch_port import optimize
    torch.manual_seed(0)
    g = Generator(ch=2, n_res=4, img_size=16, light=True).eval()
    d = Discriminator(ch=2, n_dis=4, sn=True).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    bad = {
        "empty batch": x[:0], "no batch axis": x[0], "NHWC": x.permute(0, 2, 3, 1), "grayscale": x[:, :1],
        "uint8": ((x + 1) * 127.5).to(torch.uint8), "bool": x > 0, "numpy": x.numpy(),
    }
    for net in (g, optimize(g, "bf16"), d):
        for what, inp in bad.items():
            with pytest.raises((ValueError, TypeError), match=r"expects a float tensor \[B, 3, H, W\] \(NCHW"):
                net(inp)
    for what, inp in {"14 px (not a multiple of 4)": x[..., :14, :14], "4 px": x[..., :4, :4]}.items():
        with pytest.raises(ValueError, match="multiples of 4, at least 8"):
            g(inp)
    full = Generator(ch=2, n_res=4, img_size=16, light=False).eval()
    with pytest.raises(ValueError, match=r"light=False\) expects 16 x 16"):
        full(torch.zeros(1, 3, 16, 32))
    with pytest.raises(ValueError, match="n_res must be 4"):
        build_ugatit(dict(light=True, img_size=16, ch=2, n_res=2, n_dis=4, sn=True, smoothing=True))
    # valid batches in another layout or float dtype: the float32 contiguous input's result
    with torch.no_grad():
        want = g(x)
        wide = torch.zeros(2, 3, 16, 32)
        wide[..., ::2] = x
        for inp in (wide[..., ::2], x.contiguous(memory_format=torch.channels_last), x.double()):
            got = g(inp)
            for a, b in zip(got, want):  # float64 is cast to float32 on entry: the same float32 input
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert g(x[..., :8, :12])[0].shape == (2, 3, 8, 12)  # any multiple of 4 from 8 for a light model


def test_a_refused_input_says_how_to_make_it_a_batch_of_pictures():
    """Each refusal of test_networks_refuse_what_is_not_a_batch_of_pictures... names the likely fix
    for what it got: NHWC (a picture of any size, not only square) -> permute, one picture -> x[None],
    one channel -> expand, 8 bits -> scale to [-1, 1], a numpy array -> torch.from_numpy."""
    g = Generator(ch=2, n_res=4, img_size=16, light=True).eval()
    x = torch.rand(1, 3, 16, 12) * 2 - 1
    hints = {"channels last: x.permute(0, 3, 1, 2)": x.permute(0, 2, 3, 1), "add the batch axis, x[None]": x[0],
             "a grayscale picture: x.expand(-1, 3, -1, -1)": x[:, :1],
             "8-bit pictures: x.float() / 127.5 - 1": ((x + 1) * 127.5).to(torch.uint8),
             "convert it: torch.from_numpy(array)": x.numpy()}
    for hint, inp in hints.items():
        with pytest.raises((ValueError, TypeError)) as e:
            g(inp)
        assert hint in str(e.value), (hint, str(e.value))


def test_settings_that_differ_compares_only_what_the_weights_fix():
    """checkpoint.settings_that_differ: a full state dict of another ch is named (ch, the model's,
    the weights'); a generators-only state dict says nothing of n_dis (no discriminator: its
    inferred value is a default, no record), so a model of another n_dis is no difference."""
    from torch_port.checkpoint import settings_that_differ
    from ugatit_common import options as opt
    model = build_ugatit(opt.config_from(light=True, img_size=32, ch=4, n_dis=5))
    wider = build_ugatit(opt.config_from(light=True, img_size=32, ch=8, n_dis=5)).state_dict()
    assert settings_that_differ(model, dict(wider)) == [("ch", 4, 8)]
    generators = {k: v for k, v in model.state_dict().items() if k.startswith("generator_")}
    assert settings_that_differ(model, generators) == []
