"""The official U-GAT-IT generator and discriminator (`UGATIT.generator` / `discriminator`).

Attribute names are the official TF scope names, so `state_dict()` keys are the TF variable
paths under the port's naming rule. The generator is split into small seams that a subclass
(Morph-UGATIT) can override one at a time: `encode`, `attend`, `style`, `decode`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ugatit_common.options import GENERATOR_MIN_IMG_SIZE, min_img_size

from .ops import (AdaLIN, CAMLogit, Conv, Dense, InstanceNorm, LIN, global_avg_pooling, lrelu,
                  relu, up_sample)

__all__ = ["ResBlock", "AdaptiveResBlock", "MLP", "Generator", "DiscriminatorBranch",
           "Discriminator", "check_images", "wrong_device"]


def check_images(x, img_ch: int, who: str, multiple: int = 1, least: int = 1,
                 device: torch.device | None = None) -> None:
    """Refuse, naming what is expected, an input the networks cannot take as a batch of pictures
    (torch's own errors from deep inside a layer name none of it): a torch.Tensor, NCHW [B, img_ch,
    H, W] with B >= 1, floating point (values in [-1, 1]), H and W multiples of `multiple`, at
    least `least`, on `device` (the weights'; None: any). Cheap and silent on a good input (no
    look at the values, so no host sync on a GPU; also inside torch.compile / torch.export)."""
    if (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == img_ch and x.shape[0] != 0
            and x.is_floating_point() and x.shape[2] % multiple == 0 and x.shape[3] % multiple == 0
            and x.shape[2] >= least and x.shape[3] >= least and (device is None or x.device == device)):
        return
    expected = f"{who} expects a float tensor [B, {img_ch}, H, W] (NCHW, values in [-1, 1])"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{expected}; got {type(x).__module__}.{type(x).__qualname__} "
                        f"(convert it: torch.from_numpy(array))")
    if x.dim() != 4:
        hint = " (one picture: add the batch axis, x[None])" if x.dim() == 3 else ""
        raise ValueError(f"{expected}; got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != img_ch:
        hint = (" (channels last: x.permute(0, 3, 1, 2))" if x.shape[3] == img_ch else
                f" (a grayscale picture: x.expand(-1, {img_ch}, -1, -1))" if x.shape[1] == 1 else "")
        raise ValueError(f"{expected}; got shape {tuple(x.shape)}: {x.shape[1]} channel(s){hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{expected}; got an empty batch, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{expected}; got {x.dtype} (8-bit pictures: x.float() / 127.5 - 1)")
    rule = f"multiples of {multiple}, at least {least}" if multiple > 1 else f"at least {least}"
    if not (x.shape[2] % multiple == 0 and x.shape[3] % multiple == 0 and x.shape[2] >= least and x.shape[3] >= least):
        raise ValueError(f"{expected} with H and W {rule}; got {x.shape[2]} x {x.shape[3]}")
    raise wrong_device(expected, x, device)


def wrong_device(expected: str, x: torch.Tensor, device: torch.device, name: str = "x") -> ValueError:
    """The error for an input on another device than the weights (torch's own, from the first
    convolution, names tensor types, not the fix)."""
    return ValueError(f"{expected} on {device}, the weights' device; got a tensor on {x.device} "
                      f"({name}.to('{device}'), or move the model: model.to('{x.device}'))")


class _ResHalf(nn.Module):
    """`res1` / `res2` of a residual block: `conv_0` (3x3, reflect pad 1) + `instance_norm`."""

    def __init__(self, channels: int, use_bias: bool = True):
        super().__init__()
        self.conv_0 = Conv(channels, channels, 3, 1, pad=1, pad_type="reflect", use_bias=use_bias)
        self.instance_norm = InstanceNorm(channels)

    def forward(self, x):
        return self.instance_norm(self.conv_0(x))


class ResBlock(nn.Module):
    """Official `resblock`: res1 (conv, IN, relu), res2 (conv, IN), residual add."""

    def __init__(self, channels: int, use_bias: bool = True):
        super().__init__()
        self.res1 = _ResHalf(channels, use_bias)
        self.res2 = _ResHalf(channels, use_bias)

    def forward(self, x_init):
        x = relu(self.res1(x_init))
        return self.res2(x) + x_init


class _AdaResHalf(nn.Module):
    """`res1` / `res2` of an adaptive block: `conv_0` + `instance_layer_norm` (AdaLIN)."""

    def __init__(self, channels: int, smoothing: bool, use_bias: bool = True):
        super().__init__()
        self.conv_0 = Conv(channels, channels, 3, 1, pad=1, pad_type="reflect", use_bias=use_bias)
        self.instance_layer_norm = AdaLIN(channels, smoothing)

    def forward(self, x, gamma, beta):
        return self.instance_layer_norm(self.conv_0(x), gamma, beta)


class AdaptiveResBlock(nn.Module):
    """Official `adaptive_ins_layer_resblock`: both halves use the same gamma/beta.

    Seam (Morph-UGATIT's per-layer w+ styles): gamma / beta may also be a pair
    (res1's, res2's); a single tensor is used by both halves, as officially."""

    def __init__(self, channels: int, smoothing: bool = True, use_bias: bool = True):
        super().__init__()
        self.res1 = _AdaResHalf(channels, smoothing, use_bias)
        self.res2 = _AdaResHalf(channels, smoothing, use_bias)

    def forward(self, x_init, gamma, beta):
        gamma1, gamma2 = gamma if isinstance(gamma, (tuple, list)) else (gamma, gamma)
        beta1, beta2 = beta if isinstance(beta, (tuple, list)) else (beta, beta)
        x = relu(self.res1(x_init, gamma1, beta1))
        return self.res2(x, gamma2, beta2) + x_init


class MLP(nn.Module):
    """Official `MLP`: `linear_0`, `linear_1` (relu after each), `gamma`, `beta`; width ch*n_res.

    light: input is the GAP of the map; full: the whole map flattened in NHWC order (so the TF
    kernel converts with a plain transpose)."""

    def __init__(self, in_features: int, width: int, light: bool):
        super().__init__()
        self.light = light
        self.linear_0 = Dense(in_features, width)
        self.linear_1 = Dense(width, width)
        self.gamma = Dense(width, width)
        self.beta = Dense(width, width)

    def forward(self, x):
        if self.light:
            x = global_avg_pooling(x)
        else:
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = relu(self.linear_0(x))
        x = relu(self.linear_1(x))
        return self.gamma(x), self.beta(x)


class Generator(nn.Module):
    """Official `generator()`; forward(x) -> (image, cam_logit [B, 2], heatmap [B, H, W]).

    TF squeezes the heatmap (dropping the batch axis when B = 1); here the batch axis is kept."""

    def __init__(self, ch: int = 64, n_res: int = 4, img_size: int = 256, light: bool = False,
                 smoothing: bool = True, img_ch: int = 3):
        super().__init__()
        self.ch, self.n_res, self.img_size, self.light = ch, n_res, img_size, light
        self.smoothing, self.img_ch = smoothing, img_ch

        channel = ch
        self.conv = Conv(img_ch, channel, 7, 1, pad=3, pad_type="reflect")
        self.ins_norm = InstanceNorm(channel)
        for i in range(2):
            self.add_module(f"conv_{i}", Conv(channel, channel * 2, 3, 2, pad=1, pad_type="reflect"))
            self.add_module(f"ins_norm_{i}", InstanceNorm(channel * 2))
            channel *= 2
        for i in range(n_res):
            self.add_module(f"resblock_{i}", ResBlock(channel))

        self.CAM_logit = CAMLogit(channel, sn=False)
        self.conv_1x1 = Conv(channel * 2, channel, 1, 1)

        if n_res != 4 and type(self).style is Generator.style:
            # the official MLP is ch * n_res wide; AdaLIN scales the ch * 4 residual channels with it
            from ugatit_common.options import N_RES_RULE
            raise ValueError(f"n_res={n_res}: {N_RES_RULE}")
        mlp_in = channel if light else (img_size // 4) * (img_size // 4) * channel
        self.MLP = MLP(mlp_in, ch * n_res, light)

        for i in range(n_res):
            self.add_module(f"adaptive_resblock{i}", AdaptiveResBlock(channel, smoothing))
        for i in range(2):
            self.add_module(f"up_conv_{i}", Conv(channel, channel // 2, 3, 1, pad=1, pad_type="reflect"))
            self.add_module(f"layer_ins_norm_{i}", LIN(channel // 2))
            channel //= 2
        self.G_logit = Conv(channel, img_ch, 7, 1, pad=3, pad_type="reflect")

    def check_input(self, x) -> None:
        """check_images: the generator halves H and W twice and its reflect pads need 2 rows
        there, so H and W are multiples of 4 (the output has the input's size), at least 8."""
        check_images(x, self.img_ch, type(self).__name__, multiple=4, least=GENERATOR_MIN_IMG_SIZE,
                     device=self.G_logit.weight.device)
        mlp = self._modules.get("MLP")
        if mlp is not None and not mlp.light and (x.shape[2] != self.img_size or x.shape[3] != self.img_size):
            raise ValueError(f"{type(self).__name__} (light=False) expects {self.img_size} x {self.img_size} pictures "
                             f"(its MLP reads the whole feature map of img_size={self.img_size}); got "
                             f"{x.shape[2]} x {x.shape[3]}")

    # -- seams ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Down-sampling and residual blocks."""
        x = relu(self.ins_norm(self.conv(x)))
        for i in range(2):
            x = relu(getattr(self, f"ins_norm_{i}")(getattr(self, f"conv_{i}")(x)))
        for i in range(self.n_res):
            x = getattr(self, f"resblock_{i}")(x)
        return x

    def attend(self, features: torch.Tensor):
        """CAM: returns (x, cam_logit [B, 2], heatmap [B, H, W])."""
        gap_logit, gmp_logit, x_gap, x_gmp = self.CAM_logit(features)
        cam_logit = torch.cat([gap_logit, gmp_logit], dim=1)
        x = relu(self.conv_1x1(torch.cat([x_gap, x_gmp], dim=1)))
        heatmap = x.sum(dim=1)
        return x, cam_logit, heatmap

    def style(self, x: torch.Tensor):
        """AdaLIN parameters (gamma, beta), each [B, ch * n_res], from the MLP."""
        return self.MLP(x)

    def decode(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Adaptive residual blocks, up-sampling, `G_logit`, tanh.

        gamma / beta: [B, C] shared by every adaptive block (official), or sequences of n_res
        per-block entries (each a tensor or a (res1, res2) pair; see `AdaptiveResBlock`)."""
        per_block = isinstance(gamma, (tuple, list))
        for i in range(self.n_res):
            g, b = (gamma[i], beta[i]) if per_block else (gamma, beta)
            x = getattr(self, f"adaptive_resblock{i}")(x, g, b)
        for i in range(2):
            x = up_sample(x, 2)
            x = getattr(self, f"up_conv_{i}")(x)
            x = relu(getattr(self, f"layer_ins_norm_{i}")(x))
        return torch.tanh(self.G_logit(x))

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        features = self.encode(x)
        x, cam_logit, heatmap = self.attend(features)
        gamma, beta = self.style(x)
        return self.decode(x, gamma, beta), cam_logit, heatmap


class DiscriminatorBranch(nn.Module):
    """Official `discriminator_local` (n_down = n_dis - 4) / `discriminator_global`
    (n_down = n_dis - 2): `conv_0`, `conv_1..conv_{n_down}`, `conv_last`, CAM, `conv_1x1`, `D_logit`.
    forward(x) -> (logit [B,1,h,w], cam_logit [B,2], heatmap [B,h,w])."""

    def __init__(self, ch: int, n_down: int, sn: bool = True, img_ch: int = 3):
        super().__init__()
        self.n_down = n_down
        channel = ch
        self.conv_0 = Conv(img_ch, channel, 4, 2, pad=1, pad_type="reflect", sn=sn)
        for i in range(1, n_down + 1):
            self.add_module(f"conv_{i}", Conv(channel, channel * 2, 4, 2, pad=1, pad_type="reflect", sn=sn))
            channel *= 2
        self.conv_last = Conv(channel, channel * 2, 4, 1, pad=1, pad_type="reflect", sn=sn)
        channel *= 2
        self.CAM_logit = CAMLogit(channel, sn=sn)
        self.conv_1x1 = Conv(channel * 2, channel, 1, 1)
        self.D_logit = Conv(channel, 1, 4, 1, pad=1, pad_type="reflect", sn=sn)

    def forward(self, x):
        x = lrelu(self.conv_0(x), 0.2)
        for i in range(1, self.n_down + 1):
            x = lrelu(getattr(self, f"conv_{i}")(x), 0.2)
        x = lrelu(self.conv_last(x), 0.2)
        gap_logit, gmp_logit, x_gap, x_gmp = self.CAM_logit(x)
        cam_logit = torch.cat([gap_logit, gmp_logit], dim=1)
        x = lrelu(self.conv_1x1(torch.cat([x_gap, x_gmp], dim=1)), 0.2)
        heatmap = x.sum(dim=1)
        return self.D_logit(x), cam_logit, heatmap


class Discriminator(nn.Module):
    """Official `discriminator()`: sub-modules `local` and `global` (a Python keyword: registered
    with add_module, reachable as `global_`).
    forward(x) -> ([local_logit, global_logit], [local_cam, global_cam], local_heatmap, global_heatmap)."""

    def __init__(self, ch: int = 64, n_dis: int = 6, sn: bool = True, img_ch: int = 3):
        super().__init__()
        if n_dis < 4:
            raise ValueError(f"n_dis must be >= 4 (the local branch has n_dis - 4 extra convs), got {n_dis}")
        self.ch, self.n_dis, self.sn, self.img_ch = ch, n_dis, sn, img_ch
        self.local = DiscriminatorBranch(ch, n_dis - 4, sn, img_ch)
        self.add_module("global", DiscriminatorBranch(ch, n_dis - 2, sn, img_ch))

    @property
    def global_(self) -> DiscriminatorBranch:
        return getattr(self, "global")

    def forward(self, x):
        # the global branch halves H and W n_dis-1 times, then reflect-pads by 2 (needs 3 pixels):
        # a smaller picture was torch's "Padding size should be less than ..." from deep inside
        check_images(x, self.img_ch, type(self).__name__, least=min_img_size(self.n_dis),
                     device=self.local.conv_0.weight.device)
        local_x, local_cam, local_heatmap = self.local(x)
        global_x, global_cam, global_heatmap = self.global_(x)
        return [local_x, global_x], [local_cam, global_cam], local_heatmap, global_heatmap
