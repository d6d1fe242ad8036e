"""Reflection padding whose backward pass is deterministic on CUDA (issue 17).

ATen's CUDA backward of a reflection pad adds each border gradient into the input gradient with
atomic additions, in whatever order the threads arrive, so two identical training steps can
differ in the last bits, and `torch.use_deterministic_algorithms(True)` refuses it. The exact fp32
training path on CUDA runs in deterministic mode (so that 2N iterations equal N + resume + N bit
for bit there too); its reflection pads use this one: the same forward (ATen's), a backward made
of slices, flips and zero pads added in a fixed order (itself differentiable: the gradient
penalty differentiates a discriminator twice). On a CPU, and outside deterministic mode, the
port's convolutions keep ATen's reflection pad (`pad`): nothing changes there."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _fold(g: torch.Tensor, before: int, after: int, size: int, dim: int) -> torch.Tensor:
    """The gradient of a reflection pad (`before`, `after`) of a dimension of `size`, along `dim`
    (-1 or -2): the centre plus each border flipped back onto the elements it copied."""
    centre = g.narrow(dim, before, size)
    out = centre
    if before:
        part = g.narrow(dim, 0, before).flip(dim)  # output i < before copied input before - i
        pad = (1, size - 1 - before) if dim == -1 else (0, 0, 1, size - 1 - before)
        out = out + F.pad(part, pad)
    if after:
        part = g.narrow(dim, before + size, after).flip(dim)  # copied inputs size - 2 down to size - 1 - after
        pad = (size - 1 - after, 1) if dim == -1 else (0, 0, size - 1 - after, 1)
        out = out + F.pad(part, pad)
    return out


class _ReflectPad2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pad):
        ctx.pad, ctx.size = pad, tuple(x.shape[-2:])
        return F.pad(x, pad, mode="reflect")

    @staticmethod
    def backward(ctx, g):
        left, right, top, bottom = ctx.pad
        h, w = ctx.size
        return _fold(_fold(g, left, right, w, -1), top, bottom, h, -2), None


def reflect_pad_deterministic(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """F.pad(x, pad, mode="reflect") for NCHW `x` (pad = left, right, top, bottom) with the
    deterministic backward above."""
    return _ReflectPad2d.apply(x, tuple(int(p) for p in pad))


def pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """The port's padding: ATen's F.pad, except a reflection pad of a CUDA tensor under
    `torch.use_deterministic_algorithms(True)`, which takes `reflect_pad_deterministic`."""
    if mode == "reflect" and x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return reflect_pad_deterministic(x, pad)
    return F.pad(x, pad, mode=mode)
