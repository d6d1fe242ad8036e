"""What `weights_convert.py torch2tf` writes: the port's weights checked against the model their
config describes, plus the optimizer state, so TF can resume training from the result.

Input: a port checkpoint (`<name>.model-N.safetensors`, its `.state.pt` beside it, or the folder
holding them: the newest), a `tf2torch` output (.safetensors or .pt; with `--with_optimizer` it
already holds the Adam slots and powers) or any safetensors file of the port's state dict.
The config comes from the file's metadata, the state file, or (last) the weights' shapes. Every
weight must be the configured model's, by name and shape (a generators-only file: the
generators'); Adam slots must cover every trainable variable. Every tensor is written float32, as
the official graph's variables are (float64 / float16 ones cast, with a note; integers refused).
The Adam state of a port checkpoint is TF1 Adam's exactly (`m`, `v`, `beta1_power`, `beta2_power`
of both optimizers), carried under the official names (`<var>/Adam`, `<var>/Adam_1`,
`beta1_power`, `beta1_power_1`...).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import sys
from dataclasses import dataclass, field

from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.tf_checkpoint.bundle import checkpoint_subfolders
from ugatit_common.tf_checkpoint.names import ConversionError, tf_names_of

_STEP = re.compile(r"\.model-(\d+)\.safetensors$")


def _reason(e: BaseException) -> str:
    return policy._reason(e)


_TF_SOURCE = ("an official TensorFlow checkpoint: torch2tf converts PyTorch weights to one; to get PyTorch "
              "weights from it, use weights_convert.py tf2torch")


def _resolve(inp: str) -> str:
    return _resolve_found(inp)[0]


def _resolve_found(inp: str) -> tuple[str, "policy.Found | None"]:
    """(the weights file torch2tf reads for `inp`, its checkpoint as the folder's inventory found it:
    None for a file given itself)."""
    if os.path.isdir(inp):
        found = policy.inventory(inp)
        torch_found = [f for f in found if f.framework == "torch" and f.has_weights]
        if not torch_found:
            runs = checkpoint_subfolders(inp)
            instead = (f"; it holds {_TF_SOURCE}" if any(f.framework == "tf" for f in found) else
                       f"; its subfolders hold checkpoints, give one of them: {', '.join(map(repr, runs))}" if runs
                       else "")
            raise ConversionError(f"{inp!r}: no PyTorch checkpoint (*.model-N.safetensors) in this folder{instead}")
        return torch_found[0].weights, torch_found[0]
    if not os.path.isfile(inp):
        raise ConversionError(f"{inp!r}: no such file or folder")
    if (policy.checkpoint_of(os.path.basename(inp)) or ("", ""))[1] == "tf":  # <prefix>.model-N.index / .data / .meta
        raise ConversionError(f"{inp!r} is part of {_TF_SOURCE}")
    return inp, None


def load_weights(path: str) -> tuple[dict, dict]:
    """(state, metadata) of a .safetensors or .pt file, with one clear error for anything else."""
    import torch
    from ugatit_common.output_guard import is_safetensors_head
    policy.check_readable(path, "weights file")  # not a bare "[Errno 13] Permission denied: ..."
    with open(path, "rb") as fh:
        head = fh.read(9)
    # read as what it holds, whatever its name says: a safetensors file by its own header first
    # (read as a torch.save file - its length beginning with `PK` or 0x80 - its metadata, the run's
    # config and step, was lost), so a safetensors file named .pt is one too
    safetensors = is_safetensors_head(head, os.path.getsize(path))
    if not safetensors and (path.lower().endswith(".pt") or head[:2] == b"PK" or head[:1] == b"\x80"):
        import warnings
        try:
            # from an open file: given a path ending in .safetensors, torch.load (>= 2.13) reads it as
            # safetensors whatever it holds
            with warnings.catch_warnings(), open(path, "rb") as fh:
                warnings.simplefilter("ignore")
                obj = torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: not repeated
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(e), re.S)
            detail = " ".join(detail.group(1).split()).split(" Please use")[0] if detail else "not a weights file"
            raise ConversionError(f"{path!r} is not a weights file that loads safely ({detail}): only tensors "
                                  f"are read; pickled Python objects are refused (unpickling can run code)") from e
        except Exception as e:  # noqa: BLE001 - truncated zip, garbage, ...
            raise ConversionError(f"{path!r} is not a readable .pt weights file ({_reason(e)})") from e
        meta = {}
        if isinstance(obj, dict) and "state" in obj:  # a tf2torch .pt: its config and where it came from
            meta = {"ugatit_config": json.dumps(obj.get("config") or {}), "step": obj.get("step", 0)}
            prov = obj.get("config_provenance") or {}
            if not isinstance(prov, dict):
                raise ConversionError(f"{path!r}: its config_provenance is damaged (an object of sources, guessed "
                                      f"and not_recorded expected, as weights_convert tf2torch writes it)")
            if prov:
                meta.update(ugatit_config_sources=json.dumps(prov.get("sources", {})),
                            ugatit_config_guessed=json.dumps(prov.get("guessed", {})),
                            ugatit_config_not_recorded=json.dumps(prov.get("not_recorded", [])))
            obj = obj["state"]
        if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ConversionError(f"{path!r} does not hold a state dict of tensors")
        return obj, meta
    from .checkpoint import read_safetensors
    try:
        return read_safetensors(path)
    except policy.CannotRead:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{path!r} is not a readable safetensors file ({_reason(e)})") from e


def _optimizer_entries(state: dict, source: str) -> dict:
    """The Adam slots and powers of a port state file (`source`, named in the ConversionError
    of one that lacks them: an optimizer state without `m`, `v` or the powers)."""
    flat = {}
    for name, key in (("G", "G_optim"), ("D", "D_optim")):
        st = state[key]
        lacks = [k for k in ("m", "v", "beta1_power", "beta2_power") if not isinstance(st, dict) or k not in st]
        if lacks or not all(isinstance(st[k], dict) for k in ("m", "v")):
            raise ConversionError(f"{source!r}: its {key} is not an Adam state (no {', '.join(lacks) or 'slot dicts'});"
                                  f" TF cannot resume training without one. Pass --weights_only to write the weights "
                                  f"alone (enough for the test phase)")
        for n, t in st["m"].items():
            flat[f"{n}/Adam"] = t
        for n, t in st["v"].items():
            flat[f"{n}/Adam_1"] = t
        flat[f"optimizer.{name}.beta1_power"] = st["beta1_power"]
        flat[f"optimizer.{name}.beta2_power"] = st["beta2_power"]
    return flat


def _tf_shape(name: str, shape: tuple) -> tuple:
    base = name.split("/")[0]
    if base.endswith("weight") and len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if base.endswith("weight") and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def infer_from_weights(weights: dict) -> dict:
    """The config a port state dict implies (its shapes, official defaults for the rest)."""
    return infer_from_weights_info(weights).config


def infer_from_weights_info(weights: dict):
    """infer_from_weights with each setting's source (a CheckpointConfig: `weights` or `default`)."""
    from ugatit_common.tf_checkpoint.config import infer
    names = tf_names_of(weights)
    shapes = {names[k]: _tf_shape(k, tuple(v.shape)) for k, v in weights.items()}
    return infer(None, shapes, use_meta=False, use_model_dir=False)


def _recorded_keys(meta: dict, key: str, cfg: dict, path: str) -> set:
    """The settings of `cfg` (read from the file's metadata `key`) that the file records as known:
    a port checkpoint's config is its run's flags, all known; a tf2torch output's (`ugatit_config`)
    says per setting where it came from, and a guessed one (source `default`) or one it lists as
    not recorded is not known. Damaged provenance: the port's rule (checkpoint.
    provenance_in_metadata), one OptionError naming `path` and the key."""
    from .checkpoint import provenance_in_metadata
    prov = provenance_in_metadata(meta, path)
    if key != "ugatit_config":
        return set(cfg)
    sources, guessed = prov["ugatit_config_sources"], prov["ugatit_config_guessed"]
    unrecorded = prov["ugatit_config_not_recorded"]
    return {k for k in cfg if sources.get(k, "default") != "default" and k not in guessed and k not in unrecorded}


def _expected(cfg: dict):
    """({name: shape} of the configured model's state dict, {trainable name: shape})."""
    import torch

    from .model import build_ugatit
    try:
        with torch.device("meta"):
            model = build_ugatit(cfg)
    except Exception:  # noqa: BLE001 - a layer that cannot be built on the meta device
        model = build_ugatit(cfg)
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {k: tuple(p.shape) for k, p in model.named_parameters()})


def as_float32(state: dict, source: str) -> tuple[dict, dict]:
    """(state with every tensor float32, {dtype name: how many were cast}). The official graph's
    variables are all float32 and TF's Saver restores an entry only into a variable of its own
    dtype, so a float64 / float16 tensor is cast; a non-floating one is refused (ConversionError)."""
    import torch
    out, cast = {}, {}
    for name, t in state.items():
        if t.dtype == torch.float32:
            out[name] = t
            continue
        if not t.is_floating_point():
            raise ConversionError(f"{source}: tensor {name!r} is {str(t.dtype).replace('torch.', '')}, float32 "
                                  f"expected (every variable of the official graph is float32)")
        f32 = t.to(torch.float32)
        if int((~torch.isfinite(f32)).sum()) > int((~torch.isfinite(t)).sum()):
            raise ConversionError(f"{source}: tensor {name!r} ({str(t.dtype).replace('torch.', '')}) holds values "
                                  f"beyond float32's range (the official graph's variables are float32)")
        out[name] = f32
        key = str(t.dtype).replace("torch.", "")
        cast[key] = cast.get(key, 0) + 1
    return out, cast


@dataclass
class Prepared:
    """What torch2tf writes: `state` (weights + Adam slots + powers, official-name-ready), `step`,
    `config` (validated, complete) and `recorded`: the settings of `config` the input records
    (the rest are official defaults or guesses: a .meta written from them would pass them off as
    the checkpoint's)."""
    state: dict
    step: int
    config: dict
    recorded: frozenset = field(default_factory=frozenset)
    source: str = ""


def prepare(inp: str, weights_only: bool = False, log=print) -> Prepared:
    """What torch2tf writes for `inp` (Prepared: the flat state of weights + Adam slots + powers,
    the step, the config and which of its settings the input records); raises ConversionError
    naming what is wrong. A folder's checkpoint that loses a file while it is read (a training run
    there pruned it after a newer save: its weights read, its state gone, or neither) is not
    converted half or called unreadable: the folder is looked at again."""
    for attempt in range(policy.VANISHED_TRIES):
        path, found = _resolve_found(inp)
        said = []
        try:
            prepared = _prepare(path, weights_only, said.append)
        except (ConversionError, OSError):  # OSError: the weights file gone before it was opened
            if found is not None and attempt + 1 < policy.VANISHED_TRIES and policy.vanished(found):
                continue
            raise
        if found is not None and attempt + 1 < policy.VANISHED_TRIES and policy.vanished(found):
            continue
        for line in said:
            log(line)
        return prepared
    raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover


def _prepare(path: str, weights_only: bool, log) -> Prepared:
    """prepare's work on the weights file `path` (its `.state.pt` beside it read too)."""
    weights, meta = load_weights(path)
    if meta.get("kind") == "morph":  # its weights alone (its state not beside it, or not read): said as with it
        raise ConversionError(f"{path!r} is a Morph-UGATIT checkpoint: it has no TensorFlow counterpart")
    # the port's rule (checkpoint.config_in_metadata): a config that is not a JSON object is a damaged
    # file, refused naming it - never read as no config and replaced by guesses from the shapes
    # and so is damaged provenance (which of its settings are records, which guesses)
    from .checkpoint import config_in_metadata
    try:
        cfg = config_in_metadata(meta, path) or None
        recorded = _recorded_keys(meta, "ugatit_config" if "ugatit_config" in meta else "config", cfg or {}, path)
    except opt.OptionError as e:
        raise ConversionError(f"{e}; nothing was written") from None
    step = policy.recorded_step(meta.get("step"), path)
    m = _STEP.search(path)
    state = None
    sibling = path[: -len(".safetensors")] + ".state.pt" if m else None
    if sibling and os.path.isfile(sibling) and not weights_only:
        import torch
        try:
            state = torch.load(sibling, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a dict")
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"the optimizer state {sibling!r} cannot be read ({_reason(e)}); without it TF "
                                  f"cannot resume training. Pass --weights_only to write the weights alone "
                                  f"(enough for the test phase)") from e
        if state.get("kind") == "morph":
            raise ConversionError(f"{path!r} is a Morph-UGATIT checkpoint: it has no TensorFlow counterpart")
        # the pair python -m torch_port would resume from, or none (checkpoint policy: one pair)
        problem = policy.pairing_problem(int(m.group(1)), policy.safetensors_metadata(path), state)
        if problem:
            raise ConversionError(f"{path!r} and {sibling!r} are not one checkpoint: {problem}; pass "
                                  f"--weights_only to convert the weights alone")
        if not cfg and isinstance(state.get("config"), dict):  # the run's flags
            cfg = state["config"]
            recorded = set(cfg)
        step = int(state.get("counter", step) or step)
    if m and not step:
        step = int(m.group(1))
    inferred = not cfg
    if inferred:
        info = infer_from_weights_info({k: v for k, v in weights.items()
                                        if "/" not in k and not k.startswith("optimizer.")})
        cfg, recorded = info.config, {k for k, s in info.sources.items() if s != "default"}
        log(f"note: {path} records no config; inferred from the weights' shapes: light={cfg['light']}, "
            f"ch={cfg['ch']}, img_size={cfg['img_size']} (a light model's weights do not fix img_size)")
    cfg = opt.config_from({k: v for k, v in cfg.items() if k in opt.DEFAULTS})
    try:
        opt.validate(dict(cfg, phase="train"))
    except opt.OptionError as e:
        raise ConversionError(f"{path!r} records a config the official model cannot build: {e}") from e
    want, trainable = _expected(cfg)
    plain = {k: v for k, v in weights.items() if "/" not in k and not k.startswith("optimizer.")}
    if plain and all(k.startswith("generator") for k in plain):  # a generators-only file
        want = {k: s for k, s in want.items() if k.startswith("generator")}
        trainable = {k: s for k, s in trainable.items() if k.startswith("generator")}
    # no model flags here to check (torch2tf has none): the settings come from the file itself
    hint = ("the model its weights' shapes describe" if inferred else
            "the model its recorded config describes: light, ch, n_res, n_dis, img_size, sn")
    message = opt.checkpoint_mismatch(path, want, {k: tuple(v.shape) for k, v in plain.items()}, hint=hint)
    if message:
        raise ConversionError(message)
    flat = dict(plain)
    given_slots = {k: v for k, v in weights.items() if k not in plain}
    if state is not None and not given_slots:
        if not all(k in state for k in ("G_optim", "D_optim")):
            raise ConversionError(f"{sibling!r} holds no optimizer state (G_optim, D_optim); pass --weights_only "
                                  f"to write the weights alone")
        given_slots = _optimizer_entries(state, sibling)
    if given_slots:
        want_slots = {f"{n}/{s}": shape for n, shape in trainable.items() for s in ("Adam", "Adam_1")}
        powers = {f"optimizer.{o}.{p}": () for o in ("G", "D") for p in ("beta1_power", "beta2_power")
                  if o == "G" or any(k.startswith("discriminator") for k in trainable)}
        want_slots.update(powers)
        msg = opt.checkpoint_mismatch(f"{path} (optimizer state)", want_slots,
                                      {k: tuple(v.shape) for k, v in given_slots.items()}, hint=hint)
        if msg:
            raise ConversionError(msg)
        flat.update(given_slots)
    else:
        log(f"note: no optimizer state written ({'--weights_only' if weights_only else 'none found beside ' + path}): "
            f"the TF checkpoint serves the test phase; TF training cannot resume from it")
    flat, cast = as_float32(flat, path)
    if cast:
        print(f"note: cast {sum(cast.values())} tensor(s) of {path} to float32 ("
              + ", ".join(f"{n} {d}" for d, n in sorted(cast.items()))
              + "): the official graph's variables are float32", file=sys.stderr)
    return Prepared(flat, step, cfg, frozenset(k for k in recorded if k in cfg), path)
