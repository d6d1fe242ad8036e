"""Checkpoints of the PyTorch port, in `checkpoint/<model_dir>/`.

One checkpoint at counter N is two files plus a pointer:
    <model_name>.model-N.safetensors   model weights (spectral-norm `u` buffers included)
    <model_name>.model-N.state.pt      optimizer states (TF1Adam state_dict), RNG states,
                                       data-loader positions, loop position, counter, config
    latest                             JSON {"step", "weights", "state"}: the newest complete one
The three are written to temp files, then published as one write (weights, state, pointer;
ugatit_common.atomic.publish_together), so an interrupted save - an error, Ctrl-C, or a kill,
which the next command there rolls back - leaves the previous checkpoint the newest complete one. `state.pt` holds only tensors, dicts, lists, ints, floats, strings, bools and
None, so it loads with `torch.load(..., weights_only=True)`.

TF checkpoints (`checkpoint` + `*.index`, the official layout) are recognised here and read
through the ground-floor `ugatit_common.tf_checkpoint` (numpy; the same reader, naming rule and
config inference as `weights_convert.py`). The run's config is checked against everything the
TF checkpoint records (its .meta graph, model_dir folder name and weights): a setting that
contradicts it stops the run with both values named.

Which checkpoint a run resumes from, what happens to unreadable ones, to an older run under
`--resume False`, what pruning may delete and how temp files are swept: the checkpoint policy,
ugatit_common/checkpoint_policy.py (`resume_point` here applies it; README "Checkpoint policy").
"""
from __future__ import annotations

import errno
import glob
import json
import os
import random
import re
import sys
import tempfile

import numpy as np
import torch

from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import tf_checkpoint as tfc
from ugatit_common.atomic import file_mode, naming, publish_together, remove_quietly, temp_prefix
from ugatit_common.finite import named_numbers, refuse_non_finite
from ugatit_common.recorded_config import recorded_keys, with_run_record
from ugatit_common.tf_checkpoint.bundle import checkpoint_subfolders, v1_error, v1_file

POINTER = "latest"
FORMAT = 1
_NAME = re.compile(r"^(?P<prefix>.+)\.model-(?P<step>\d+)\.state\.pt$")


class CheckpointMismatch(opt.OptionError):
    """A checkpoint whose variables are not the configured model's."""


class CheckpointCorrupt(OSError):
    pass


def paths_for(folder: str, prefix: str, step: int) -> tuple[str, str]:
    base = os.path.join(folder, f"{prefix}.model-{int(step)}")
    return base + ".safetensors", base + ".state.pt"


# -- RNG states (weights_only-compatible) -----------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [int(py_state[0]), [int(v) for v in py_state[1]],
                   None if py_state[2] is None else float(py_state[2])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def plain_config(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if isinstance(v, (bool, int, float, str)) or v is None}


# -- save ------------------------------------------------------------------------------------------

def save(folder: str, prefix: str, step: int, model: torch.nn.Module, state: dict, keep: int = 5) -> str:
    """Write weights, state and the pointer as one write (ugatit_common.atomic.publish_together:
    an error, Ctrl-C or a kill half way never leaves weights without their state, which would block
    every resume); then prune this run's (`state["run"]`) older checkpoints beyond the newest
    `keep` (see ugatit_common.checkpoint_policy). The weights file's metadata records the step,
    the run id, the kind and the config, so a test phase needs the weights file only."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    weights_path, state_path = paths_for(folder, prefix, step)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"step": str(int(step))}
    if state.get("run"):
        meta["run"] = str(state["run"])
    if state.get("kind"):
        meta["kind"] = str(state["kind"])
    if isinstance(state.get("config"), dict):
        meta["config"] = json.dumps(plain_config(state["config"]))
    full = dict(state)
    full["format"] = FORMAT
    full["step"] = int(step)
    pointer = json.dumps({"step": int(step), "weights": os.path.basename(weights_path),
                          "state": os.path.basename(state_path)})

    def write_state(tmp):
        with open(tmp, "wb") as f:
            torch.save(_to_cpu(full), f)

    def write_pointer(tmp):
        with open(tmp, "w") as f:
            f.write(pointer + "\n")
    os.makedirs(folder, exist_ok=True)
    temps = {}
    try:
        for path, write in ((weights_path, lambda tmp: save_file(tensors, tmp, metadata=meta)),
                            (state_path, write_state), (os.path.join(folder, POINTER), write_pointer)):
            fd, temps[path] = tempfile.mkstemp(prefix=temp_prefix(), suffix=os.path.splitext(path)[1],
                                               dir=folder)
            os.close(fd)
            with naming(path):
                try:
                    write(temps[path])
                except SafetensorError as e:  # e.g. a full disk, in safetensors' words
                    raise OSError(errno.EIO, str(e)) from e
                except RuntimeError as e:  # torch.save's zip writer, closing after a failed write (a full
                    if isinstance(e.__context__, OSError):  # disk), raises `unexpected pos` over the OSError
                        raise e.__context__ from e
                    raise
                fd = os.open(temps[path], os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(temps[path], file_mode())
        publish_together(temps)
    finally:  # e.g. the disk filled up: the temp files not renamed go, nothing half written is left
        for tmp in temps.values():
            remove_quietly(tmp)
    if state.get("run"):
        policy.prune(folder, prefix, str(state["run"]), keep)
    return weights_path


def _to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").clone()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_cpu(v) for v in x]
    return x


def complete_checkpoints(folder: str) -> list[tuple[int, str, str]]:
    """[(step, weights_path, state_path)] with both files present, oldest first."""
    out = []
    for sp in glob.glob(os.path.join(glob.escape(folder), "*.model-*.state.pt")):
        m = _NAME.match(os.path.basename(sp))
        if not m:
            continue
        wp = sp[: -len(".state.pt")] + ".safetensors"
        if os.path.isfile(wp):
            out.append((int(m.group("step")), wp, sp))
    return sorted(out)


def prune(folder: str, prefix: str, keep: int, run: str | None = None) -> None:
    """Delete run `run`'s checkpoints beyond its newest `keep` (never the folder's newest, never
    the one `latest` names; nothing without a run id)."""
    if run:
        policy.prune(folder, prefix, run, keep)


# -- load ------------------------------------------------------------------------------------------

def read_safetensors(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file. The library takes UTF-8 paths only: a path
    that is not (a folder named in another encoding, which the writers accept) is read from the
    file's bytes instead (the same tensors, in memory rather than mapped). A file this user may
    not read is policy.CannotRead (the library calls it "No such file or directory")."""
    policy.check_readable(path, "weights file")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        from safetensors.torch import load
        with open(path, "rb") as fh:
            data = fh.read()
        return load(data), policy.safetensors_metadata(path)
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, "pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(path), meta


def safetensors_keys(path: str) -> list[str]:
    """The tensor names of a safetensors file (its header only; any path, as read_safetensors);
    OptionError naming the file when it is not one."""
    import struct
    try:
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(min(n, 100 << 20)))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (OSError, ValueError, struct.error) as e:
        policy.check_readable(path, "weights file")  # the user's permissions, or ulimit -n: said as such
        raise opt.OptionError(f"{path!r}: not a readable safetensors file ({policy._reason(e)})") from e
    return [k for k in header if k != "__metadata__"]


def load_weights_file(wp: str) -> dict:
    try:
        return read_safetensors(wp)[0]
    except policy.CannotRead:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file means "not this one"
        raise CheckpointCorrupt(f"cannot read weights {wp!r}: {policy._reason(e)}") from e


def load_state_file(sp: str, need: tuple = ()) -> dict:
    try:
        state = torch.load(sp, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointCorrupt(f"cannot read state {sp!r}: {policy._reason(e)}") from e
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise CheckpointCorrupt(f"state {sp!r} is not a training state (lacks {', '.join(need) or 'a dict'})")
    return state


def _load_pair(wp: str, sp: str) -> tuple[dict, dict]:
    return load_weights_file(wp), load_state_file(sp)


def find_latest(folder: str):
    """(step, weights, state) of the newest complete, readable torch checkpoint, or None.
    Newer ones that cannot be read are named on stdout (never skipped silently)."""
    if not os.path.isdir(folder):
        return None
    return policy.look_again_while_pruned(lambda retry: _find_latest_once(folder, retry))


def _find_latest_once(folder: str, retry: bool):
    """One look for find_latest; policy.Vanished (when `retry`) where a checkpoint it listed lost
    a file before it was read whole (pruned by a training run writing the folder): not unreadable."""
    skipped = []
    for step, wp, sp in reversed(complete_checkpoints(folder)):
        try:
            weights, state = _load_pair(wp, sp)
        except CheckpointCorrupt as e:
            if retry and not (os.path.lexists(wp) and os.path.lexists(sp)):
                raise policy.Vanished() from e
            skipped.append(str(e))
            print(f" [!] skipping unreadable checkpoint: {e}", flush=True)
            continue
        if skipped:
            print(f" [!] using {os.path.basename(wp)}, the newest readable checkpoint", flush=True)
        return step, weights, state
    return None


TRAIN_STATE_KEYS = ("counter", "G_optim", "D_optim")


def resume_point(folder: str, cfg: dict | None = None, need: str = "train", log=print,
                 owner=None) -> dict | None:
    """The checkpoint a run continues from (policy: ugatit_common.checkpoint_policy): the newest
    usable one in `folder`, whichever framework wrote it. need="train": weights + optimizer
    state, which must be one pair (`policy.pairing_problem`: else unusable, like a damaged file)
    and finite (a NaN / inf: `NonFiniteWeights`, exit 2 naming the tensor - a diverged run, not a
    damaged file: resuming an older checkpoint would replay the same steps into it); need="weights"
    (test phase): the weights only, so a damaged state file does not matter. `owner`: the run
    lock of a training run holding `folder`; only then are skipped checkpoints moved to
    `unusable/`. Returns {"found", "framework", "step", "weights", "state" (torch) | "tf" (TF
    training state), "meta" (torch, need="weights": the weights file's metadata)}, or None when the folder holds no checkpoint at all; checkpoints that
    exist but cannot be used raise policy.NoUsableCheckpoint (exit 2)."""
    def load(f: policy.Found):
        if f.framework == "torch":
            weights = load_weights_file(f.base + ".safetensors")
            if need != "train":  # the metadata (config, kind) read with the weights, not after `choose` returns
                meta = policy.safetensors_metadata(f.base + ".safetensors")
                if not meta and not os.path.lexists(f.base + ".safetensors"):  # pruned meanwhile: choose looks again
                    raise FileNotFoundError(errno.ENOENT, "removed while it was read", f.base + ".safetensors")
                return {"weights": weights, "state": None, "meta": meta}
            state = load_state_file(f.base + ".state.pt", TRAIN_STATE_KEYS)
            problem = policy.pairing_problem(f.step, policy.safetensors_metadata(f.base + ".safetensors"), state)
            if problem:
                raise policy.NotOnePair(f"its weights and state files are not one checkpoint: {problem}")
            _refuse_other_image_size(state, cfg, f"checkpoint {f.name} in {folder!r}")
            refuse_non_finite_training_state(weights, state, f"checkpoint {f.name} in {folder!r}")
            return {"weights": weights, "state": state}
        try:
            if need == "train":
                st = read_tf_training_state(f.base, cfg, raw_errors=True)
                _refuse_other_run_image_size(f, folder, cfg)  # its .meta lost: the run's other records
                refuse_non_finite_training_state(
                    st["model"], {"G_optim": {"m": st["G_slots"], "powers": st["G_powers"]},
                                  "D_optim": {"m": st["D_slots"], "powers": st["D_powers"]}},
                    f"checkpoint {f.name} in {folder!r}")
                return {"weights": st["model"], "tf": st}
            _, weights = read_tf_weights(f.base, cfg, raw_errors=True)
            return {"weights": weights, "state": None}
        except tfc.ConfigConflict as e:
            raise CheckpointMismatch(str(e)) from e
    chosen = policy.choose(folder, load, need, log=log, owner=owner)
    if chosen is None:
        return None
    f, content = chosen
    return dict(content, found=f, framework=f.framework, step=f.step)


def _refuse_other_image_size(state: dict, cfg: dict | None, source: str) -> None:
    """A training run continues at its own image size. The other settings a run cannot change are
    in its folder's name (model_dir) or fixed by the weights' shapes; a light model's img_size is
    neither (TF's .meta records it: tf_reference refuses the change, and so does the port)."""
    had = (state.get("config") or {}).get("img_size")
    if cfg is not None and had is not None and cfg.get("img_size") is not None and int(had) != int(cfg["img_size"]):
        raise CheckpointMismatch(f"--img_size={cfg['img_size']} contradicts the {source}, whose run trains at "
                                 f"img_size={had}: resume with --img_size {had}, or train a new run in another "
                                 f"--checkpoint_dir")


def _refuse_other_run_image_size(f, folder: str, cfg: dict | None) -> None:
    """A TF checkpoint (policy.Found) continues at its run's image size, as its own .meta or - that
    lost - the run's other checkpoints record it (checkpoint_policy.other_image_size); tf_reference
    refuses the same."""
    message = policy.other_image_size(f, folder, (cfg or {}).get("img_size"))
    if message:
        raise CheckpointMismatch(message)


# state entries that are not numbers a run continues with: the config (compared, not used) and
# the RNG states (bit patterns; numpy's cached Gaussian is no training value)
_NOT_TRAINING_NUMBERS = ("config", "rng")


def refuse_non_finite_training_state(weights: dict, state: dict, source: str) -> None:
    """A training state to resume from holds no NaN / inf: the weights first (named as in the
    weights file), then every number of the state the run continues with (finite.named_numbers:
    the optimizers' slots `G_optim.m.<name>` and powers, their lr / betas / eps, the fp16 loss
    scales `loss_scale.<key>.scale`, `past_g_loss`...; not the config or the RNG states).
    NonFiniteWeights (exit 2) names the first bad one and how many of its values are non-finite:
    refused up front, not trained into a NaN loss (exit 3) or a histogram error."""
    refuse_non_finite(weights, source)
    refuse_non_finite(named_numbers({k: v for k, v in state.items() if k not in _NOT_TRAINING_NUMBERS}), source)


def has_tf_checkpoint(folder: str) -> bool:
    return tfc.is_tf_checkpoint_folder(folder)


def _generator_part(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("generator")}


def check_matches(model: torch.nn.Module, weights: dict, source: str, generators_only: bool = False) -> None:
    """Names and shapes of `weights` against the model's state dict (`generators_only`: of the
    generators, what a test phase runs); a clear error otherwise."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    if generators_only:
        want, have = _generator_part(want), _generator_part(have)
    message = opt.checkpoint_mismatch(source, want, have)
    if message:
        raise CheckpointMismatch(_flags_that_differ(model, weights) + message)


def _flags_that_differ(model: torch.nn.Module, weights: dict) -> str:
    """'--ch 4 was given but the checkpoint's weights say ch 2; ' for each model flag the weights
    fix that differs from the configured model's (settings_that_differ)."""
    diffs = [f"--{k} {mine} was given but the checkpoint's weights say {k} {theirs}"
             for k, mine, theirs in settings_that_differ(model, weights)]
    return "; ".join(diffs) + ": " if diffs else ""


def settings_that_differ(model: torch.nn.Module, weights: dict) -> list[tuple[str, object, object]]:
    """(setting, the model's value, the weights' value) for each model setting the weights fix
    that differs from the configured model's (empty when they cannot tell: a partial or foreign
    state dict, a Morph model). Only settings the weights do fix are compared: a generators-only
    checkpoint says nothing of n_dis or sn (their inferred defaults are no record)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        return []
    try:
        from .to_tf import infer_from_weights_info
        info = infer_from_weights_info(weights)
    except Exception:  # noqa: BLE001 - not a whole U-GAT-IT state dict: the shape list says enough
        return []
    found, sources = info.config, info.sources
    keys = ("light", "ch", "n_res", "n_dis", "sn") + (() if cfg.get("light") else ("img_size",))
    return [(k, cfg[k], found[k]) for k in keys
            if k in cfg and k in found and sources.get(k) == "weights" and found[k] != cfg[k]]


def load_weights_into(model: torch.nn.Module, weights: dict, source: str, generators_only: bool = False) -> None:
    """`weights` into `model`, every name and shape checked (`generators_only`: the generators'
    only, the discriminators left as built: the test phase never runs them, and an inference
    export - a Saver over the generators, torch2tf of a generators-only file - has none)."""
    check_matches(model, weights, source, generators_only)
    if generators_only:
        model.load_state_dict(_generator_part(weights), strict=False)
    else:
        model.load_state_dict(weights, strict=True)


# Settings of a run that a TF checkpoint may record; the run's values must agree with it.
TF_CHECKED_KEYS = tfc.MODEL_KEYS + tfc.TRAINING_KEYS


def _run_settings(cfg: dict | None, keys) -> dict | None:
    if cfg is None:
        return None
    return {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}


def _tf_errors(path: str):
    """TF-checkpoint errors as the CLIs' OptionError (exit 2, one `error:` line)."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except tfc.ConfigConflict as e:
            raise CheckpointMismatch(str(e)) from e
        except (tfc.ConversionError, tfc.CheckpointError) as e:
            raise opt.OptionError(f"cannot read the TensorFlow checkpoint {path!r}: {e}") from e
    return guard()


def _model_names(cfg: dict):
    """The state-dict keys of the port model `cfg` describes: a TF checkpoint's other variables (an
    EMA's, a fork's) are left out, as TF's Saver and tf2torch leave them (tf_checkpoint.read)."""
    from .to_tf import _expected
    return _expected(cfg)[0]


def read_tf_training_state(folder: str, cfg: dict | None = None, keys=TF_CHECKED_KEYS,
                           raw_errors: bool = False) -> dict:
    """Weights, Adam slots, powers and step of an official TF checkpoint as torch tensors, plus
    its inferred `config` (and provenance, `info`). `cfg`: the run's config, checked against what
    the checkpoint records (`keys`; a contradiction raises CheckpointMismatch naming both)."""
    import contextlib
    with (contextlib.nullcontext() if raw_errors else _tf_errors(folder)):
        st = tfc.read_training_arrays(folder, _run_settings(cfg, keys), model_names=_model_names)
    st["info"].announce()
    return training_state_as_torch(st)


def training_state_as_torch(st: dict) -> dict:
    """tf_checkpoint.read_training_arrays's numpy weights, Adam slots and powers as torch tensors
    (in place; the step, config and provenance stay as they are)."""
    for key in ("model", "G_slots", "D_slots"):
        st[key] = {n: torch.from_numpy(a) for n, a in st[key].items()}
    for key in ("G_powers", "D_powers"):
        st[key] = tuple(torch.from_numpy(a) for a in st[key])
    return st


def read_tf_weights(folder: str, cfg: dict | None = None, keys=tfc.MODEL_KEYS,
                    generators_only: bool = False, raw_errors: bool = False) -> tuple[dict, dict]:
    """(inferred config, torch state) of an official TF checkpoint; `cfg` as in read_tf_training_state."""
    import contextlib
    with (contextlib.nullcontext() if raw_errors else _tf_errors(folder)):
        info, arrays = tfc.read_arrays(folder, generators_only, overrides=_run_settings(cfg, keys),
                                       model_names=_model_names, known=recorded_keys(folder))
        # the folder's run record (ugatit-run.json) completes and checks it, as tf2torch does: a
        # light model whose .meta is lost keeps its training size, not the guessed 256
        info = with_run_record(info, info.prefix or tfc.resolve_prefix(folder))
    info.announce()
    return info.config, {n: torch.from_numpy(a) for n, a in arrays.items()}


# -- any checkpoint, for inference (test phase, ONNX export) ---------------------------------------

def _tf_step(path: str) -> int:
    from ugatit_common.tf_checkpoint import checkpoint_step, resolve_prefix
    return int(checkpoint_step(resolve_prefix(path)))


def tf_prefix_of_file(path: str) -> str:
    """The prefix of the TF checkpoint whose file (`.index`, `.meta`, `.data-*`) `path` is, when
    that prefix's `.index` is there; else `path` as it is (a folder, a prefix, another file)."""
    return tfc.prefix_of_file(path) or path


def _is_tf_checkpoint(path: str) -> bool:
    if os.path.isdir(path):
        return has_tf_checkpoint(path)
    return os.path.isfile(path + ".index")


def _apply_overrides(cfg: dict, overrides: dict, source: str, guessed=()) -> dict:
    """The stored config with the given settings: a light model's img_size may change (its
    weights do not fix it); any other setting that contradicts the checkpoint is an error, but a
    setting the checkpoint only guessed (`guessed`: weights_convert's `ugatit_config_guessed`,
    the official default where no record held it) is filled in by the flag, as from the TF source."""
    cfg = dict(cfg)
    for k, v in overrides.items():
        if v is None:
            continue
        if k != "img_size" and k in cfg and cfg[k] != v and k not in guessed:
            raise CheckpointMismatch(f"--{k}={v!r} contradicts the checkpoint {source}, which records "
                                     f"{k}={cfg[k]!r}")
        if k == "img_size" and not cfg.get("light", True) and int(v) != int(cfg["img_size"]) and k not in guessed:
            raise opt.OptionError(f"--img_size={v}: the full (light=False) model in {source} is fixed to "
                                  f"{cfg['img_size']} px by its MLP")
        cfg[k] = v
    if int(cfg["img_size"]) % 4 or int(cfg["img_size"]) < 8:
        raise opt.OptionError(f"--img_size={cfg['img_size']}: must be a multiple of 4 and at least 8 (the generator "
                              f"halves the image twice and its norms need more than one pixel)")
    return cfg


# tf2torch's record of where each setting of its `ugatit_config` came from (ugatit_common.
# tf_checkpoint.config.CheckpointConfig.metadata): the key, the JSON type it holds, and its default
PROVENANCE_KEYS = (("ugatit_config_sources", dict, {}), ("ugatit_config_guessed", dict, {}),
                   ("ugatit_config_not_recorded", list, []))


def provenance_in_metadata(meta: dict, path: str) -> dict:
    """{key: value} of a weights file's provenance keys (PROVENANCE_KEYS; an absent one: its
    default). One that is there but damaged (not JSON, not the JSON type expected, a source or a
    not-recorded name that is not a string) raises one OptionError naming the file and the key,
    for every reader alike: read as "records nothing" or "guesses nothing", it would pass guesses
    off as records for one reader and records as guesses for another."""
    out = {}
    for key, kind, default in PROVENANCE_KEYS:
        if key not in meta:
            out[key] = type(default)(default)
            continue
        try:
            value = json.loads(meta[key])
        except (TypeError, ValueError) as e:
            raise opt.OptionError(f"{path!r}: its metadata's {key} is not JSON ({e})") from e
        items = value.values() if key == "ugatit_config_sources" and isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        if not isinstance(value, kind) or not all(isinstance(v, str) for v in items):
            what = "an object of setting: source" if key == "ugatit_config_sources" else \
                "an object of setting: value" if kind is dict else "a list of setting names"
            raise opt.OptionError(f"{path!r}: its metadata's {key} is damaged ({what} expected, as weights_convert "
                                  f"tf2torch writes it)")
        out[key] = value
    return out


def guessed_in_metadata(meta: dict, path: str) -> set:
    """The settings a weights file's config holds as guesses, not records (weights_convert
    tf2torch's `ugatit_config_guessed`: no .meta, folder name or weight shape recorded them);
    damaged provenance: provenance_in_metadata's OptionError."""
    return set(provenance_in_metadata(meta, path)["ugatit_config_guessed"])


def config_in_metadata(meta: dict, path: str) -> dict | None:
    """The config a weights file records: weights_convert's `ugatit_config`, or a port checkpoint's
    `config` (checkpoint.save writes it so that a test phase needs the weights only)."""
    for key in ("ugatit_config", "config"):
        if key in meta:
            try:
                cfg = json.loads(meta[key])
            except ValueError as e:
                raise opt.OptionError(f"{path!r}: its metadata's {key} is not JSON ({e})") from e
            if not isinstance(cfg, dict):
                raise opt.OptionError(f"{path!r}: its metadata's {key} is not a config (a JSON object expected)")
            return cfg
    return None


def _load_folder_without_pair(path: str, overrides: dict) -> dict:
    """load_any of a folder holding no complete, readable port checkpoint: TF bundles without the
    `checkpoint` state file go to the TF reader (it takes a single prefix, or says what is wrong:
    several prefixes), else the newest port weights file whose metadata records its config (its
    .state.pt missing or damaged: translating needs the weights only), else what is left of a TF
    checkpoint to the TF reader (it names what is missing, e.g. the .index)."""
    if glob.glob(os.path.join(glob.escape(path), "*.index")):
        return _load_tf(path, overrides)
    found = policy.inventory(path)  # newest first
    weights = [f.base + ".safetensors" for f in found if f.framework == "torch"
               and os.path.isfile(f.base + ".safetensors")]
    if weights:
        newest = weights[0]
        print(f"note: {path!r} holds no complete checkpoint (weights + readable .state.pt); its newest weights "
              f"file {os.path.basename(newest)} is used (translating needs the weights only)", file=sys.stderr)
        return load_any(newest, overrides)
    if any(f.framework == "tf" for f in found) or os.path.isfile(os.path.join(path, "checkpoint")):
        return _load_tf(path, overrides)  # an incomplete TF checkpoint: the reader says what is missing
    runs = checkpoint_subfolders(path)
    hint = f"; its subfolders hold checkpoints, give one of them: {', '.join(map(repr, runs))}" if runs else ""
    raise opt.OptionError(f"{path!r}: no checkpoint there (expected a torch_port checkpoint folder or an official "
                          f"TensorFlow one){hint}")


def _load_tf(path: str, overrides: dict) -> dict:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:  # explicit settings are checked against what the checkpoint records; guesses noted on stderr
        try:
            cfg, state = read_tf_weights(path, cfg=given, generators_only=True)
        except CheckpointMismatch as e:
            # a light model's --img_size is honoured for inference where the weights do not fix it, as
            # the official test phase builds its graph at the flag's size: the .meta records the training size
            if "img_size" not in given or "--img_size" not in str(e):
                raise
            cfg, state = read_tf_weights(path, cfg={k: v for k, v in given.items() if k != "img_size"},
                                         generators_only=True)
            if not cfg.get("light"):
                raise e from None
    except Exception as e:  # noqa: BLE001 - the converter's errors all mean "not readable / contradicts"
        said = str(e)
        raise opt.OptionError(said if said.startswith("cannot read the TensorFlow checkpoint") else
                              f"{path!r}: cannot read the TensorFlow checkpoint: {said}") from e
    return {"config": _apply_overrides(cfg, given, path), "state": state, "step": _tf_step(path),
            "source": path, "kind": "tensorflow"}


def load_any(path: str, overrides: dict | None = None) -> dict:
    """{"config", "state", "step", "source", "kind"} from: an official TF checkpoint (folder or
    prefix; converted without TensorFlow), a port checkpoint folder (the newest complete one), or a
    .safetensors file (weights_convert's, or a port checkpoint's weights beside its .state.pt).
    `path`: a str or a path-like object (pathlib.Path)."""
    path = os.fsdecode(path)
    overrides = dict(overrides or {})
    if not os.path.exists(path) and not os.path.isfile(path + ".index"):
        raise opt.OptionError(f"{path!r}: no such checkpoint file or folder")
    path = tf_prefix_of_file(path)  # one file of a TF checkpoint (.index, .data, .meta) names its prefix
    if _is_tf_checkpoint(path):
        return _load_tf(path, overrides)
    if os.path.isdir(path):
        try:
            found = find_latest(path)
        except Exception as e:  # noqa: BLE001
            raise opt.OptionError(f"{path!r}: cannot read the checkpoint: {e}") from e
        if found is None:
            return _load_folder_without_pair(path, overrides)
        step, weights, state = found
        if state.get("kind") == "morph":
            raise opt.OptionError(f"{path!r} holds a Morph-UGATIT checkpoint: export it with python -m morph export, "
                                  f"translate with python -m morph translate")
        if "config" not in state:
            raise opt.OptionError(f"{path!r}: the checkpoint's state file records no config")
        return {"config": _apply_overrides(opt.config_from(state["config"]), overrides, path), "state": weights,
                "step": int(step), "source": path, "kind": "torch_port"}
    if path.lower().endswith(".safetensors"):
        try:
            weights, meta = read_safetensors(path)
        except policy.CannotRead:
            raise
        except Exception as e:  # noqa: BLE001
            raise opt.OptionError(f"{path!r}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        if meta.get("kind") == "morph":
            raise opt.OptionError(f"{path!r} is a Morph-UGATIT checkpoint: export it with python -m morph "
                                  f"export, translate with python -m morph translate")
        cfg = config_in_metadata(meta, path)
        if cfg is None:  # an older weights file: the config is in the state file beside it
            state_path = path[: -len(".safetensors")] + ".state.pt"
            if os.path.isfile(state_path):
                try:
                    st = torch.load(state_path, map_location="cpu", weights_only=True)
                except Exception as e:  # noqa: BLE001 - damaged, or not a state file
                    raise opt.OptionError(f"{state_path!r}: cannot read it ({type(e).__name__}), and the weights "
                                          f"{path!r} record no config in their metadata") from e
                if not isinstance(st, dict):
                    raise opt.OptionError(f"{state_path!r}: not a torch_port state file")
                if st.get("kind") == "morph":
                    raise opt.OptionError(f"{path!r} is a Morph-UGATIT checkpoint: export it with python -m morph "
                                          f"export, translate with python -m morph translate")
                cfg = st.get("config")
        if cfg is None:
            raise opt.OptionError(f"{path!r}: no config in its metadata (ugatit_config / config) and no .state.pt "
                                  f"beside it")
        return {"config": _apply_overrides(opt.config_from(cfg), overrides, path, guessed_in_metadata(meta, path)),
                "state": weights, "step": policy.recorded_step(meta.get("step"), path), "source": path, "kind": "torch_port"}
    v1 = v1_file(path)
    if v1:  # TF1's one-file format: say so, not "not a checkpoint"
        raise opt.OptionError(f"{path!r}: {v1_error(v1)}")
    raise opt.OptionError(f"{path!r}: not a checkpoint (expected a checkpoint folder, a TF checkpoint prefix or "
                          f"its .index / .data / .meta file, or a .safetensors file)")
