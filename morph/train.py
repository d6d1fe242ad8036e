"""Training and checkpoints of Morph-UGATIT: the port's trainer with Morph's seams.

`MorphTrainer(torch_port.train.Trainer)` changes only what differs: the model (`MorphUGATIT`,
its z generator seeded with the run's seed and, under torchrun, drawing the global batch's codes
and keeping this rank's rows), the config validation (`validate_morph`), the folder
(`<checkpoint_dir>/<model_dir>_morph<A|B|C>/`, prefix `MorphUGATIT_<A|B|C>`), the checkpoint kind
(state and weights metadata: kind = "morph", the morph config; a UGATIT / TF checkpoint or another
config in the folder is a `CheckpointKindError`), the extra state (the z generator's RNG,
"z_rng"), the `--init_from` start, and the loss log `losses.jsonl` in the log folder. Everything
else is the port's loop: torchrun data parallelism, TensorBoard scalars (every term the D / G
steps return, the identity-preserving G_A_idp / G_B_idp included) and rho histograms, the NaN stop
(exit 3), `--resume`, `--keep_checkpoints`, `--num_workers`, the checkpoint policy.

Checkpoints written by the earlier Morph loop (same state keys, no world_size) resume unchanged:
its data order was the same `infinite_loader` stream from the stored positions, so a resumed run
continues on the same batches. One difference: for gradient-penalty GAN types (wgan-gp, dragan)
the port's trainer draws alpha / noise from (seed, counter, rank), the earlier loop from the
global RNG, so such a run continues with other (equally valid) penalty draws.

Checkpoint kinds are told apart (`checkpoint_kind`): a Morph one where a UGATIT one is needed
(`--init_from`) or a UGATIT / TF one where a Morph one is needed (resume, interpolate,
translate) raises `CheckpointKindError` naming what was found.
"""
from __future__ import annotations

import math
import os

import torch

from torch_port import checkpoint as ckpt
from torch_port.train import Trainer
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.finite import refuse_non_finite
from ugatit_common.tf_checkpoint.bundle import checkpoint_subfolders

from .model import MORPH_CONFIGS, MORPH_DEFAULTS, MorphUGATIT

__all__ = ["CheckpointKindError", "MorphTrainer", "morph_model_dir", "morph_paths", "checkpoint_kind", "tf_prefix",
           "load_morph",
           "init_from_ugatit", "train", "validate_morph"]

KIND = "morph"


class CheckpointKindError(opt.OptionError):
    """A checkpoint of the wrong kind (Morph vs UGATIT, or the wrong morph config)."""


def validate_morph(cfg: dict) -> dict:
    cfg = dict(MORPH_DEFAULTS, **cfg)
    mc = str(cfg["morph_config"]).upper()
    if mc not in MORPH_CONFIGS:
        raise opt.OptionError(f"--config={cfg['morph_config']!r}: expected one of {', '.join(MORPH_CONFIGS)}")
    cfg["morph_config"] = mc
    if not math.isfinite(float(cfg["idp_weight"])) or float(cfg["idp_weight"]) < 0:  # nan: a NaN loss at step 1
        raise opt.OptionError(f"--idp_weight={cfg['idp_weight']!r}: must be a finite number >= 0")
    return opt.validate(cfg)


def morph_model_dir(cfg: dict) -> str:
    """The official model_dir + `_morph<config>`, + `_idp<w>` when idp_weight != 1 (configs B/C),
    + `_nogcam` when the generator CAM loss is off: runs that differ in loss never share a folder."""
    cfg = dict(MORPH_DEFAULTS, **cfg)
    mc = str(cfg["morph_config"]).upper()
    name = f"{opt.model_dir(cfg)}_morph{mc}"
    if mc != "A" and float(cfg["idp_weight"]) != 1.0:
        name += f"_idp{float(cfg['idp_weight']):g}"
    if not cfg["g_cam"]:
        name += "_nogcam"
    return name


def morph_paths(cfg: dict) -> opt.Paths:
    md = morph_model_dir(cfg)
    return opt.Paths(os.path.join(cfg["checkpoint_dir"], md), os.path.join(cfg["result_dir"], md),
                     os.path.join(cfg["log_dir"], md), os.path.join(cfg["sample_dir"], md))


def _prefix(cfg: dict) -> str:
    return f"MorphUGATIT_{cfg['morph_config']}"


# -- kinds -------------------------------------------------------------------------------------------

def _weights_kind(keys) -> str:
    keys = list(keys)
    if any(k.startswith("generator.") for k in keys):
        return "morph (config C, single generator)"
    if any(k.startswith("generator_B.") for k in keys):
        return "ugatit"
    return "unknown"


def tf_prefix(path: str) -> str | None:
    """The official TF checkpoint prefix `path` names - a prefix with its `.index` beside it, or one
    of its files (.index, .meta, .data-*), as the port's --checkpoint takes them - else None."""
    if os.path.isdir(path):
        return None
    prefix = ckpt.tf_prefix_of_file(path)
    return prefix if os.path.isfile(prefix + ".index") else None


def checkpoint_kind(path: str) -> tuple[str, dict | None]:
    """What `path` holds: ("morph", state) | ("ugatit-torch", state-or-None) | ("ugatit-tf", None)
    | ("none", None). A folder: the port's checkpoint layout (state file read) or an official TF
    checkpoint; a TF prefix or one of its files (`tf_prefix`); a .safetensors file: judged by its
    variable names."""
    if tf_prefix(path) is not None:
        return "ugatit-tf", None
    if os.path.isdir(path):
        # the newest checkpoint with weights, whichever framework wrote it (the checkpoint policy);
        # the kind comes from the weights file's metadata, or (older checkpoints) the state file
        for f in policy.inventory(path):
            if not f.has_weights:
                continue
            if f.framework == "tf":
                return "ugatit-tf", None
            meta = policy.safetensors_metadata(f.weights)
            if meta.get("config"):
                if meta.get("kind") == KIND:
                    return "morph", {"kind": KIND,
                                    "morph_config": ckpt.config_in_metadata(meta, f.weights).get("morph_config")}
                return "ugatit-torch", None
            try:
                state = ckpt.load_state_file(f.base + ".state.pt")
            except ckpt.CheckpointCorrupt:
                continue
            return ("morph" if state.get("kind") == KIND else "ugatit-torch"), state
        return "none", None
    if os.path.isfile(path) and path.lower().endswith(".safetensors"):
        keys, meta = ckpt.safetensors_keys(path), policy.safetensors_metadata(path)
        kind = _weights_kind(keys)
        if meta.get("kind") == KIND or kind.startswith("morph"):
            return "morph", None
        if kind == "ugatit":
            return "ugatit-torch", None
    return "none", None


def _describe(kind: str, state) -> str:
    if kind == "morph":
        mc = (state or {}).get("morph_config", "?")
        return f"a Morph-UGATIT checkpoint (config {mc})"
    return {"ugatit-torch": "a UGATIT checkpoint of the PyTorch port (torch_port)",
            "ugatit-tf": "an official TensorFlow UGATIT checkpoint",
            "none": "no checkpoint"}.get(kind, kind)


# -- loading -----------------------------------------------------------------------------------------

def load_morph(folder: str, device="cpu") -> tuple[MorphUGATIT, dict]:
    """The newest Morph checkpoint in `folder` as a model (built from the stored config) and its
    state. Anything else raises CheckpointKindError naming what was found."""
    if not os.path.isdir(folder):
        raise CheckpointKindError(f"checkpoint folder {folder!r} does not exist (train first: python -m morph train ...)")
    kind, state = checkpoint_kind(folder)
    if kind != "morph":
        raise CheckpointKindError(f"{folder!r} holds {_describe(kind, state)}, not a Morph-UGATIT checkpoint "
                                  f"(expected one written by python -m morph train)"
                                  f"{_subfolders_hint(folder) if kind == 'none' else ''}")
    # the weights only (the policy's test-phase rule): the config is in the weights file's metadata
    # (older checkpoints: in the state file); a damaged optimizer state does not matter here
    found = ckpt.resume_point(folder, None, "weights")
    weights, state = found["weights"], None
    meta = found["meta"]  # read with the weights: the file may be pruned by a run writing the folder since
    if meta.get("config"):
        state = {"kind": meta.get("kind", KIND), "config": ckpt.config_in_metadata(meta, found["found"].weights),
                 "step": found["step"]}
        state["morph_config"] = state["config"].get("morph_config")
    else:
        state = ckpt.load_state_file(found["found"].base + ".state.pt")
    model = MorphUGATIT(state["config"])
    ckpt.load_weights_into(model, weights, found["found"].weights)
    return model.to(device), state


def _check_recorded(recorded: dict | None, cfg: dict | None, keys, path: str) -> None:
    """The run's settings `keys` of `cfg` against the config a torch_port checkpoint records (as
    read_tf_weights checks a TF checkpoint's): a light model's img_size, smoothing, ... are not
    all fixed by the weights' shapes."""
    if not recorded or cfg is None:
        return
    bad = [k for k in keys if recorded.get(k) is not None and cfg.get(k) is not None and recorded[k] != cfg[k]]
    if bad:
        raise ckpt.CheckpointMismatch(f"--init_from {path!r} does not match "
                                      + ", ".join(f"--{k} {cfg[k]}" for k in bad) + ": the checkpoint records "
                                      + ", ".join(f"{k} {recorded[k]}" for k in bad))


def _read_ugatit(path: str, cfg: dict | None = None, keys=None) -> tuple[dict, str]:
    """(weights, description) of a UGATIT checkpoint: a torch_port .safetensors file or folder,
    or an official TF checkpoint folder (converted by torch_port.checkpoint.read_tf_weights); the
    settings `keys` of `cfg` are checked against what the checkpoint records (TF: its .meta,
    folder name and weights; torch: its config)."""
    kind, state = checkpoint_kind(path)
    if kind == "morph":
        raise CheckpointKindError(f"--init_from {path!r} is {_describe(kind, state)}; --init_from expects a UGATIT "
                                  f"checkpoint (to continue a Morph run, use the same --checkpoint_dir instead)")
    if kind == "ugatit-tf":
        _, weights = ckpt.read_tf_weights(tf_prefix(path) or path, cfg, ckpt.tfc.MODEL_KEYS if keys is None else keys)
        return weights, f"{path} (TensorFlow)"
    if kind == "ugatit-torch":
        if os.path.isdir(path):
            _, weights, state = ckpt.find_latest(path)
            recorded = state.get("config")
        else:
            weights = ckpt.load_weights_file(path)
            meta = policy.safetensors_metadata(path)
            recorded = ckpt.config_in_metadata(meta, path)
            guessed = ckpt.guessed_in_metadata(meta, path)  # damaged: one error naming the file and key
            if recorded:  # tf2torch's guesses (official defaults no record held) are not records
                recorded = {k: v for k, v in recorded.items() if k not in guessed}
        _check_recorded(recorded, cfg, ckpt.tfc.MODEL_KEYS if keys is None else keys, path)
        return weights, path
    raise CheckpointKindError(f"--init_from {path!r}: no UGATIT checkpoint found there (expected a torch_port "
                              f".safetensors file or folder, or an official TF checkpoint folder, prefix or one of "
                              f"its files){_subfolders_hint(path)}")


def _subfolders_hint(path: str) -> str:
    """For a folder holding no checkpoint: its run folders that do (the `--checkpoint_dir` parent given)."""
    runs = checkpoint_subfolders(path) if os.path.isdir(path) else []
    return f"; its subfolders hold checkpoints, give one of them: {', '.join(map(repr, runs))}" if runs else ""


def init_from_ugatit(model: MorphUGATIT, path: str) -> list[str]:
    """Start `model` from a UGATIT checkpoint. Configs A/B: every variable, strictly. Config C:
    the shared generator's encoder / CAM / decoder from `generator_B` (the A->B generator; its
    feature MLP has no counterpart), the discriminators as they are; the latent MLP and the
    per-layer style maps keep their fresh initialisation. Returns the names left initialised.
    NaN / inf in what is used is refused (NonFiniteWeights, exit 2 naming the tensor), as for a
    resumed checkpoint: training on it would only stop at the first NaN loss (exit 3)."""
    # the run's architecture settings must agree with what a TF checkpoint records (config C's
    # `light` has no effect: its style comes from the latent code, not the checkpoint's MLP)
    keys = tuple(k for k in ckpt.tfc.MODEL_KEYS if not (model.single_generator and k == "light"))
    weights, source = _read_ugatit(path, model.config, keys)
    if not model.single_generator:
        refuse_non_finite(weights, f"--init_from {source}")  # never trained on: exit 2, not a NaN loss
        ckpt.load_weights_into(model, weights, source)
        return []
    mapped = {}
    for k, v in weights.items():
        if k.startswith("generator_B."):
            rest = k[len("generator_B."):]
            if not rest.startswith("MLP."):
                mapped["generator." + rest] = v
        elif k.startswith("discriminator_"):
            mapped[k] = v
    refuse_non_finite(mapped, f"--init_from {source}")  # what is used: generator_B's shared part, the discriminators
    own = model.state_dict()
    bad = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}" for k, v in mapped.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    unknown = sorted(set(mapped) - set(own))
    if bad or unknown:
        raise ckpt.CheckpointMismatch(f"checkpoint {source} does not match the Morph model (check --ch, --n_res, "
                                      f"--n_dis, --img_size, --sn): {bad[:3]} {unknown[:3]}")
    fresh = sorted(set(own) - set(mapped))
    expected_fresh = [k for k in fresh if k.startswith(("generator.mapping.", "generator.style_"))]
    if len(expected_fresh) != len(fresh):
        missing = sorted(set(fresh) - set(expected_fresh))
        raise ckpt.CheckpointMismatch(f"checkpoint {source} lacks variables the Morph model shares with UGATIT, "
                                      f"e.g. {missing[:5]}")
    model.load_state_dict(mapped, strict=False)
    return fresh


# -- training: the port's trainer ----------------------------------------------------------------------

class MorphTrainer(Trainer):
    """The port's `Trainer` for Morph-UGATIT (see the module docstring); `init_from`: a UGATIT
    checkpoint to start from when the folder holds no Morph checkpoint."""

    LOSS_LOG = "losses.jsonl"
    MOVE_ASIDE = ("sample", "log")
    WRITER = "morph"

    def __init__(self, cfg: dict, device="cpu", init_from: str | None = None, **kw):
        self.init_from = init_from
        super().__init__(cfg, device, **kw)

    def prepare_config(self, cfg):
        return validate_morph(dict(cfg, phase="train"))

    def run_paths(self):
        return morph_paths(self.cfg)

    def prefix(self):
        return _prefix(self.cfg)

    def build_model(self):
        model = MorphUGATIT(self.cfg)
        model.z_generator = torch.Generator().manual_seed(self.seed)
        model.z_shard = (self.dist_info.rank, self.dist_info.world_size)
        return model

    def check_checkpoint_kind(self):
        """A folder whose newest checkpoint (with weights) is a UGATIT one - an official TF / tf_reference
        run's, or the port's - is refused with what it holds and what to use instead, before the
        resume reads it (which would refuse it for its image size or its missing Adam state) and
        before anything there is swept or set aside."""
        folder = self.paths.checkpoint
        kind, state = checkpoint_kind(folder)
        if kind not in ("ugatit-tf", "ugatit-torch"):
            return
        newest = next((os.path.basename(f.base) for f in policy.inventory(folder) if f.has_weights), "")
        resume = "python -m tf_reference or python -m torch_port" if kind == "ugatit-tf" else "python -m torch_port"
        raise CheckpointKindError(f"--checkpoint_dir: {folder!r} holds {_describe(kind, state)} ({newest}), not a "
                                  f"Morph-UGATIT checkpoint: Morph cannot resume it. To start a Morph run from its "
                                  f"weights, pass --init_from {folder} with another --checkpoint_dir; to continue "
                                  f"that run, use {resume}")

    def find_checkpoint(self):
        # the image size only (a light model's weights do not fix it; the rest is in the folder's name or
        # the weights' shapes): a resume at another --img_size is refused, as the port refuses it
        found = ckpt.resume_point(self.paths.checkpoint, {"img_size": self.cfg["img_size"]}, "train", log=self.log,
                                  owner=getattr(self, "owner", None))
        if found is None:
            return None
        state = found.get("state") or {}
        if found["framework"] == "tf" or state.get("kind") != KIND:
            kind = "ugatit-tf" if found["framework"] == "tf" else "ugatit-torch"
            raise CheckpointKindError(f"{self.paths.checkpoint!r} holds {_describe(kind, state)}, not a Morph-UGATIT "
                                      f"checkpoint; use --init_from to start from it, or another --checkpoint_dir")
        if state.get("morph_config") != self.cfg["morph_config"]:
            raise CheckpointKindError(f"{self.paths.checkpoint!r} holds config {state.get('morph_config')}, "
                                      f"not {self.cfg['morph_config']}")
        if self.init_from:
            self.log(" [!] --init_from ignored: the run resumes from its own checkpoint")
        return found

    def host_draws(self):
        return [(self.model, "make_z")] if self.model.single_generator else []  # config C's direction codes

    def extra_state(self):
        return {"kind": KIND, "morph_config": self.cfg["morph_config"], "z_rng": self.model.z_generator.get_state()}

    def load_extra_state(self, state):
        self.model.z_generator.set_state(state["z_rng"])

    def check_fresh_start(self):
        if self.init_from:  # every check of --init_from (kind, settings, shapes, finite), on a model of its own
            model = MorphUGATIT(self.cfg)
            self._checked_start = (model, init_from_ugatit(model, self.init_from))

    def start_fresh(self):
        if not self.init_from:
            return
        checked = getattr(self, "_checked_start", None)
        if checked is not None:  # read and checked already: its weights, the fresh ones keep the run's seeded values
            model, fresh = checked
            self._checked_start = None
            keep = set(fresh)
            self.model.load_state_dict({k: v for k, v in model.state_dict().items() if k not in keep}, strict=False)
        else:
            fresh = init_from_ugatit(self.model, self.init_from)
        kind = "TensorFlow" if checkpoint_kind(self.init_from)[0] == "ugatit-tf" else "PyTorch"
        self.log(f" [*] initialised from UGATIT {self.init_from} ({kind}; {len(fresh)} new latent variables)")
        self.model.make_optimizers(self.cfg["lr"])  # fresh slots for the loaded weights


def train(cfg: dict, device="cpu", seed: int = 0, base: str = ".", init_from: str | None = None,
          keep_checkpoints: int = 5, log=None, resume: bool = True, num_workers: int = 0,
          precision: str = "fp32", compile: bool = False, cuda_graphs="auto") -> dict:
    """Train (or resume) a Morph-UGATIT run through the port's trainer; returns {"history",
    "checkpoint_dir", "counter", "model", "paths"}. `base`: folder holding dataset/<name>/ (default:
    the working directory, as officially). `resume=False`: an older run in the checkpoint folder
    (and its samples and logs) is moved into previous-run-<time>/ (the checkpoint policy)."""
    return MorphTrainer(cfg, device, init_from=init_from, seed=seed, base=base, keep_checkpoints=keep_checkpoints,
                        log=log, resume=resume, num_workers=num_workers, precision=precision,
                        compile=compile, cuda_graphs=cuda_graphs).run()
