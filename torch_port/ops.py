"""Layers with the exact semantics of the official TensorFlow U-GAT-IT (`ops.py`).

Tensors are NCHW here; every op reproduces what the NHWC TF graph computes. Parameter names
follow the naming rule of the port: the TF variable path with `/` -> `.` and the framework
component dropped is the state-dict key (`<scope>/conv2d/kernel` -> `<scope>.weight`, ...).
Only conv/dense kernels are called `weight`, so "every `weight`" is exactly the set of
L2-regularised kernels.

Spectral norm follows the measured behaviour of the official code: within one training run
(one `sess.run`) every call sees the start-of-run `u`, and `u` advances by exactly one power
iteration per run (see `spectral_norm_run`); outside a run each forward call advances `u`.

Precision: every layer with parameters computes in its parameters' dtype and casts its input to
it on entry (a no-op when they match, so float32 and float64 runs are unchanged). The fast paths
(`torch_port.fast`, policy in `torch_port.precision`) rely on this: they give convolutions a
bfloat16 / float16 kernel and keep the norms (statistics and affine map), the CAM logits and the
spectral-norm power iteration in float32 (a spectral-norm conv keeps its float32 `weight` for
the power iteration and convolves with `weight_lowp`, a reduced-precision copy made once).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .deterministic_pad import pad

__all__ = [
    "tf_conv_padding", "l2_normalize", "spectral_sigma", "spectral_normalize", "spectral_norm_run",
    "SpectralNormMixin", "Conv", "Dense", "InstanceNorm", "AdaLIN", "LIN", "CAMLogit",
    "instance_normalize", "layer_normalize", "lrelu", "relu", "up_sample", "global_avg_pooling",
    "global_max_pooling",
]

WEIGHT_STD = 0.02
NORM_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Small functional helpers
# ---------------------------------------------------------------------------------------------

def tf_conv_padding(kernel: int, stride: int, pad: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of the official `conv`: `pad` on every side when
    `kernel - stride` is even, otherwise `pad` top/left and `kernel - stride - pad` bottom/right."""
    if pad <= 0:
        return (0, 0, 0, 0)
    if (kernel - stride) % 2 == 0:
        return (pad, pad, pad, pad)
    other = kernel - stride - pad
    return (pad, other, pad, other)


def lrelu(x: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """tf.nn.leaky_relu (the official helper's default slope is 0.01; the discriminator uses 0.2).

    TF holds alpha as a float32 attribute, so a float64 graph multiplies by float32(0.2); the
    same rounding here keeps float64 runs equal to TF's (a no-op in float32)."""
    return F.leaky_relu(x, float(np.float32(alpha)))


def relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


def up_sample(x: torch.Tensor, scale_factor: int = 2) -> torch.Tensor:
    """Nearest neighbour up-sampling; equals tf.image.resize_nearest_neighbor
    (align_corners=False, half_pixel_centers=False) for integer scale factors."""
    return F.interpolate(x, scale_factor=scale_factor, mode="nearest")


def global_avg_pooling(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] mean over H, W."""
    return x.mean(dim=(2, 3))


def global_max_pooling(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] max over H, W. `amax` splits the gradient evenly among ties,
    like TF's reduce_max gradient (torch.max(dim) would send it to one element)."""
    return x.amax(dim=(2, 3))


class _GradContiguous(torch.autograd.Function):
    """Identity whose backward hands on a contiguous (NCHW) gradient. ATen's instance norm
    normalises a contiguous copy of its input, and its CPU backward reads a channels-last
    gradient in that copy's layout: wrong gradients, 100 % of their size (torch 2.11 and 2.13,
    test_torch_port_unit.py). Used only where the activations are channels-last."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _CenteredNormalize(torch.autograd.Function):
    """(x - mean) / sqrt(var + eps) over `dims`, in TF's order of operations: subtract the mean
    first, then divide (TF moments + the official formula). ATen's fused norms evaluate
    x * rstd - mean * rstd instead, which in float32 cancels where |mean| >> std and doubled
    the port's rounding error against TF's through the AdaLIN/LIN decoder. The gradient is
    ATen's fused norm backward (it subtracts the mean first too); it is not twice
    differentiable (no official loss differentiates a generator twice)."""

    @staticmethod
    def forward(ctx, x, dims, eps):
        mean = x.mean(dims, keepdim=True)
        centered = x - mean
        std = torch.sqrt(centered.square().mean(dims, keepdim=True) + eps)  # biased, like TF moments
        ctx.save_for_backward(x, mean, std.reciprocal())
        ctx.dims, ctx.eps = dims, eps
        return centered.div_(std)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous()  # x is; a channels-last grad would be read in x's layout (see _GradContiguous)
        mask = [True, False, False]
        if ctx.dims == (2, 3):  # per (sample, channel): batch-norm backward over N*C channels
            n, c, h, w = x.shape
            gx = torch.ops.aten.native_batch_norm_backward(
                grad.reshape(1, n * c, h, w), x.reshape(1, n * c, h, w), None, None, None,
                mean.reshape(n * c), rstd.reshape(n * c), True, ctx.eps, mask)[0]
            return gx.reshape(x.shape), None, None
        gx = torch.ops.aten.native_layer_norm_backward(grad, x, list(x.shape[1:]), mean, rstd, None, None, mask)[0]
        return gx, None, None


def instance_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over H, W per sample and channel, biased variance (the
    official AdaLIN/LIN formula on TF moments)."""
    return _CenteredNormalize.apply(x.contiguous(), (2, 3), eps)


def layer_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over C, H, W per sample (TF moments over axes [1, 2, 3])."""
    return _CenteredNormalize.apply(x.contiguous(), tuple(range(1, x.dim())), eps)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """tf.nn.l2_normalize over all elements: x * rsqrt(max(sum(x^2), eps))."""
    square_sum = x.square().sum()
    return x * torch.rsqrt(torch.clamp_min(square_sum, eps))


# ---------------------------------------------------------------------------------------------
# Spectral norm
# ---------------------------------------------------------------------------------------------

def _sn_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The kernel as the transpose of TF's `[-1, out]` matrix, a view without a copy: [out, N].
    Its columns are TF's rows permuted ((in, kh, kw) instead of (kh, kw, in)); the power
    iteration only sums over them and l2-normalises v, so the permutation changes nothing but
    the float summation order (and avoids copying a 134 MB discriminator kernel every call)."""
    return weight.reshape(weight.shape[0], -1)


def spectral_sigma(weight: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One power iteration from `u` ([1, out]); returns (sigma as a 0-d tensor, u_hat).

    v = l2n(u W^T), u_hat = l2n(v W) are computed without gradient (tf.stop_gradient);
    sigma = v W u_hat^T carries the gradient through W. `u` itself is not modified."""
    w_t = _sn_matrix(weight)  # TF's w^T, columns permuted
    with torch.no_grad():
        v_hat = l2_normalize(u @ w_t)
        u_hat = l2_normalize(v_hat @ w_t.t())
    sigma = (v_hat @ w_t.t()) @ u_hat.t()  # [1, 1]
    return sigma.reshape(()), u_hat


def spectral_normalize(weight: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight / sigma, u_hat): the official spectral_norm's output."""
    sigma, u_hat = spectral_sigma(weight, u)
    return weight / sigma, u_hat


class SpectralNormMixin:
    """State for a layer with a spectral-norm `u` buffer ([1, out]).

    Outside a run each call assigns u := u_hat at once (one TF sess.run per call). Inside
    `spectral_norm_run` every call computes from the stored (start-of-run) u, the first u_hat is
    remembered and committed when the run ends."""

    def _init_sn(self, out_ch: int) -> None:
        self.register_buffer("u", torch.randn(1, out_ch))
        self._sn_run_depth = 0
        self._sn_pending = None

    def _sn_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """weight / sigma (and the `u` bookkeeping)."""
        return weight / self._sn_sigma(weight)

    def _sn_sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """sigma of this call; u := u_hat now, or at the end of the enclosing run."""
        sigma, u_hat = spectral_sigma(weight, self.u)
        if self._sn_run_depth > 0:
            if self._sn_pending is None:
                self._sn_pending = u_hat
        else:
            with torch.no_grad():
                self.u.copy_(u_hat)
        return sigma

    def _sn_begin(self) -> None:
        self._sn_run_depth += 1

    def _sn_end(self, commit: bool) -> None:
        self._sn_run_depth -= 1
        if self._sn_run_depth == 0:
            pending, self._sn_pending = self._sn_pending, None
            if commit and pending is not None:
                with torch.no_grad():
                    self.u.copy_(pending)


@contextlib.contextmanager
def spectral_norm_run(*modules: nn.Module):
    """One official training run (one `sess.run`: a D step or a G step).

    Every spectral-norm layer inside `modules` computes from its start-of-run `u` for every call
    made in the block (real, fake, gradient-penalty inputs), and on normal exit `u` becomes the
    first u_hat computed in the block: one power iteration from the start value using the kernel
    as it was then. Put the optimizer step inside the block; the commit happens after it.
    On an exception nothing is committed. Runs may nest; the outermost one commits."""
    layers = []
    seen = set()
    for module in modules:
        for m in module.modules():
            if isinstance(m, SpectralNormMixin) and getattr(m, "sn", False) and id(m) not in seen:
                seen.add(id(m))
                layers.append(m)
    for layer in layers:
        layer._sn_begin()
    ok = False
    try:
        yield
        ok = True
    finally:
        for layer in layers:
            layer._sn_end(commit=ok)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class Conv(SpectralNormMixin, nn.Module):
    """Official `conv`: explicit (reflect|zero) padding by `tf_conv_padding`, then a VALID conv.

    `weight` [out, in, k, k] ~ N(0, 0.02), `bias` [out] = 0; with `sn`, buffer `u` [1, out] ~ N(0, 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, pad: int = 0,
                 pad_type: str = "zero", use_bias: bool = True, sn: bool = False):
        super().__init__()
        if pad_type not in ("zero", "reflect"):
            raise ValueError(f"pad_type must be 'zero' or 'reflect', got {pad_type!r}")
        self.in_ch, self.out_ch, self.kernel, self.stride = in_ch, out_ch, kernel, stride
        self.pad, self.pad_type, self.sn = pad, pad_type, sn
        top, bottom, left, right = tf_conv_padding(kernel, stride, pad)
        self._pad = (left, right, top, bottom)  # F.pad order: last dim first
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        nn.init.normal_(self.weight, 0.0, WEIGHT_STD)
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        else:
            self.register_parameter("bias", None)
        if sn:
            self._init_sn(out_ch)
            # the fast paths' reduced-precision copy of `weight` for the convolution (made once by
            # torch_port.fast; `weight` stays float32 for the power iteration); not saved
            self.register_buffer("weight_lowp", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight if not self.sn or self.weight_lowp is None else self.weight_lowp
        x = x.to(kernel.dtype)  # the convolution runs in its kernel's dtype
        if any(self._pad):
            mode = "reflect" if self.pad_type == "reflect" else "constant"
            x = pad(x, self._pad, mode)  # F.pad (on CUDA in deterministic mode: a deterministic backward)
        if not self.sn:
            return F.conv2d(x, self.weight, self.bias, stride=self.stride)
        # conv(x, w / sigma) computed as conv(x, w) / sigma: the same math (a convolution is
        # linear in its kernel) without dividing, and differentiating, a whole kernel per call
        # (the 2048x1024x4x4 discriminator kernel is 134 MB); float32 rounding differs by ~1 ulp
        y = F.conv2d(x, kernel, None, stride=self.stride) / self._sn_sigma(self.weight).to(kernel.dtype)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, kernel={self.kernel}, stride={self.stride}, "
                f"pad={self.pad}, pad_type={self.pad_type}, sn={self.sn}")


class Dense(nn.Module):
    """tf.layers.dense: `weight` [out, in] ~ N(0, 0.02) (TF kernel transposed), `bias` [out] = 0."""

    def __init__(self, in_features: int, out_features: int, use_bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, 0.0, WEIGHT_STD)
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.reshape(x.shape[0], -1).to(self.weight.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class InstanceNorm(nn.Module):
    """tf.contrib.layers.instance_norm(epsilon=1e-5): moments over H, W (biased), then the affine
    map TF evaluates as x * inv + (beta - mean * inv), inv = rsqrt(var + eps) * gamma. Here ATen's
    fused instance-norm kernel computes the same map (equal in float64; float32 rounding only)."""

    def __init__(self, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.gamma.dtype)  # statistics in the parameters' dtype (float32 on the fast paths)
        # fused kernel: (x - mean) * rsqrt(var + eps) * gamma + beta, the same affine map
        y = F.instance_norm(x, weight=self.gamma, bias=self.beta, eps=self.eps)
        if y.requires_grad and not x.is_contiguous():  # channels-last activations (NCHW: unchanged)
            y = _GradContiguous.apply(y)
        return y

    def extra_repr(self) -> str:
        return str(self.channels)


def _ins_layer_mix(x: torch.Tensor, rho: torch.Tensor, eps: float) -> torch.Tensor:
    """rho * x_ins + (1 - rho) * x_ln with the official moments (biased, eps inside the sqrt)."""
    x_ins = instance_normalize(x, eps)
    x_ln = layer_normalize(x, eps)
    rho = rho.view(1, -1, 1, 1)
    return rho * x_ins + (1 - rho) * x_ln


class AdaLIN(nn.Module):
    """Official `adaptive_instance_layer_norm`: `rho` [C] init 1.0 (clipped to [0, 1] by the
    optimizer); with `smoothing` the effective rho is clip(rho - 0.1, 0, 1). gamma/beta [B, C]
    come from the style source and are broadcast per sample over H, W."""

    def __init__(self, channels: int, smoothing: bool = True, eps: float = NORM_EPS):
        super().__init__()
        self.channels, self.smoothing, self.eps = channels, smoothing, eps
        self.rho = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        x = x.to(self.rho.dtype)  # statistics in the parameters' dtype (float32 on the fast paths)
        rho = self.rho
        if self.smoothing:
            rho = torch.clamp(rho - 0.1, 0.0, 1.0)
        x_hat = _ins_layer_mix(x, rho, self.eps)
        b, c = x.shape[0], x.shape[1]
        return x_hat * gamma.reshape(b, c, 1, 1) + beta.reshape(b, c, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, smoothing={self.smoothing}"


class LIN(nn.Module):
    """Official `layer_instance_norm`: `rho` init 0.0, `gamma` 1, `beta` 0, per channel."""

    def __init__(self, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.rho = nn.Parameter(torch.zeros(channels))
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.rho.dtype)  # statistics in the parameters' dtype (float32 on the fast paths)
        x_hat = _ins_layer_mix(x, self.rho, self.eps)
        return x_hat * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return str(self.channels)


class CAMLogit(SpectralNormMixin, nn.Module):
    """Official `fully_connected_with_w` used for both the GAP and the GMP branch (one shared
    kernel): `weight` [1, C] ~ N(0, 0.02), `bias` [1] = 0, with `sn` a `u` [1, 1] buffer.

    forward(feature_map) -> (gap_logit [B,1], gmp_logit [B,1], x_gap, x_gmp); the map is scaled
    by `w + bias` (bias added to every channel weight; w spectrally normalised when sn).
    TF runs the spectral norm twice per forward (once per branch) from the same u: computing it
    once is equivalent."""

    def __init__(self, channels: int, sn: bool = False):
        super().__init__()
        self.channels, self.sn = channels, sn
        self.weight = nn.Parameter(torch.empty(1, channels))
        nn.init.normal_(self.weight, 0.0, WEIGHT_STD)
        self.bias = nn.Parameter(torch.zeros(1))
        if sn:
            self._init_sn(1)

    def forward(self, x: torch.Tensor):
        x = x.to(self.weight.dtype)  # pooling and logits in the parameters' dtype
        w = self._sn_weight(self.weight) if self.sn else self.weight  # [1, C]
        gap = global_avg_pooling(x)
        gmp = global_max_pooling(x)
        gap_logit = gap @ w.t() + self.bias
        gmp_logit = gmp @ w.t() + self.bias
        channel_w = (w + self.bias).reshape(1, -1, 1, 1)
        return gap_logit, gmp_logit, x * channel_w, x * channel_w

    def extra_repr(self) -> str:
        return f"{self.channels}, sn={self.sn}"
