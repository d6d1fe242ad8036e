"""The configuration of a TF U-GAT-IT checkpoint, read from everything the checkpoint records.

Sources, in order (the first that records a setting gives it; every later one that records it
too must agree, or the checkpoint is inconsistent and that is an error naming both):

1. `meta`: the `<prefix>.meta` MetaGraphDef that tf.train.Saver writes beside the checkpoint,
   parsed without TensorFlow (`metagraph.py`): smoothing, img_size, and in train graphs
   gan_type and the four loss weights.
2. `model_dir`: the official folder name
   `{model_name}_{dataset}_{gan_type}_{n_res}resblock_{n_dis}dis_{n_critic}_{adv}_{cycle}_{identity}_{cam}{_sn}{_smoothing}`:
   light, dataset, gan_type, n_res, n_dis, n_critic, the loss weights, sn, smoothing.
3. `weights`: the variables' names and shapes: light, ch, n_res, img_ch, n_dis and sn (with
   discriminators), img_size (full models only: the MLP's input is (img_size/4)^2 * ch*4).

Explicit flags (`overrides`) come on top: a flag equal to a recorded value is fine, a flag that
contradicts one is an error naming both values, a flag for an unrecorded setting is used as
given (source `flag`). A model setting still unknown gets the official default and is marked
guessed (source `default`); unrecorded training settings (gan_type, n_critic, loss weights) are
listed as not recorded.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, replace

from ugatit_common.options import DEFAULTS, GAN_TYPES

from . import metagraph
from .names import ConversionError

MODEL_KEYS = ("light", "ch", "n_res", "n_dis", "sn", "smoothing", "img_size", "img_ch")
TRAINING_KEYS = ("gan_type", "n_critic", "adv_weight", "cycle_weight", "identity_weight", "cam_weight")
SOURCES = ("meta", "model_dir", "weights")
# what each source can record (so a guess names only the sources that could have told)
_CAN_RECORD = {"meta": {"smoothing", "img_size", "gan_type", "adv_weight", "cycle_weight", "identity_weight",
                        "cam_weight"},
               "model_dir": {"light", "dataset", "gan_type", "n_res", "n_dis", "n_critic", "adv_weight",
                             "cycle_weight", "identity_weight", "cam_weight", "sn", "smoothing"}}
_SOURCE_NAMES = {"meta": "the .meta graph records", "model_dir": "the model_dir folder name records",
                 "weights": "the weights record"}


class ConfigConflict(ConversionError):
    """A flag contradicts the checkpoint, or two of the checkpoint's own records disagree."""


class UnreadableMeta(ConversionError):
    """The checkpoint's .meta cannot be parsed (e.g. a truncated download)."""


@dataclass(frozen=True)
class Setting:
    value: object
    source: str  # "meta" | "model_dir" | "weights" | "flag" | "default"
    detail: str
    also: tuple = ()  # later sources that record the same value

    @property
    def origin(self) -> str:
        """`meta`, `model_dir+weights`, `flag`, `guessed`, ..."""
        return "guessed" if self.guessed else "+".join((self.source,) + tuple(self.also))

    @property
    def guessed(self) -> bool:
        return self.source == "default"


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


# -- the weights ---------------------------------------------------------------------------------

def _what_it_holds(shapes: dict[str, tuple]) -> str:
    """What a checkpoint that is no U-GAT-IT one holds instead, for its error: a TF2 object-based
    checkpoint (tf.train.Checkpoint, Keras save_weights) names its variables by object path."""
    names = sorted(n for n in shapes if n != "_CHECKPOINTABLE_OBJECT_GRAPH")
    kind = (" (a TensorFlow 2 object-based checkpoint, tf.train.Checkpoint or Keras save_weights: its variables "
            "are named by object path, not by the official graph's scopes that tf.train.Saver writes)"
            if any(n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in names) else "")
    return f"; it holds {len(names)} variable(s), e.g. {', '.join(names[:3])}{kind}" if names else "; it holds none"


def from_weights(shapes: dict[str, tuple], where: str = "checkpoint") -> dict[str, Setting]:
    """light/full, ch, n_res, img_ch (and img_size for full models; n_dis, sn with discriminators)."""
    gen = next((g for g in ("generator_B", "generator_A") if f"{g}/conv/conv2d/kernel" in shapes), None)
    if gen is None:
        raise ConversionError(f"not a U-GAT-IT checkpoint: {where} has no generator_B/conv/conv2d/kernel or "
                              f"generator_A/conv/conv2d/kernel variable{_what_it_holds(shapes)}")
    k_name = f"{gen}/conv/conv2d/kernel"
    kernel = tuple(shapes[k_name])
    mlp_name = f"{gen}/MLP/linear_0/dense/kernel"
    if mlp_name not in shapes or len(kernel) != 4:
        raise ConversionError(f"not a U-GAT-IT checkpoint: {where}: {mlp_name} missing or {k_name} not 4-D")
    ch = int(kernel[-1])
    n_res = len({m.group(1) for n in shapes for m in [re.match(rf"{gen}/resblock_(\d+)/", n)] if m})
    mlp_in, width = shapes[mlp_name]
    light = mlp_in == width
    out = {"light": Setting(bool(light), "weights", f"{mlp_name} is {list(shapes[mlp_name])} "
                                                    f"({'square: the light MLP' if light else 'the full MLP on the flattened map'})"),
           "ch": Setting(ch, "weights", f"{k_name} is {list(kernel)}"),
           "n_res": Setting(n_res, "weights", f"{gen}/resblock_0..{n_res - 1}"),
           "img_ch": Setting(int(kernel[2]), "weights", f"{k_name} is {list(kernel)}")}
    if not light:
        side = math.isqrt(mlp_in // (ch * 4))
        if side * side * ch * 4 != mlp_in:
            raise ConversionError(f"{mlp_name} has {mlp_in} inputs, not (img_size/4)^2 * ch*4")
        out["img_size"] = Setting(side * 4, "weights", f"{mlp_name} has {mlp_in} = ({side * 4}/4)^2 * {ch * 4} inputs")
    dis = next((d for d in ("discriminator_A", "discriminator_B") if f"{d}/global/conv_0/kernel" in shapes
                or f"{d}/global/conv_0/conv2d/kernel" in shapes), None)
    if dis is not None:
        sn = f"{dis}/global/conv_0/u" in shapes
        out["sn"] = Setting(sn, "weights", f"{dis}/global/conv_0/u {'present' if sn else 'absent'}")
        n_global = len({m.group(1) for n in shapes for m in [re.match(rf"{dis}/global/conv_(\d+)/", n)] if m})
        out["n_dis"] = Setting(n_global + 1, "weights", f"{dis}/global/conv_0..{n_global - 1} (n_dis - 1 layers)")
    return out


# -- the folder name -------------------------------------------------------------------------------

_MODEL_DIR = re.compile(
    r"^(?P<dataset>.+)_(?P<gan_type>" + "|".join(re.escape(g) for g in GAN_TYPES) + r")_(?P<n_res>\d+)resblock_"
    r"(?P<n_dis>\d+)dis_(?P<n_critic>\d+)_(?P<adv_weight>[^_]+)_(?P<cycle_weight>[^_]+)_"
    r"(?P<identity_weight>[^_]+)_(?P<cam_weight>[^_]+?)(?P<sn>_sn)?(?P<smoothing>_smoothing)?$")


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        v = float(text)  # ValueError: not a model_dir
        if not math.isfinite(v):
            raise ValueError(text) from None
        return v


def parse_model_dir(name: str, light: bool | None = None) -> dict[str, object] | None:
    """The settings an official `model_dir` folder name records, or None when `name` is not one.
    `UGATIT_light_x_...` is a light model on data set `x` or a full one on `light_x`: `light`
    (from the weights) decides; without it the light reading wins."""
    readings = []
    for model, is_light in (("UGATIT_light_", True), ("UGATIT_", False)):
        if not name.startswith(model):
            continue
        m = _MODEL_DIR.match(name[len(model):])
        if not m:
            continue
        try:
            values = {k: _number(m.group(k)) for k in ("adv_weight", "cycle_weight", "identity_weight", "cam_weight")}
        except ValueError:
            continue
        values.update(light=is_light, dataset=m.group("dataset"), gan_type=m.group("gan_type"),
                      n_res=int(m.group("n_res")), n_dis=int(m.group("n_dis")), n_critic=int(m.group("n_critic")),
                      sn=bool(m.group("sn")), smoothing=bool(m.group("smoothing")))
        readings.append(values)
    if not readings:
        return None
    if light is not None:
        for r in readings:
            if r["light"] == light:
                return r
    return readings[0]


def from_model_dir(prefix: str, light: bool | None) -> tuple[dict[str, Setting], str | None]:
    """({key: Setting}, why-not) from the folder that holds the checkpoint."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(prefix)))
    parsed = parse_model_dir(folder, light)
    if parsed is None:
        return {}, f"the folder name {folder!r} is not an official model_dir"
    detail = f"folder {folder!r}"
    return {k: Setting(v, "model_dir", detail) for k, v in parsed.items()}, None


# -- the graph -----------------------------------------------------------------------------------

def from_meta(prefix: str, shapes: dict[str, tuple] | None) -> tuple[dict[str, Setting], str | None]:
    """({key: Setting}, why-not) from `<prefix>.meta`. A .meta whose variables are not the
    checkpoint's is an error (it belongs to another model)."""
    path = metagraph.find_meta(prefix)
    name = os.path.basename(prefix) + ".meta"
    if path is None:
        return {}, f"no {name} beside the checkpoint"
    try:
        graph = metagraph.read_meta_graph(path)
        found = metagraph.recognise(graph)
    except metagraph.MetaGraphError as e:
        raise UnreadableMeta(str(e)) from e
    if shapes:
        variables = graph.variables()
        common = [n for n in shapes if n in variables]
        bad = [f"{n}: .meta {list(variables[n])} vs checkpoint {list(shapes[n])}" for n in common
               if tuple(variables[n]) != tuple(shapes[n])]
        nets = [n for n in variables if n.startswith(("generator_", "discriminator_"))]
        if bad or (nets and not common):
            what = "; ".join(bad[:3]) if bad else f"none of its {len(nets)} network variables is in the checkpoint"
            raise ConfigConflict(f"{path}: this MetaGraphDef is not the graph of the checkpoint beside it ({what})")
    out = {k: Setting(f.value, "meta", f"{name}: {f.detail}") for k, f in found.items()}
    if shapes is not None and not any(n.startswith("discriminator") for n in shapes):
        out.update(_discriminators_of_graph(graph.variables(), name))
    missing = "" if out else f"{name} records none of the settings (no U-GAT-IT generator graph in it)"
    return out, missing or None


def _discriminators_of_graph(variables: dict[str, tuple], name: str) -> dict[str, Setting]:
    """n_dis and sn from the discriminator variables of a .meta's graph, for a checkpoint without
    discriminators: generators alone, beside the train graph of their config (torch2tf writes one
    for weights that record both), whose discriminators record them as a full checkpoint's do."""
    try:
        found = from_weights(variables, name)
    except ConversionError:  # no generator graph in it: nothing to read
        return {}
    return {k: Setting(found[k].value, "meta", f"{name}: variable {found[k].detail}") for k in ("n_dis", "sn")
            if k in found}


# -- the result --------------------------------------------------------------------------------------

_DEFAULT_REASONS = {
    "img_size": "a light model's weights do not fix the image size",
    "smoothing": "AdaLIN smoothing leaves no trace in the weights",
    "n_dis": "the checkpoint has no discriminator",
    "sn": "the checkpoint has no discriminator",
}


class CheckpointConfig:
    """The inferred config (`.config`) with each setting's provenance (`.settings`)."""

    def __init__(self, prefix: str | None, settings: dict[str, Setting], unrecorded: list[str], notes=()):
        self.prefix = prefix
        self.settings = settings
        self.unrecorded = unrecorded
        self.notes = list(notes)  # records read past (an unreadable .meta), said with the guesses

    @property
    def config(self) -> dict:
        return {k: s.value for k, s in self.settings.items()}

    @property
    def sources(self) -> dict[str, str]:
        return {k: s.source for k, s in self.settings.items()}

    @property
    def guessed(self) -> dict[str, Setting]:
        return {k: s for k, s in self.settings.items() if s.guessed}

    def guess_lines(self) -> list[str]:
        """One line per guessed setting, and one for the training settings nothing recorded."""
        where = f"{self.prefix}: " if self.prefix else ""
        lines = [f"{where}guessed {k}={_fmt(s.value)} ({s.detail}; --{k} sets it)" for k, s in self.guessed.items()]
        lines += [where + n for n in self.notes]
        if self.unrecorded:
            lines.append(f"{where}not recorded (training settings; a resumed run takes them from its flags): "
                         + ", ".join(self.unrecorded))
        return lines

    def describe(self) -> list[str]:
        """`key = value  [source: detail]` for every setting."""
        return [f"{k} = {_fmt(s.value)}  [{s.origin}: {s.detail}]" for k, s in self.settings.items()]

    def provenance(self) -> dict:
        """JSON-able: {"sources": {key: source}, "guessed": {key: value}, "details": {key: detail},
        "not_recorded": [keys]}."""
        return {"sources": self.sources, "guessed": {k: s.value for k, s in self.guessed.items()},
                "details": {k: s.detail for k, s in self.settings.items()}, "not_recorded": list(self.unrecorded)}

    def metadata(self) -> dict[str, str]:
        """What a converted file stores beside its weights (safetensors metadata strings)."""
        p = self.provenance()
        return {"ugatit_config": json.dumps(self.config),
                "ugatit_config_sources": json.dumps(p["sources"]),
                "ugatit_config_read": json.dumps(sorted(k for k, s in p["sources"].items()
                                                        if s in SOURCES)),
                "ugatit_config_guessed": json.dumps(p["guessed"]),
                "ugatit_config_not_recorded": json.dumps(p["not_recorded"])}

    def announce(self, stream=None) -> None:
        """Print the guesses (if any) on stderr: a guessed setting is never silent."""
        stream = sys.stderr if stream is None else stream
        for line in self.guess_lines():
            print("note: " + line, file=stream)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _describe(src: str, key: str, s: Setting) -> str:
    return f"{_SOURCE_NAMES.get(src, src)} {key}={_fmt(s.value)} ({s.detail})"


def infer(prefix: str | None, shapes: dict[str, tuple], overrides: dict | None = None, *,
          use_meta: bool = True, use_model_dir: bool = True, known: tuple = ()) -> CheckpointConfig:
    """The checkpoint's config from its .meta, its folder name and its weights (in that order),
    with `overrides` (explicit flags; None values ignored) on top. Raises ConfigConflict when a
    flag contradicts a recorded value or two records disagree; ConversionError when the weights
    are not a U-GAT-IT model. `known`: settings another record beside the checkpoint holds (the
    run record, added by the caller: recorded_config), so an unreadable .meta is read past for them."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    where = f"checkpoint {prefix}" if prefix else "checkpoint"
    records: dict[str, dict[str, Setting]] = {"weights": from_weights(shapes, where)}
    why_not, notes = {}, []
    if use_model_dir and prefix:
        records["model_dir"], why_not["model_dir"] = from_model_dir(prefix, records["weights"]["light"].value)
    else:
        records["model_dir"], why_not["model_dir"] = {}, "no folder name read"
    if use_meta and prefix:
        try:
            records["meta"], why_not["meta"] = from_meta(prefix, shapes)
        except UnreadableMeta as e:
            # read past only when what it would record of the model is known otherwise: the flags
            # (as the message says), the folder name or the weights; the training settings it holds
            # are then listed as not recorded
            needed = [k for k in MODEL_KEYS if k in _CAN_RECORD["meta"] and k not in overrides
                      and k not in records["model_dir"] and k not in records["weights"] and k not in known]
            if needed:
                raise ConversionError(f"{e} (remove or fix the .meta file, or give "
                                      f"{' and '.join('--' + k for k in needed)})") from e
            records["meta"], why_not["meta"] = {}, f"{e}: read past"
            notes.append(f"{e}: read past (the model's settings it records are given or recorded otherwise)")
    else:
        records["meta"], why_not["meta"] = {}, "no .meta graph read"

    keys = list(MODEL_KEYS) + ["dataset"] + list(TRAINING_KEYS)
    keys += [k for k in overrides if k not in keys]
    settings: dict[str, Setting] = {}
    unrecorded = []
    for key in keys:
        recorded = [(src, records[src][key]) for src in SOURCES if key in records[src]]
        if recorded:
            first_src, first = recorded[0]
            for src, other in recorded[1:]:
                if not _same(other.value, first.value):
                    raise ConfigConflict(f"{where}: its records disagree on {key}: {_describe(first_src, key, first)}, "
                                         f"but {_describe(src, key, other)}")
        if recorded:
            recorded[0] = (recorded[0][0], replace(recorded[0][1], also=tuple(src for src, _ in recorded[1:])))
        if key in overrides:
            flag = overrides[key]
            if recorded and not _same(flag, recorded[0][1].value):
                src, rec = recorded[0]
                raise ConfigConflict(f"{where} does not match --{key} {_fmt(flag)}: {_describe(src, key, rec)}")
            settings[key] = recorded[0][1] if recorded else Setting(flag, "flag", "given explicitly")
        elif recorded:
            settings[key] = recorded[0][1]
        elif key in MODEL_KEYS:
            missing = [why_not[s] for s in ("meta", "model_dir") if why_not.get(s) and key in _CAN_RECORD[s]]
            reason = "; ".join([_DEFAULT_REASONS.get(key, "not recorded")] + missing)
            settings[key] = Setting(DEFAULTS[key], "default", f"{reason}: the official default")
        elif key in TRAINING_KEYS:
            unrecorded.append(key)
    return CheckpointConfig(prefix, settings, unrecorded, notes)


def infer_config(shapes: dict[str, tuple], overrides: dict | None = None) -> dict:
    """The config from the variable shapes alone (official defaults for what they do not fix)."""
    return infer(None, shapes, overrides, use_meta=False, use_model_dir=False).config
