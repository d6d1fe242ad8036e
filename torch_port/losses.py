"""The official U-GAT-IT losses (`ops.py` loss functions and `UGATIT.gradient_panalty`)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GAN_TYPES", "discriminator_loss", "generator_loss", "cam_loss", "l1_loss",
           "regularization_loss", "gradient_penalty", "uses_gradient_penalty"]

GAN_TYPES = ("gan", "lsgan", "wgan-gp", "wgan-lp", "dragan", "hinge")


def _check(gan_type: str) -> None:
    if gan_type not in GAN_TYPES:
        raise ValueError(f"unknown gan_type {gan_type!r}; expected one of {GAN_TYPES}")


def uses_gradient_penalty(gan_type: str) -> bool:
    """wgan-gp, wgan-lp and dragan add a gradient penalty to the D loss."""
    return "wgan" in gan_type or gan_type == "dragan"


def _sigmoid_ce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(gan_type: str, real_list, fake_list) -> torch.Tensor:
    """Sum over the heads (local, global) of real_loss + fake_loss."""
    _check(gan_type)
    total = 0
    for real, fake in zip(real_list, fake_list):
        if "wgan" in gan_type:
            real_loss, fake_loss = -real.mean(), fake.mean()
        elif gan_type == "lsgan":
            real_loss, fake_loss = (real - 1.0).square().mean(), fake.square().mean()
        elif gan_type in ("gan", "dragan"):
            real_loss, fake_loss = _sigmoid_ce(real, 1.0), _sigmoid_ce(fake, 0.0)
        else:  # hinge
            real_loss, fake_loss = F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()
        total = total + (real_loss + fake_loss)
    return total


def generator_loss(gan_type: str, fake_list) -> torch.Tensor:
    """Sum over the heads of the generator's adversarial loss (hinge and wgan: -mean(fake))."""
    _check(gan_type)
    total = 0
    for fake in fake_list:
        if "wgan" in gan_type or gan_type == "hinge":
            loss = -fake.mean()
        elif gan_type == "lsgan":
            loss = (fake - 1.0).square().mean()
        else:  # gan, dragan
            loss = _sigmoid_ce(fake, 1.0)
        total = total + loss
    return total


def cam_loss(source: torch.Tensor, non_source: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy: source -> 1, non-source -> 0, each mean-reduced."""
    return _sigmoid_ce(source, 1.0) + _sigmoid_ce(non_source, 0.0)


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean()


def regularization_loss(module_or_named_params, scale: float = 1e-4) -> torch.Tensor:
    """`l2_regularizer(scale)` summed over every kernel: scale * sum(w^2) / 2 over each parameter
    whose name ends in `weight` (the naming rule makes these exactly the conv/dense kernels).
    Accepts an nn.Module or an iterable of (name, parameter)."""
    if isinstance(module_or_named_params, nn.Module):
        named: Iterable = module_or_named_params.named_parameters()
    else:
        named = module_or_named_params
    terms = [scale * (p.square().sum() / 2) for name, p in named if name.endswith("weight")]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def _penalty(out: torch.Tensor, interpolated: torch.Tensor, gan_type: str, ld: float,
             grad_scale: torch.Tensor | None = None) -> torch.Tensor:
    if grad_scale is None:
        grad, = torch.autograd.grad(out.sum(), interpolated, create_graph=True)
    else:  # fp16: the inner backward runs through float16 convolutions too; scaled as the outer one
        grad, = torch.autograd.grad(out.sum() * grad_scale, interpolated, create_graph=True)
        grad = grad / grad_scale  # a power of two: exact (an overflow stays inf: the step is skipped)
    grad = grad.reshape(grad.shape[0], -1)
    norm = torch.sqrt(grad.square().sum(dim=1))  # tf.norm(flatten(grad), axis=1)
    if gan_type == "wgan-lp":
        return ld * torch.clamp_min(norm - 1.0, 0.0).square().mean()
    return ld * (norm - 1.0).square().mean()  # wgan-gp, dragan


def gradient_penalty(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, gan_type: str,
                     ld: float, alpha: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, grad_scale: torch.Tensor | None = None):
    """Official `gradient_panalty` -> (gp, cam_gp), each summed over the two heads.

    dragan: fake := real + 0.5 * std(real) * noise (noise ~ U[0,1) of real's shape, biased std
    over all axes). interpolated = real + alpha * (fake - real), alpha [B,1,1,1] ~ U[0,1).
    Both draws are injectable for parity tests; one discriminator call serves all four terms.
    `grad_scale` (fp16 training: the D loss scale, a power of two): the penalty's inner gradient
    is taken of the scaled logits and divided back, so that it does not underflow in float16's
    backward convolutions (torch.amp's recipe for gradient penalties); None: unscaled (fp32)."""
    if gan_type not in ("wgan-gp", "wgan-lp", "dragan"):
        raise ValueError(f"no gradient penalty for gan_type {gan_type!r}")
    real = real.detach()
    if gan_type == "dragan":
        if noise is None:
            noise = torch.rand_like(real)
        mean = real.mean()
        std = torch.sqrt((real - mean).square().mean())
        fake = real + 0.5 * std * noise
    fake = fake.detach()
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device)
    interpolated = (real + alpha * (fake - real)).requires_grad_(True)
    logits, cam_logits, _, _ = disc(interpolated)
    gp = sum(_penalty(logit, interpolated, gan_type, ld, grad_scale) for logit in logits)
    cam_gp = sum(_penalty(cam, interpolated, gan_type, ld, grad_scale) for cam in cam_logits)
    return gp, cam_gp
