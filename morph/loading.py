"""A Morph-UGATIT checkpoint loaded for use (interpolate, translate, export).

`load(path, device, typed)`: `path` is a checkpoint folder (the newest Morph checkpoint in it,
morph.train.load_morph) or one of its weights files (`<prefix>.model-N.safetensors`; the config
comes from the file's metadata, or the `.state.pt` beside it). Then, as the port's test phase
does with `--checkpoint`:
- the model flags the user typed (`typed`: {config key: value}; defaults do not count) must agree
  with what the checkpoint records, else exit 2 naming each flag, the value given and the
  recorded one. `--img_size` is honoured where the weights do not fix it (config C, whose
  generator is always the light one, and light configs A/B: the model is rebuilt at that size,
  as the port's test phase translates a light checkpoint at any given size); a full (light=False)
  A/B model is fixed to its size by its MLP, so another size is refused;
- NaN or inf in any tensor the commands run (everything but the discriminators) is refused
  (exit 2 naming the first such tensor and how many of its values); a translation or morph frame
  that comes out NaN / inf from finite weights is not written either (exit 2, `precision_of`
  names a reduced-precision fast path).
"""
from __future__ import annotations

import os

from torch_port import checkpoint as ckpt
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.finite import refuse_non_finite

from .model import MorphUGATIT
from .train import CheckpointKindError, _describe, checkpoint_kind, load_morph

__all__ = ["CHECKED_KEYS", "load", "check_typed_flags", "precision_of"]

# settings a typed flag is checked against: the architecture, the ablation config, and the
# settings that name the run's folder (with --checkpoint they would otherwise be ignored)
CHECKED_KEYS = opt.MODEL_KEYS + ("morph_config", "dataset", "gan_type", "idp_weight", "g_cam")
FLAG_OF = {"morph_config": "config"}


def _load_file(path: str):
    if not path.lower().endswith(".safetensors"):
        raise CheckpointKindError(f"--checkpoint {path!r} is a file, not a Morph checkpoint: expected a checkpoint "
                                  f"folder or its weights file <prefix>.model-N.safetensors")
    kind, state = checkpoint_kind(path)
    if kind != "morph":
        raise CheckpointKindError(f"{path!r} holds {_describe(kind, state)}, not a Morph-UGATIT checkpoint "
                                  f"(expected one written by python -m morph train)")
    meta = policy.safetensors_metadata(path)
    if meta.get("config"):
        config = ckpt.config_in_metadata(meta, path)  # a damaged one: one error naming the file
        step = policy.recorded_step(meta.get("step"), path)
    else:  # older checkpoints: the config is in the state file beside the weights
        sp = path[: -len(".safetensors")] + ".state.pt"
        if not os.path.isfile(sp):
            raise CheckpointKindError(f"{path!r} records no config (no metadata, no {os.path.basename(sp)} beside it)")
        st = ckpt.load_state_file(sp)
        config, step = st.get("config"), int(st.get("counter", st.get("step", 0)) or 0)
        if not isinstance(config, dict):
            raise CheckpointKindError(f"{sp!r} records no config")
    weights = ckpt.load_weights_file(path)
    model = MorphUGATIT(config)
    ckpt.load_weights_into(model, weights, path)
    state = {"kind": "morph", "config": config, "step": step, "morph_config": config.get("morph_config")}
    return model, state


def _same(key: str, given, recorded) -> bool:
    if key == "morph_config":
        return str(given).upper() == str(recorded).upper()
    if key == "idp_weight":
        return float(given) == float(recorded)
    return given == recorded


def check_typed_flags(model: MorphUGATIT, typed: dict, source: str) -> MorphUGATIT:
    """`model`, or the same weights rebuilt at a typed `--img_size` the weights do not fix; raises
    CheckpointMismatch naming every typed flag that contradicts the checkpoint."""
    recorded = model.config
    bad, size = [], None
    for key, value in typed.items():
        if key not in CHECKED_KEYS or value is None or key not in recorded:
            continue
        have = recorded[key]
        if _same(key, value, have):
            continue
        if key == "img_size" and (model.single_generator or recorded.get("light")):
            size = int(value)
            continue
        why = " (a full, light=False, model is fixed to its size by its MLP)" if key == "img_size" else ""
        bad.append(f"--{FLAG_OF.get(key, key)}={value!r} contradicts the checkpoint {source}, which records "
                   f"{key}={have!r}{why}")
    if bad:
        raise ckpt.CheckpointMismatch("; ".join(bad))
    if size is None:
        return model
    opt.validate(dict(opt.config_from({k: v for k, v in recorded.items() if k in opt.DEFAULTS}),
                      img_size=size, phase="test"))
    resized = MorphUGATIT(dict(recorded, img_size=size))
    resized.load_state_dict(model.state_dict(), strict=True)
    resized.z_generator = model.z_generator
    print(f" [*] --img_size={size}: running at {size} px (the checkpoint was trained at {recorded['img_size']} px; "
          f"its weights do not fix the size)")
    return resized


def load(path: str, device="cpu", typed: dict | None = None):
    """(model in eval mode on `device`, state) of the Morph checkpoint at `path` (a folder or a
    weights file), checked against the typed flags and for non-finite weights."""
    if not os.path.isdir(path) and checkpoint_kind(path)[0] == "ugatit-tf":  # a TF prefix or one of its files
        raise CheckpointKindError(f"{path!r} is {_describe('ugatit-tf', None)}, not a Morph-UGATIT checkpoint "
                                  f"(expected one written by python -m morph train)")
    if os.path.isfile(path):
        model, state = _load_file(path)
    elif os.path.isdir(path):
        model, state = load_morph(path, "cpu")
    else:
        raise CheckpointKindError(f"checkpoint {path!r} does not exist (train first: python -m morph train ...)")
    model = check_typed_flags(model, dict(typed or {}), path)
    refuse_non_finite({k: v for k, v in model.state_dict().items() if not k.startswith("discriminator")},
                      f"checkpoint {path}")
    return model.to(device).eval(), state


def precision_of(model) -> str | None:
    """The fast path (torch_port.fast) the loaded model's generator runs, None: the exact float32
    port; named when a translation comes out NaN / inf (ugatit_common.finite.refuse_non_finite_output)."""
    for attr in ("generator", "generator_B", "generator_A"):
        g = model._modules.get(attr)
        if g is not None:
            return getattr(g, "precision", None)
    return None
