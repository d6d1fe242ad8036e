"""Morph-UGATIT's generator: the port's `Generator` with AdaLIN styles from a latent code.

Only the style source changes (`style`); `encode` (the shared encoder E), `attend` (CAM) and
`decode` are the port's own methods, inherited unchanged. `decode` takes per-block, per-layer
(gamma, beta) through the seam in `torch_port.networks.Generator.decode`.

Direction code z (64-d): z = 0.2 * N(0, 1), plus 1 on the first 32 entries for A->B, on the last
32 for B->A. `LatentMLP`: PixelNorm, then 8 Linear layers each followed by LeakyReLU(0.2)
(as Lifespan's latent mapping), z_dim 64 -> w_dim 256. w+ space: every AdaLIN layer
(res1 and res2 of each adaptive block) has its own Linear(w_dim -> C) for gamma and for beta.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_port.networks import Generator, wrong_device

__all__ = ["DIRECTIONS", "make_z", "PixelNorm", "LatentMLP", "LayerStyle", "MorphGenerator"]

DIRECTIONS = ("a2b", "b2a")
Z_DIM = 64
W_DIM = 256
Z_STD = 0.2


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
    return direction


def make_z(direction: str, batch: int, generator: torch.Generator | None = None,
           z_dim: int = Z_DIM, device=None, dtype=torch.float32) -> torch.Tensor:
    """[batch, z_dim] direction codes: 0.2 * N(0, 1), + 1 on the first half (a2b) or on the
    second half (b2a). `generator`: an optional torch.Generator (on CPU) for reproducible draws."""
    check_direction(direction)
    if z_dim % 2:
        raise ValueError(f"z_dim must be even, got {z_dim}")
    z = torch.randn(batch, z_dim, generator=generator, dtype=dtype) * Z_STD
    half = z_dim // 2
    if direction == "a2b":
        z[:, :half] += 1.0
    else:
        z[:, half:] += 1.0
    return z.to(device) if device is not None else z


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over features) + eps)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)


class LatentMLP(nn.Module):
    """PixelNorm, then `n_layers` Linear layers, LeakyReLU(0.2) after each: z [B, z_dim] -> w [B, w_dim].
    Kernels are He-initialised for LeakyReLU(0.2) so the code keeps its scale through 8 layers
    (N(0, 0.02) would shrink w by ~0.3 per layer and erase the direction at start)."""

    def __init__(self, z_dim: int = Z_DIM, w_dim: int = W_DIM, n_layers: int = 8):
        super().__init__()
        self.z_dim, self.w_dim, self.n_layers = z_dim, w_dim, n_layers
        self.pixel_norm = PixelNorm()
        gain = math.sqrt(2.0 / (1.0 + 0.2 ** 2))
        for i in range(n_layers):
            lin = nn.Linear(z_dim if i == 0 else w_dim, w_dim)
            nn.init.normal_(lin.weight, 0.0, gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            self.add_module(f"linear_{i}", lin)

    def forward(self, z):
        x = self.pixel_norm(z)
        for i in range(self.n_layers):
            x = F.leaky_relu(getattr(self, f"linear_{i}")(x), 0.2)
        return x


class LayerStyle(nn.Module):
    """One AdaLIN layer's style: gamma = Linear_gamma(w), beta = Linear_beta(w), each [B, C].
    gamma's bias starts at 1 and beta's at 0 (AdaLIN starts as plain normalisation); kernels
    N(0, 0.02) like the port's dense layers."""

    def __init__(self, w_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Linear(w_dim, channels)
        self.beta = nn.Linear(w_dim, channels)
        for lin, bias in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.constant_(lin.bias, bias)

    def forward(self, w):
        return self.gamma(w), self.beta(w)


class MorphGenerator(Generator):
    """One generator for both directions. forward(x, z=None, w=None) -> (image, cam_logit,
    heatmap), like the port; give the direction code z (mapped by `mapping`) or w directly.

    The port's feature MLP (`Generator.MLP`) is not used here and is removed; the parent is built
    with light=True only so that this unused MLP is small while it exists (`light` only selects
    the MLP's input in the port). Parameters: the port's encoder/CAM/decoder names, plus
    `mapping.linear_<i>` and `style_<block>_<layer>.{gamma,beta}` (layer 0 = res1, 1 = res2)."""

    def __init__(self, ch: int = 64, n_res: int = 4, img_size: int = 256, light: bool = False,
                 smoothing: bool = True, img_ch: int = 3, z_dim: int = Z_DIM, w_dim: int = W_DIM,
                 mlp_layers: int = 8):
        super().__init__(ch=ch, n_res=n_res, img_size=img_size, light=True, smoothing=smoothing,
                         img_ch=img_ch)
        del self.MLP
        self.light = light  # recorded for the config; no effect (the style comes from w)
        self.z_dim, self.w_dim = z_dim, w_dim
        self.mapping = LatentMLP(z_dim, w_dim, mlp_layers)
        channels = ch * 4  # the adaptive blocks' width
        for i in range(n_res):
            for j in range(2):
                self.add_module(f"style_{i}_{j}", LayerStyle(w_dim, channels))

    def make_z(self, direction: str, batch: int, generator: torch.Generator | None = None):
        """Codes drawn in float32 (the same draws at any precision), in the latent MLP's dtype."""
        z = make_z(direction, batch, generator, self.z_dim, device=self.G_logit.weight.device)
        return z.to(self.mapping.linear_0.weight.dtype)

    def w_from_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def style(self, x: torch.Tensor, w: torch.Tensor | None = None):
        """Per-block lists of (res1, res2) pairs: gamma[i] = (gamma_res1, gamma_res2), beta likewise.
        `x` (the attended features) is not used: the style comes from w only."""
        if w is None:
            raise ValueError("MorphGenerator.style needs w (give z or w to forward)")
        gammas, betas = [], []
        for i in range(self.n_res):
            g0, b0 = getattr(self, f"style_{i}_0")(w)
            g1, b1 = getattr(self, f"style_{i}_1")(w)
            gammas.append((g0, g1))
            betas.append((b0, b1))
        return gammas, betas

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, w: torch.Tensor | None = None):
        if (z is None) == (w is None):
            raise ValueError("MorphGenerator.forward needs exactly one of z (direction code) or w")
        self.check_input(x)
        name, code, width = ("z", z, self.z_dim) if w is None else ("w", w, self.w_dim)
        if not (isinstance(code, torch.Tensor) and code.dim() == 2 and code.shape[1] == width
                and code.shape[0] == x.shape[0] and code.is_floating_point()):
            got = (f"shape {tuple(code.shape)}, {code.dtype}" if isinstance(code, torch.Tensor)
                   else f"{type(code).__module__}.{type(code).__qualname__}")
            raise ValueError(f"MorphGenerator: {name} must be a float tensor [B, {width}], one row per picture "
                             f"(B = {x.shape[0]}, the batch of x); got {got}")
        if code.device != x.device:
            raise wrong_device(f"MorphGenerator: {name} must be a float tensor [B, {width}]", code, x.device, name)
        if w is None:  # codes in the layers' dtype, as the port's layers take their inputs (torch_port.ops)
            w = self.w_from_z(z.to(self.mapping.linear_0.weight.dtype))
        else:
            w = w.to(self.style_0_0.gamma.weight.dtype)
        features = self.encode(x)
        x, cam_logit, heatmap = self.attend(features)
        gamma, beta = self.style(x, w=w)
        return self.decode(x, gamma, beta), cam_logit, heatmap
