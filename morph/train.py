"""Training and checkpoints of Morph-UGATIT.

The port's trainer (`torch_port.train.train`) builds a plain `UGATIT` itself (no model-factory
seam), so this is a compact loop of the same shape that reuses the port's pieces:
`torch_port.data` (datasets, loaders), `torch_port.checkpoint` (atomic safetensors weights +
`weights_only` state file + `latest` pointer, pruning, RNG states), `ugatit_common.options`
(flags, validation, model_dir, learning-rate schedule, progress line) and
`ugatit_common.results` (samples).

Loop (as the official / the port's): epochs x iterations, counter from 1, lr =
learning_rate(cfg, epoch); per iteration one D step and, when (counter - 1) % n_critic == 0,
one G step on a new batch; samples every print_freq, a checkpoint every save_freq and at each
epoch end. Checkpoints go to `<checkpoint_dir>/<model_dir>_morph<A|B|C>/` with prefix
`MorphUGATIT_<A|B|C>`; the state file stores kind = "morph", the morph config, the full config,
optimizer states, RNG states (global and the z generator's) and the loop / loader positions, so
a resumed run continues exactly.

Checkpoint kinds are told apart (`checkpoint_kind`): a Morph one where a UGATIT one is needed
(`--init_from`) or a UGATIT / TF one where a Morph one is needed (resume, interpolate,
translate) raises `CheckpointKindError` naming what was found.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from torch_port import checkpoint as ckpt
from torch_port.data import ImageFolderDataset, infinite_loader
from ugatit_common import checkpoint_policy as policy
from ugatit_common import cli_errors
from ugatit_common import options as opt
from ugatit_common.results import save_grid

from .model import MORPH_CONFIGS, MORPH_DEFAULTS, MorphUGATIT

__all__ = ["CheckpointKindError", "morph_model_dir", "morph_paths", "checkpoint_kind", "load_morph",
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
    if float(cfg["idp_weight"]) < 0:
        raise opt.OptionError(f"--idp_weight={cfg['idp_weight']!r}: must be >= 0")
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


def checkpoint_kind(path: str) -> tuple[str, dict | None]:
    """What `path` holds: ("morph", state) | ("ugatit-torch", state-or-None) | ("ugatit-tf", None)
    | ("none", None). A folder: the port's checkpoint layout (state file read) or an official TF
    checkpoint; a .safetensors file: judged by its variable names."""
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
                    return "morph", {"kind": KIND, "morph_config": json.loads(meta["config"]).get("morph_config")}
                return "ugatit-torch", None
            try:
                state = ckpt.load_state_file(f.base + ".state.pt")
            except ckpt.CheckpointCorrupt:
                continue
            return ("morph" if state.get("kind") == KIND else "ugatit-torch"), state
        return "none", None
    if os.path.isfile(path) and path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
            meta = f.metadata() or {}
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
                                  f"(expected one written by python -m morph train)")
    # the weights only (the policy's test-phase rule): the config is in the weights file's metadata
    # (older checkpoints: in the state file); a damaged optimizer state does not matter here
    found = ckpt.resume_point(folder, None, "weights")
    weights, state = found["weights"], None
    meta = policy.safetensors_metadata(found["found"].weights)
    if meta.get("config"):
        import json as _json
        state = {"kind": meta.get("kind", KIND), "config": _json.loads(meta["config"]), "step": found["step"]}
        state["morph_config"] = state["config"].get("morph_config")
    else:
        state = ckpt.load_state_file(found["found"].base + ".state.pt")
    model = MorphUGATIT(state["config"])
    ckpt.load_weights_into(model, weights, found["found"].weights)
    return model.to(device), state


def _read_ugatit(path: str, cfg: dict | None = None, keys=None) -> tuple[dict, str]:
    """(weights, description) of a UGATIT checkpoint: a torch_port .safetensors file or folder,
    or an official TF checkpoint folder (converted by torch_port.checkpoint.read_tf_weights: the
    settings `keys` of `cfg` are checked against what the TF checkpoint records)."""
    kind, state = checkpoint_kind(path)
    if kind == "morph":
        raise CheckpointKindError(f"--init_from {path!r} is {_describe(kind, state)}; --init_from expects a UGATIT "
                                  f"checkpoint (to continue a Morph run, use the same --checkpoint_dir instead)")
    if kind == "ugatit-tf":
        _, weights = ckpt.read_tf_weights(path, cfg, ckpt.tfc.MODEL_KEYS if keys is None else keys)
        return weights, f"{path} (TensorFlow)"
    if kind == "ugatit-torch":
        if os.path.isdir(path):
            _, weights, _ = ckpt.find_latest(path)
            return weights, path
        from safetensors.torch import load_file
        return load_file(path), path
    raise CheckpointKindError(f"--init_from {path!r}: no UGATIT checkpoint found there (expected a torch_port "
                              f".safetensors file or folder, or an official TF checkpoint folder)")


def init_from_ugatit(model: MorphUGATIT, path: str) -> list[str]:
    """Start `model` from a UGATIT checkpoint. Configs A/B: every variable, strictly. Config C:
    the shared generator's encoder / CAM / decoder from `generator_B` (the A->B generator; its
    feature MLP has no counterpart), the discriminators as they are; the latent MLP and the
    per-layer style maps keep their fresh initialisation. Returns the names left initialised."""
    # the run's architecture settings must agree with what a TF checkpoint records (config C's
    # `light` has no effect: its style comes from the latent code, not the checkpoint's MLP)
    keys = tuple(k for k in ckpt.tfc.MODEL_KEYS if not (model.single_generator and k == "light"))
    weights, source = _read_ugatit(path, model.config, keys)
    if not model.single_generator:
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


# -- training ----------------------------------------------------------------------------------------

def _loader(dataset, batch_size, seed, skip):
    return infinite_loader(dataset, batch_size, seed=seed, start=int(skip))


def train(cfg: dict, device="cpu", seed: int = 0, base: str = ".", init_from: str | None = None,
          keep_checkpoints: int = 3, log=print, resume: bool = True) -> dict:
    """Train (or resume) a Morph-UGATIT run; returns {"history", "checkpoint_dir", "counter", "model"}.
    `base`: folder holding dataset/<name>/ (default: the working directory, as officially).
    `resume=False`: an older run in the checkpoint folder (and its samples and loss log) is moved
    into previous-run-<time>/ (the checkpoint policy), and this run starts fresh."""
    cfg = validate_morph(dict(cfg, phase="train"))
    device = torch.device(device)
    paths = morph_paths(cfg)
    files_A = opt.domain_files(cfg, "trainA", base)
    files_B = opt.domain_files(cfg, "trainB", base)
    ds_A = ImageFolderDataset(files_A, cfg["img_size"], cfg["augment_flag"], seed=seed)
    ds_B = ImageFolderDataset(files_B, cfg["img_size"], cfg["augment_flag"], seed=seed + 1)
    for p, flag in ((paths.checkpoint, "--checkpoint_dir"), (paths.sample, "--sample_dir"), (paths.log, "--log_dir")):
        cli_errors.check_writable_folder(p, flag)  # fail now, not at the first save
    policy.sweep_temp(paths.checkpoint, log)
    policy.sweep_temp(paths.sample, log)

    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    model = MorphUGATIT(cfg).to(device)
    model.z_generator = torch.Generator().manual_seed(seed)
    model.make_optimizers(cfg["lr"])

    counter, start_epoch, start_batch, pos_A, pos_B, past_g = 1, 0, 0, 0, 0, -1.0
    # the checkpoint policy (ugatit_common.checkpoint_policy): the newest usable checkpoint; newer
    # unusable ones are named and moved to unusable/; some but none usable: exit 2, never from scratch
    if not resume:
        moved = policy.move_previous_run(paths.checkpoint, log)
        if moved:
            for folder in (paths.sample, paths.log):
                policy.move_previous_outputs(folder, os.path.basename(moved), log)
    found = ckpt.resume_point(paths.checkpoint, None, "train", log=log, set_aside=True)
    if found is None:
        kind, state = "none", None
    elif found["framework"] == "tf":
        kind, state = "ugatit-tf", None
    else:
        state = found["state"]
        kind = "morph" if state.get("kind") == KIND else "ugatit-torch"
    run_id = policy.new_run_id()
    if kind == "morph":
        if state.get("morph_config") != cfg["morph_config"]:
            raise CheckpointKindError(f"{paths.checkpoint!r} holds config {state.get('morph_config')}, "
                                      f"not {cfg['morph_config']}")
        weights = found["weights"]
        run_id = state.get("run") or run_id
        cli_errors.note_checkpoint(found["found"].name)
        ckpt.load_weights_into(model, weights, found["found"].weights)
        model.G_optim.load_state_dict(state["G_optim"])
        model.D_optim.load_state_dict(state["D_optim"])
        ckpt.set_rng_state(state["rng"])
        model.z_generator.set_state(state["z_rng"])
        counter, start_epoch, start_batch = int(state["counter"]), int(state["epoch"]), int(state["batch_id"])
        pos_A, pos_B, past_g = int(state["loader_A"]), int(state["loader_B"]), float(state["past_g_loss"])
        log(f" [*] resumed {paths.checkpoint} at counter {counter}")
        if init_from:
            log(" [!] --init_from ignored: the run resumes from its own checkpoint")
    elif kind != "none":
        raise CheckpointKindError(f"{paths.checkpoint!r} holds {_describe(kind, state)}, not a Morph-UGATIT "
                                  f"checkpoint; use --init_from to start from it, or another --checkpoint_dir")
    elif init_from:
        fresh = init_from_ugatit(model, init_from)
        kind = "TensorFlow" if checkpoint_kind(init_from)[0] == "ugatit-tf" else "PyTorch"
        log(f" [*] initialised from UGATIT {init_from} ({kind}; {len(fresh)} new latent variables)")
        model.make_optimizers(cfg["lr"])  # fresh slots for the loaded weights

    it_A = _loader(ds_A, cfg["batch_size"], seed, pos_A)
    it_B = _loader(ds_B, cfg["batch_size"], seed + 1, pos_B)
    feed = {"A": pos_A, "B": pos_B}

    def next_batch(which):
        feed[which] += 1
        return next(it_A if which == "A" else it_B).to(device)

    history = []
    hist_path = os.path.join(paths.log, "losses.jsonl")
    last_saved = None

    def save(next_epoch, next_batch_id):
        nonlocal last_saved
        if next_batch_id >= cfg["iteration"]:
            next_epoch, next_batch_id = next_epoch + 1, 0
        if last_saved == counter:
            return
        st = {"kind": KIND, "morph_config": cfg["morph_config"], "config": ckpt.plain_config(cfg),
              "counter": counter, "epoch": next_epoch, "batch_id": next_batch_id,
              "loader_A": feed["A"], "loader_B": feed["B"], "past_g_loss": float(past_g),
              "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict(),
              "rng": ckpt.rng_state(), "z_rng": model.z_generator.get_state(), "run": run_id}
        ckpt.save(paths.checkpoint, _prefix(cfg), counter, model, st, keep_checkpoints)
        cli_errors.note_checkpoint(f"{_prefix(cfg)}.model-{counter}")
        last_saved = counter

    t0 = time.time()
    real_A = real_B = fake_A = fake_B = None
    with open(hist_path, "a") as hist_file:
        for epoch in range(start_epoch, cfg["epoch"]):
            lr = opt.learning_rate(cfg, epoch)
            for idx in range(start_batch, cfg["iteration"]):
                d = model.d_step(next_batch("A"), next_batch("B"), lr)
                g = None
                if (counter - 1) % cfg["n_critic"] == 0:
                    real_A, real_B = next_batch("A"), next_batch("B")
                    g = model.g_step(real_A, real_B, lr)
                    fake_A, fake_B = g.pop("fake_A"), g.pop("fake_B")
                    past_g = g["Generator_loss"]
                for name, v in list(d.items()) + list((g or {}).items()):
                    if not np.isfinite(v):
                        raise FloatingPointError(f"{name} is {v} at counter {counter}")
                rec = {"counter": counter, "d_loss": d["Discriminator_loss"], "g_loss": past_g, **d, **(g or {})}
                history.append(rec)
                hist_file.write(json.dumps(rec) + "\n")
                log(opt.iteration_line(epoch, idx, cfg["iteration"], time.time() - t0,
                                       d["Discriminator_loss"], past_g))
                counter += 1
                cli_errors.note_step(counter - 1)
                if (idx + 1) % cfg["print_freq"] == 0 and real_A is not None:
                    nhwc = [t[:1].permute(0, 2, 3, 1).float().cpu().numpy() for t in (real_A, fake_B, real_B, fake_A)]
                    save_grid(nhwc, os.path.join(paths.sample, f"sample_{epoch:02d}_{idx + 1:06d}.png"), ncols=4)
                if (idx + 1) % cfg["save_freq"] == 0:
                    save(epoch, idx + 1)
            start_batch = 0
            save(epoch + 1, 0)
    return {"history": history, "checkpoint_dir": paths.checkpoint, "counter": counter, "model": model,
            "paths": paths}
