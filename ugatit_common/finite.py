"""Refusing non-finite weights: a checkpoint with a NaN or an infinity is never used (it would
translate to black images or train on garbage). Framework-free: any array with numpy's
`isfinite` semantics, or a torch tensor (checked on its own device, one value read back)."""
from __future__ import annotations

from typing import Iterable, Mapping

from .options import OptionError


class NonFiniteWeights(OptionError):
    """A checkpoint holds NaN or infinite values (exit 2, naming the first tensor)."""


def _count_non_finite(value) -> int:
    if hasattr(value, "isfinite") and hasattr(value, "is_floating_point"):  # torch.Tensor
        if not (value.is_floating_point() or value.is_complex()):
            return 0
        return int((~value.isfinite()).sum())
    import numpy as np
    a = np.asarray(value)
    if a.dtype.kind not in "fc":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def first_non_finite(tensors: Mapping | Iterable) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first tensor holding a NaN/inf, in the given order;
    None when every value is finite."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, value in items:
        n = _count_non_finite(value)
        if n:
            import numpy as np
            size = int(value.numel()) if hasattr(value, "numel") else int(np.asarray(value).size)
            return str(name), n, size
    return None


def refuse_non_finite(tensors: Mapping | Iterable, source: str) -> None:
    """Raise NonFiniteWeights naming `source`, the first bad tensor and how many of its values are
    NaN/inf; return quietly when all are finite."""
    bad = first_non_finite(tensors)
    if bad:
        name, n, size = bad
        raise NonFiniteWeights(f"{source}: tensor {name!r} holds {n} non-finite value(s) (NaN or inf) of "
                               f"{size}; the checkpoint cannot be used")
