"""A whole TF U-GAT-IT checkpoint in one pass: its config (with provenance) and its tensors in the
torch naming and layout, as numpy arrays. One BundleReader is opened per call."""
from __future__ import annotations

import os

import numpy as np

from .bundle import BundleReader, CheckpointError, resolve_prefix
from .config import CheckpointConfig, infer
from .names import (POWER_NAMES, SLOT_SUFFIXES, ConversionError, checkpoint_step, selected, split_slot,
                    tf_to_torch_name, to_torch_layout)


def config_of(reader: BundleReader, overrides: dict | None = None, known: tuple = ()) -> CheckpointConfig:
    """The inferred config of the open checkpoint (`known`: see config.infer)."""
    return infer(reader.prefix, {n: reader.shape(n) for n in reader.keys()}, overrides, known=known)


def read_config(path: str, overrides: dict | None = None) -> CheckpointConfig:
    """The inferred config of a checkpoint folder or prefix (only the index is read)."""
    with BundleReader(path) as r:
        return config_of(r, overrides)


def iter_arrays(reader: BundleReader, generators_only: bool = False, with_optimizer: bool = False, names=None):
    """(torch_name, torch-layout ndarray) one at a time (`names`: these TF names, else every selected one)."""
    for name in selected(reader.keys(), generators_only, with_optimizer) if names is None else names:
        yield tf_to_torch_name(name), to_torch_layout(name, reader.read(name))


def left_out_note(extra: list[str]) -> str:
    """The one line that names the variables a reader leaves out (`extra`, TF names)."""
    return (f"left out {len(extra)} variable(s) the official graph of this config has not (a modified fork's, "
            f"an EMA's or another optimizer's; TF's Saver restores past them too): " + ", ".join(extra[:5])
            + (" ..." if len(extra) > 5 else ""))


def _model_variables(reader: BundleReader, info: CheckpointConfig, generators_only: bool, with_optimizer: bool,
                     model_names) -> list[str]:
    """The selected TF names, less those whose torch name (its Adam slot's variable) is not in
    `model_names(config)` - the state-dict keys of the model the checkpoint describes - when given:
    an official checkpoint with extra variables (an EMA's `<var>/ExponentialMovingAverage`, a fork's
    layer) restores in TF, whose Saver restores the graph's variables only, so it loads here too; the
    left-out names go into `info.notes` (said by `info.announce()`)."""
    names = list(selected(reader.keys(), generators_only, with_optimizer))
    if model_names is None:
        return names
    want = set(model_names(info.config))
    extra = [n for n in names if n not in POWER_NAMES and split_slot(tf_to_torch_name(n))[0] not in want]
    if extra:
        info.notes.append(left_out_note(extra))
    return [n for n in names if n not in extra]


def read_arrays(path: str, generators_only: bool = False, with_optimizer: bool = False,
                overrides: dict | None = None, model_names=None, known: tuple = ()) -> tuple[CheckpointConfig, dict]:
    """(inferred config, {torch name: ndarray}); the config is inferred before any tensor is read,
    so a contradicting flag fails fast. `model_names`: see _model_variables; `known`: config.infer."""
    with BundleReader(path) as r:
        info = config_of(r, overrides, known)
        names = _model_variables(r, info, generators_only, with_optimizer, model_names)
        return info, dict(iter_arrays(r, names=names))


def read_training_arrays(path: str, overrides: dict | None = None, model_names=None, known: tuple = ()) -> dict:
    """Everything a run needs to continue an official TF run, as numpy arrays: {"info", "config",
    "model", "G_slots", "D_slots", "G_powers", "D_powers", "step"}. `model_names`: see
    _model_variables; `known`: config.infer."""
    with BundleReader(path) as r:
        info = config_of(r, overrides, known)
        out = {"info": info, "config": info.config, "model": {}, "G_slots": {}, "D_slots": {},
               "step": checkpoint_step(r.prefix)}
        powers = {}
        names = _model_variables(r, info, False, True, model_names)
        for name, array in iter_arrays(r, names=names):
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
