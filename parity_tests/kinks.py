"""Branch-matched float64 gradients: the float64 truth on the same side of every kink as a
float32 run.

The loss is piecewise smooth: relu, leaky_relu, |x| (L1) and the global max pooling switch
branch at a point. An element whose float64 pre-activation lies within float32 rounding of
the switch (|x| ~ 1e-6 of the layer's scale; a few per run among ~1e6 elements) may take the
other branch in a float32 run, and its whole upstream gradient then enters or leaves the sum:
one such flip moves a generator's gradients by up to a few % of a tensor's largest entry (the
4-5% at iteration 3 (G) of the golden trajectory is two relu flips in the encoder's resblock_1 of the
cycle passes). That is no rounding error of the implementation: the gradient is discontinuous
there, and either side is the exact gradient of a point within float32 rounding of the state.

`KinkBranches` records, in the float32 run, which side each kink call took (in call order),
then replays those decisions in a float64 run of the same code: that run is exact math on the
float32 run's branches, so what remains between the two is float32 rounding only.

    kinks = KinkBranches()
    with kinks:                      # float32 forward (+ backward): decisions recorded
        ...
    with kinks.replay():             # float64, same calls in the same order
        ...
    kinks.flips                      # elements where float64 alone would take the other side
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_LRELU = {F.leaky_relu}
_ABS = {torch.abs, torch.Tensor.abs}
_AMAX = {torch.amax, torch.Tensor.amax}


def _amax_args(args, kwargs):
    x = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else ())
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    return x, dim, keepdim


class KinkBranches(TorchFunctionMode):
    """Record the branch of every relu / leaky_relu / abs / amax call; `replay()` forces them."""

    def __init__(self):
        super().__init__()
        self.decisions: list[tuple[str, torch.Tensor]] = []
        self._replaying = False
        self._pos = 0
        self.flips = 0

    def replay(self):
        self._replaying, self._pos, self.flips = True, 0, 0
        return self

    def __exit__(self, *exc):
        if self._replaying and exc[0] is None and self._pos != len(self.decisions):
            raise RuntimeError(f"replay made {self._pos} kink calls, the recorded run {len(self.decisions)}")
        return super().__exit__(*exc)

    def _decide(self, kind: str, x: torch.Tensor, dim=None) -> torch.Tensor:
        x = x.detach()
        if kind == "abs":
            return torch.sign(x)
        if kind == "amax":
            return x == x.amax(dim=dim, keepdim=True)
        return x > 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _RELU:
            kind = "relu"
        elif func in _LRELU:
            kind = "lrelu"
        elif func in _ABS:
            kind = "abs"
        elif func in _AMAX:
            kind = "amax"
        else:
            return func(*args, **kwargs)
        x = args[0]
        dim = _amax_args(args, kwargs)[1] if kind == "amax" else None
        if not self._replaying:
            self.decisions.append((kind, self._decide(kind, x, dim)))
            return func(*args, **kwargs)
        rec_kind, mask = self.decisions[self._pos]
        self._pos += 1
        if rec_kind != kind or mask.shape != x.shape:
            raise RuntimeError(f"kink call {self._pos - 1}: replayed {kind} {tuple(x.shape)}, recorded {rec_kind}")
        self.flips += int((self._decide(kind, x, dim) != mask).sum())
        if kind == "relu":
            return x * mask.to(x.dtype)
        if kind == "lrelu":
            slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            return torch.where(mask, x, x * slope)
        if kind == "abs":
            return x * mask.to(x.dtype)
        # amax: the mean of the elements that were maximal in the recorded run (ties split the
        # gradient evenly, as amax and TF's reduce_max do)
        _, dim, keepdim = _amax_args(args, kwargs)
        w = mask.to(x.dtype)
        out = (x * w).sum(dim=dim, keepdim=True) / w.sum(dim=dim, keepdim=True)
        return out if keepdim else out.squeeze(dim)
