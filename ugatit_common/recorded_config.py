"""A TF checkpoint's inferred config (tf_checkpoint.config.infer: .meta, folder name, weights,
flags) completed and checked by the run record `ugatit-run.json` beside it
(checkpoint_policy.write_run_record), for the converter (weights_convert.py tf2torch).

Every trainer writes the record before its first checkpoint, so a run whose checkpoint lost its
`.meta` (TF's Saver writes it last) still records its image size and flags. A setting the record
holds fills in one that would be guessed (an official default) or not recorded; one that a
record of the checkpoint (.meta, folder name, weights) or a flag gives must agree with it, or
ConfigConflict names both. A damaged record is ConversionError naming it; no record: the config
as inferred (an official checkpoint)."""
from __future__ import annotations

import json
import os
from dataclasses import replace

from . import checkpoint_policy as policy
from .tf_checkpoint.config import (MODEL_KEYS, SOURCES, TRAINING_KEYS, CheckpointConfig, ConfigConflict, Setting,
                                   _describe, _fmt, _same)
from .tf_checkpoint.bundle import resolve_prefix
from .tf_checkpoint.names import ConversionError

SOURCE = "run_record"
# what the converter takes from the record: the model and the training settings
KEYS = MODEL_KEYS + TRAINING_KEYS
# and the data set's name, where nothing else records it (a folder not named as a model_dir, e.g.
# a torch2tf output): it is no part of the weights or the graph, so a renamed model_dir folder that
# names another data set keeps its name's and stops no conversion
NAME_KEYS = ("dataset",)


class _RecordedConfig(CheckpointConfig):
    """A CheckpointConfig whose settings may come from the run record: `ugatit_config_read` (the
    settings read from the checkpoint, in a converted file's metadata) lists those too."""

    def metadata(self) -> dict[str, str]:
        meta = super().metadata()
        meta["ugatit_config_read"] = json.dumps(sorted(k for k, s in self.sources.items()
                                                       if s in SOURCES + (SOURCE,)))
        return meta


def _record_of(folder: str) -> dict | None:
    try:
        return policy.read_run_record(folder, remedy="remove it to convert without it")
    except policy.RunRecordDamaged as e:
        raise ConversionError(str(e)) from None


def recorded_keys(path: str) -> tuple:
    """The settings the run record beside the TF checkpoint `path` (folder or prefix) holds, for
    config.infer's `known`: an unreadable `.meta` is then read past for them (with_run_record
    fills them in). () without a record, or when `path` names no checkpoint (its reader says why)."""
    try:
        prefix = resolve_prefix(path)
    except Exception:  # noqa: BLE001 - not resolvable: the reader itself names what is wrong
        return ()
    record = _record_of(os.path.dirname(os.path.abspath(prefix)))
    if record is None:
        return ()
    return tuple(k for k in KEYS if k in record["options"]) + ("img_size",)


def with_run_record(info: CheckpointConfig, prefix: str) -> CheckpointConfig:
    """`info` (the config of the TF checkpoint `prefix`) with what the run record of its folder
    holds; `info` itself when the folder has none."""
    folder = os.path.dirname(os.path.abspath(prefix))
    record = _record_of(folder)
    if record is None:
        return info
    path = os.path.join(folder, policy.RUN_RECORD)
    by = record["written_by"]
    detail = f"{policy.RUN_RECORD}, written" + (f" by {by}" if by else "") + \
        (" (what its input recorded)" if by.startswith(policy.CONVERTER) else " when the run started")
    values = {k: v for k, v in record["options"].items() if k in KEYS + NAME_KEYS}
    values["img_size"] = record["img_size"]
    where = f"checkpoint {info.prefix or prefix}"
    settings, unrecorded = dict(info.settings), [k for k in info.unrecorded if k not in values]
    for key in [k for k in KEYS + NAME_KEYS if k in values]:
        value, ours = values[key], Setting(values[key], SOURCE, detail)
        have = settings.get(key)
        if have is None or have.guessed:
            settings[key] = ours
        elif key in NAME_KEYS and not _same(have.value, value):
            continue  # the folder's name (a renamed model_dir) is what the official code goes by
        elif _same(have.value, value):
            settings[key] = ours if have.source == "flag" else replace(have, also=tuple(have.also) + (SOURCE,))
        elif have.source == "flag":
            raise ConfigConflict(f"{where} does not match --{key} {_fmt(have.value)}: the run record {path!r} "
                                 f"records {key}={_fmt(value)}")
        else:
            raise ConfigConflict(f"{where}: its records disagree on {key}: {_describe(have.source, key, have)}, but "
                                 f"the run record {path!r} records {key}={_fmt(value)}")
    return _RecordedConfig(info.prefix, settings, unrecorded, info.notes)
