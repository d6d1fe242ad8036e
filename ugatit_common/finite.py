"""Refusing non-finite weights: a checkpoint with a NaN or an infinity is never used (it would
translate to black images or train on garbage). Framework-free: any array with numpy's
`isfinite` semantics, a Python float, or a torch tensor (checked on its own device, one value
read back).

Two rules, one per kind of value:
- weights and training state (`refuse_non_finite`, `named_numbers`): every tensor a command loads
  for use - the networks it runs, and for a resumed training run every number it continues with
  (Adam's slots and powers, its lr / betas / eps, an fp16 run's loss scale) - is finite, else
  `NonFiniteWeights` (exit 2) naming the first bad one and how many of its values;
- outputs (`refuse_non_finite_output`): finite weights can still overflow in the forward pass
  (weights near float32's limit, or a reduced-precision fast path: float16 ends at 65504), and a
  NaN pixel is written black. A picture (or an exported model's verification output) holding
  NaN / inf is never written: `NonFiniteOutput` (exit 2) names what, how many values, and the
  precision when it is a fast path's.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .options import OptionError


class NonFiniteWeights(OptionError):
    """A checkpoint holds NaN or infinite values (exit 2, naming the first tensor)."""


class NonFiniteOutput(OptionError):
    """Finite weights whose output holds NaN or inf (exit 2): nothing is written from it."""


EXIT_NON_FINITE = 3


class NonFiniteLoss(RuntimeError):
    """A loss, or a weight or Adam slot, became NaN / inf during training (tf_reference, the port,
    Morph): the run stops with exit 3, its newest checkpoint the last finite one."""


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


def _size(value) -> int:
    import numpy as np
    return int(value.numel()) if hasattr(value, "numel") else int(np.asarray(value).size)


def first_non_finite(tensors: Mapping | Iterable) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first tensor holding a NaN/inf, in the given order;
    None when every value is finite."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, value in items:
        n = _count_non_finite(value)
        if n:
            return str(name), n, _size(value)
    return None


def refuse_non_finite(tensors: Mapping | Iterable, source: str) -> None:
    """Raise NonFiniteWeights naming `source`, the first bad tensor and how many of its values are
    NaN/inf; return quietly when all are finite."""
    bad = first_non_finite(tensors)
    if bad:
        name, n, size = bad
        raise NonFiniteWeights(f"{source}: tensor {name!r} holds {n} non-finite value(s) (NaN or inf) of "
                               f"{size}; the checkpoint cannot be used")


def named_numbers(tree, prefix: str = ""):
    """(dotted name, value) of every tensor, array and Python float in nested dicts / lists /
    tuples (e.g. a training state: `G_optim.m.<name>`, `G_optim.lr`, `loss_scale.G.scale`).
    Floats count: a NaN learning rate or eps, or an infinite loss scale, poisons the first step
    as surely as a NaN slot does. Integers and booleans are skipped (they cannot be NaN)."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from named_numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from named_numbers(v, f"{prefix}.{i}" if prefix else str(i))
    elif isinstance(tree, float) or hasattr(tree, "dtype"):
        yield prefix, tree


def refuse_non_finite_output(values, what: str, precision: str | None = None, spelled: str | None = None) -> None:
    """Raise NonFiniteOutput when `values` (an output about to be written: a picture in [-1, 1],
    a model's verification output; array or tensor) holds NaN / inf. `what` names it (the input
    file and direction); `precision`: the fast path that computed it ("fp16", "bf16"...), named
    when it is a reduced one, as the command line spells it (`spelled`, default `--precision P`)."""
    n = _count_non_finite(values)
    if not n:
        return
    why = "the checkpoint's weights are finite but overflow in the forward pass"
    if precision in ("fp16", "bf16"):
        limit = "float16 ends at 65504" if precision == "fp16" else "bfloat16"
        why += f" with {spelled or '--precision ' + precision} ({limit}; the float32 path may not overflow)"
    raise NonFiniteOutput(f"{what} holds {n} non-finite value(s) (NaN or inf) of {_size(values)}: {why}; "
                          f"nothing is written from it")
