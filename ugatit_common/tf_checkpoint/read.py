"""A whole TF U-GAT-IT checkpoint in one pass: its config (with provenance) and its tensors in the
torch naming and layout, as numpy arrays. One BundleReader is opened per call."""
from __future__ import annotations

import os

import numpy as np

from .bundle import BundleReader, CheckpointError, resolve_prefix
from .config import CheckpointConfig, infer
from .names import (POWER_NAMES, SLOT_SUFFIXES, ConversionError, checkpoint_step, selected, tf_to_torch_name,
                    to_torch_layout)


def config_of(reader: BundleReader, overrides: dict | None = None) -> CheckpointConfig:
    return infer(reader.prefix, {n: reader.shape(n) for n in reader.keys()}, overrides)


def read_config(path: str, overrides: dict | None = None) -> CheckpointConfig:
    """The inferred config of a checkpoint folder or prefix (only the index is read)."""
    with BundleReader(path) as r:
        return config_of(r, overrides)


def iter_arrays(reader: BundleReader, generators_only: bool = False, with_optimizer: bool = False):
    """(torch_name, torch-layout ndarray) one at a time."""
    for name in selected(reader.keys(), generators_only, with_optimizer):
        yield tf_to_torch_name(name), to_torch_layout(name, reader.read(name))


def read_arrays(path: str, generators_only: bool = False, with_optimizer: bool = False,
                overrides: dict | None = None) -> tuple[CheckpointConfig, dict]:
    """(inferred config, {torch name: ndarray}); the config is inferred before any tensor is read,
    so a contradicting flag fails fast."""
    with BundleReader(path) as r:
        info = config_of(r, overrides)
        return info, dict(iter_arrays(r, generators_only, with_optimizer))


def read_training_arrays(path: str, overrides: dict | None = None) -> dict:
    """Everything a run needs to continue an official TF run, as numpy arrays: {"info", "config",
    "model", "G_slots", "D_slots", "G_powers", "D_powers", "step"}."""
    with BundleReader(path) as r:
        info = config_of(r, overrides)
        out = {"info": info, "config": info.config, "model": {}, "G_slots": {}, "D_slots": {},
               "step": checkpoint_step(r.prefix)}
        powers = {}
        for name, array in iter_arrays(r, with_optimizer=True):
            array = np.array(array)  # writable, owned
            if name.startswith("optimizer."):
                powers[name] = array
            elif name.endswith(SLOT_SUFFIXES):
                out["G_slots" if name.startswith("generator") else "D_slots"][name] = array
            else:
                out["model"][name] = array
        if len(powers) != len(POWER_NAMES):
            raise ConversionError(f"{r.prefix}: no Adam state (beta1_power, beta1_power_1, ...): "
                                  f"not a training checkpoint")
    out["G_powers"] = (powers["optimizer.G.beta1_power"], powers["optimizer.G.beta2_power"])
    out["D_powers"] = (powers["optimizer.D.beta1_power"], powers["optimizer.D.beta2_power"])
    return out


def is_tf_checkpoint_folder(folder: str) -> bool:
    """A folder with TF's `checkpoint` state file naming an existing bundle."""
    try:
        resolve_prefix(folder)
        return os.path.isfile(os.path.join(folder, "checkpoint"))
    except CheckpointError:
        return False
