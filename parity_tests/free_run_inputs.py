"""What both trainers of a free run share: the start state, the batches, the random draws and the
probe inputs, all drawn once in numpy and handed to both (parity_tests/free_run.py).

The start state is one dict {TF variable name: array in TF layout}: weights, spectral-norm `u`,
Adam slots and the four powers, either read from an official TF checkpoint (config inferred as
the rest of the project does, flags checked against it) or the port's own seeded initialisation
(the official initialisers' distributions: kernels N(0, 0.02), `u` N(0, 1), biases 0, gamma 1,
AdaLIN rho 1, LIN rho 0), with fresh Adam state (zero slots, powers beta1, beta2 in float32).
"""
from __future__ import annotations

import os

import numpy as np

from ugatit_common import options as opt
from ugatit_common.tf_checkpoint import names as tfn

POWERS = {"beta1_power": 0.5, "beta2_power": 0.999, "beta1_power_1": 0.5, "beta2_power_1": 0.999}


class FreeRunInputError(opt.OptionError):
    """A checkpoint, data set or flag a free run cannot start from (exit 2)."""


def checkpoint_config(path: str, flags: dict):
    """(config, CheckpointConfig) of an official TF checkpoint; `flags`: the settings given on the
    command line (None: not given), which must agree with what the checkpoint records."""
    from ugatit_common.tf_checkpoint import CheckpointError, ConfigConflict, ConversionError, read_config
    if not (os.path.exists(path) or os.path.isfile(path + ".index")):
        raise FreeRunInputError(f"--checkpoint {path!r}: no such file or folder")
    try:
        info = read_config(path, {k: v for k, v in flags.items() if v is not None})
    except ConfigConflict as e:
        raise FreeRunInputError(f"--checkpoint {path!r} contradicts the flags: {e}") from e
    except (CheckpointError, ConversionError, OSError) as e:
        raise FreeRunInputError(f"--checkpoint {path!r}: not a readable TensorFlow U-GAT-IT checkpoint: {e}") from e
    return info.config, info


def checkpoint_state(path: str) -> tuple[dict, int, bool]:
    """({TF name: float64 array, powers float32}, step, had_optimizer_state) of every network
    variable of an official TF checkpoint; a checkpoint without Adam state (weights only) starts
    with fresh slots. All four networks are needed, and every value finite (NaN / inf:
    NonFiniteWeights, exit 2 naming the tensor)."""
    from ugatit_common.tf_checkpoint import BundleReader, CheckpointError
    try:
        with BundleReader(path) as r:
            names = list(tfn.selected(r.keys(), with_optimizer=True))
            state = {n: np.asarray(r.read(n)) for n in names}
            step = tfn.checkpoint_step(r.prefix)
    except (CheckpointError, OSError) as e:
        raise FreeRunInputError(f"--checkpoint {path!r}: cannot read its tensors: {e}") from e
    missing = [net for net in tfn.NETWORKS if not any(n.startswith(net + "/") for n in state)]
    if missing:
        raise FreeRunInputError(f"--checkpoint {path!r} holds no {', '.join(missing)}: training needs both "
                                f"generators and both discriminators")
    from ugatit_common.finite import refuse_non_finite  # both sides would train on it: exit 2, not a drift
    refuse_non_finite(state, f"--checkpoint {path!r}")
    has_adam = all(p in state for p in POWERS) and any(n.endswith("/Adam") for n in state)
    out = {}
    for name, value in state.items():
        if name in POWERS:
            out[name] = np.float32(value)
        elif has_adam or not tfn.split_slot(name)[1]:
            out[name] = np.asarray(value, np.float64)
    if not has_adam:
        out.update(fresh_adam_state(out))
    return out, step, has_adam


def fresh_adam_state(weights: dict) -> dict:
    """Zero slots for every trainable variable (not `u`) and the powers TF starts from."""
    out = {}
    for name, value in weights.items():
        if not name.endswith("/u") and not tfn.split_slot(name)[1] and name not in POWERS:
            out[name + "/Adam"] = np.zeros_like(value, np.float64)
            out[name + "/Adam_1"] = np.zeros_like(value, np.float64)
    out.update({k: np.float32(v) for k, v in POWERS.items()})
    return out


def seeded_state(cfg: dict, seed: int) -> dict:
    """The port's initialisation under torch.manual_seed(seed) (the official distributions), in TF
    names and layout, float64, with fresh Adam state."""
    import torch

    from torch_port import build_ugatit
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_ugatit(cfg)
    sn = {k[: -len(".u")] for k in model.state_dict() if k.endswith(".u")}
    weights = {tfn.torch_to_tf_name(k, sn): np.asarray(tfn.to_tf_layout(k, v.detach().numpy()), np.float64)
               for k, v in model.state_dict().items()}
    weights.update(fresh_adam_state(weights))
    return weights


def perturbed(state: dict, rel: float, seed: int) -> dict:
    """`state` with every trainable variable multiplied by 1 + rel * N(0, 1) (numpy, seeded; `u`,
    slots and powers unchanged): a second start point a rounding-size distance away."""
    rng = np.random.default_rng([int(seed), 11])
    out = {}
    for name in sorted(state):
        value = state[name]
        if name in POWERS or name.endswith("/u") or tfn.split_slot(name)[1]:
            out[name] = value
        else:
            out[name] = value * (1.0 + rel * rng.standard_normal(np.shape(value)))
    return out


# ---------------------------------------------------------------- data
def demo_images(img_size: int, n: int = 4, seed: int = 0) -> dict:
    """{"A": [uint8 HWC RGB], "B": [...]}: the built-in procedural data set (ugatit_common.demo_data),
    drawn at img_size in memory."""
    from ugatit_common.demo_data import demo_image
    return {d: [np.ascontiguousarray(demo_image(seed, d, "train", i, img_size)[:, :, ::-1]) for i in range(n)]
            for d in "AB"}


def folder_images(folder: str) -> dict:
    """{"A": [...], "B": [...]} decoded from FOLDER/trainA and FOLDER/trainB (the official decoder,
    unreadable files skipped with a warning as in training)."""
    import sys

    from ugatit_common.images import decode_image, readable_train_images
    out = {}
    for d in "AB":
        sub = os.path.join(folder, "train" + d)
        if not os.path.isdir(sub):
            raise FreeRunInputError(f"--dataset {folder!r}: no train{d} folder there (expected trainA/ and trainB/)")
        files = sorted(os.path.join(sub, f) for f in os.listdir(sub) if os.path.isfile(os.path.join(sub, f)))
        good = readable_train_images(files, lambda m: print(f"warning: {m}", file=sys.stderr))
        if not good:
            raise FreeRunInputError(f"--dataset {folder!r}: no readable image in train{d}")
        out[d] = [decode_image(f) for f in good]
    return out


class Draws:
    """Every random input of the run, from one numpy Generator: each D or G run's batch per domain
    (each domain its own reshuffled stream, as the official iterators; augmentation as
    torch_port.data.train_transform with this generator's coins and crops) and a D run's
    gradient-penalty draws (alpha [B,1,1,1] and, for dragan, the noise, uniform in [0, 1))."""

    def __init__(self, images: dict, cfg: dict, seed: int):
        self.images, self.cfg = images, cfg
        self.rng = np.random.default_rng([int(seed), 7])
        self._order = {d: [] for d in "AB"}

    def _next_index(self, d: str) -> int:
        if not self._order[d]:
            self._order[d] = list(self.rng.permutation(len(self.images[d])))
        return int(self._order[d].pop(0))

    def batch(self) -> dict:
        """{"A": NHWC float64, "B": NHWC float64}: the official float32 pipeline values."""
        from torch_port.data import train_transform
        size, aug, bs = self.cfg["img_size"], bool(self.cfg["augment_flag"]), self.cfg["batch_size"]
        out = {}
        for d in "AB":
            chw = [train_transform(self.images[d][self._next_index(d)], size, aug, self.rng) for _ in range(bs)]
            out[d] = np.stack(chw).transpose(0, 2, 3, 1).astype(np.float64)
        return out

    def gradient_penalty(self) -> dict:
        """{"alpha_A", "alpha_B"(, "noise_A", "noise_B")} NHWC float64, or {} for a loss without one."""
        gan = self.cfg["gan_type"]
        if not ("wgan" in gan or gan == "dragan"):
            return {}
        bs, size = self.cfg["batch_size"], self.cfg["img_size"]
        out = {f"alpha_{d}": self.rng.uniform(0.0, 1.0, (bs, 1, 1, 1)) for d in "AB"}
        if gan == "dragan":
            out.update({f"noise_{d}": self.rng.uniform(0.0, 1.0, (bs, size, size, 3)) for d in "AB"})
        return out


def probe_inputs(images: dict, cfg: dict) -> dict:
    """Fixed probe inputs {"A": NHWC float64, "B": ...}: the first image of each domain, resized
    as the train pipeline does (no augmentation)."""
    from torch_port.data import train_transform
    return {d: train_transform(images[d][0], cfg["img_size"], False)[None].transpose(0, 2, 3, 1).astype(np.float64)
            for d in "AB"}
