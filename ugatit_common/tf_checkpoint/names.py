"""The naming rule that joins the two frameworks, and the two layout transposes.

A TF variable path with `/` -> `.`, the `conv2d/` or `dense/` component of tf.layers variables
dropped, and `kernel` -> `weight` is the torch state-dict key (conv kernels HWIO -> OIHW,
dense/CAM kernels [in, out] -> [out, in]). Spectral-norm `u`, biases and norm `gamma`/`beta`/
`rho` keep their names and layouts. Adam slots `<var>/Adam|Adam_1` map to
`<torch name>/Adam|Adam_1`; the G optimizer's powers are `beta1_power`/`beta2_power`, D's
`beta1_power_1`/`beta2_power_1` (the G optimizer is built first in the official graph).
"""
from __future__ import annotations

import re

import numpy as np

# TF name <-> torch name for the optimizer's power accumulators.
POWER_NAMES = {"beta1_power": "optimizer.G.beta1_power", "beta2_power": "optimizer.G.beta2_power",
               "beta1_power_1": "optimizer.D.beta1_power", "beta2_power_1": "optimizer.D.beta2_power"}
SLOT_SUFFIXES = ("/Adam_1", "/Adam")
NETWORKS = ("generator_A", "generator_B", "discriminator_A", "discriminator_B")


class ConversionError(Exception):
    """A checkpoint that is not a U-GAT-IT one, or does not match what was asked."""


def split_slot(name: str) -> tuple[str, str]:
    """(`generator_B/conv/conv2d/kernel`, `/Adam`) for `generator_B/conv/conv2d/kernel/Adam`."""
    for suffix in SLOT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def tf_to_torch_name(tf_name: str) -> str:
    """`generator_B/conv_0/conv2d/kernel` -> `generator_B.conv_0.weight` (slots keep their suffix)."""
    if tf_name in POWER_NAMES:
        return POWER_NAMES[tf_name]
    base, suffix = split_slot(tf_name)
    parts = base.split("/")
    if parts[0] not in NETWORKS:
        raise ConversionError(f"variable {tf_name!r} is not part of a U-GAT-IT network "
                              f"(expected a name under {', '.join(NETWORKS)})")
    if len(parts) >= 2 and parts[-2] in ("conv2d", "dense"):
        del parts[-2]
    if parts[-1] == "kernel":
        parts[-1] = "weight"
    return ".".join(parts) + suffix


def _is_conv_scope(parts: list[str]) -> bool:
    return "MLP" not in parts


def torch_to_tf_name(torch_name: str, sn_scopes: set[str]) -> str:
    """Inverse rule; `sn_scopes` holds the module paths that carry a `u` buffer (spectral-norm
    convs create their kernel directly under the scope, tf.layers ones under conv2d/ or dense/)."""
    inverse = {v: k for k, v in POWER_NAMES.items()}
    if torch_name in inverse:
        return inverse[torch_name]
    base, suffix = split_slot(torch_name)
    scope, _, leaf = base.rpartition(".")
    parts = scope.split(".")
    if leaf in ("weight", "bias") and scope not in sn_scopes and parts[-1] != "CAM_logit":
        parts.append("conv2d" if _is_conv_scope(parts) else "dense")
    if leaf == "weight":
        leaf = "kernel"
    return "/".join(parts + [leaf]) + suffix


def tf_names_of(torch_names) -> dict[str, str]:
    """{torch name: official TF name} for the keys of one port state (its `u` buffers say which
    scopes are spectral-norm convs)."""
    torch_names = list(torch_names)
    sn_scopes = {k[: -len(".u")] for k in torch_names if k.endswith(".u")}
    return {k: torch_to_tf_name(k, sn_scopes) for k in torch_names}


def torch_layout_shape(tf_name: str, shape: tuple) -> tuple:
    base, _ = split_slot(tf_name)
    if base.endswith("kernel") and len(shape) in (2, 4):
        return tuple(shape[i] for i in ((3, 2, 0, 1) if len(shape) == 4 else (1, 0)))
    return tuple(shape)


def torch_layout_view(tf_name: str, array: np.ndarray) -> np.ndarray:
    """The torch layout as a (possibly non-contiguous) view: no copy of a 1 GiB kernel."""
    base, _ = split_slot(tf_name)
    if base.endswith("kernel"):
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if array.ndim == 2:
            return array.T
    return array


def to_torch_layout(tf_name: str, array: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW for conv kernels, [in, out] -> [out, in] for dense/CAM kernels."""
    view = torch_layout_view(tf_name, array)
    # (np.ascontiguousarray would turn a 0-d scalar such as beta1_power into shape [1])
    return view if view is array else np.ascontiguousarray(view)


def to_tf_layout(torch_name: str, array: np.ndarray) -> np.ndarray:
    base, _ = split_slot(torch_name)
    if base.endswith("weight"):
        if array.ndim == 4:
            return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        if array.ndim == 2:
            return np.ascontiguousarray(array.T)
    return array


def selected(names, generators_only: bool = False, with_optimizer: bool = False):
    """The TF names a conversion carries: network variables, plus Adam slots and powers on request."""
    for name in names:
        base, suffix = split_slot(name)
        if name in POWER_NAMES or suffix:
            if not with_optimizer or (generators_only and not base.startswith("generator")):
                continue
        elif name.startswith("discriminator") and generators_only:
            continue
        elif not name.startswith(NETWORKS):
            continue  # e.g. _CHECKPOINTABLE_OBJECT_GRAPH, global_step
        yield name


def checkpoint_step(prefix: str) -> int:
    """The step counter N of a `<name>.model-N` prefix (0 when the name has none)."""
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else 0
