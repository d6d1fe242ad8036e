"""The official train phase with the PyTorch port.

Loop exactly as the official `UGATIT.train`: epochs x iterations, `counter` starting at 1 (or at
the checkpoint's counter), `lr = learning_rate(cfg, epoch)`, per iteration one D step and - when
`(counter - 1) % n_critic == 0` - one G step, each on a NEW batch, the official progress line,
samples every print_freq, a checkpoint every save_freq and at each epoch end (named by counter).

Determinism / resume: every random draw is a function of the seed and the loop position. The
data order is `infinite_loader`'s (seed, pass) permutation and each item's augmentation is a
function of (seed, pass, index); the loaders' batch positions are stored in the checkpoint and
a resumed loader starts exactly there. The global torch/numpy/python RNG states (used by the
gradient-penalty draws) are stored and restored. So 2N iterations and N + resume + N end with
bit-identical weights. A torch checkpoint stores the true loop position (epoch, next batch
id); a TF checkpoint only has the counter, so its resume position is the official
`resume_position(counter, iteration)` (which, as officially, skips one batch after a fresh run
since the counter starts at 1).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch

from ugatit_common import checkpoint_policy as policy
from ugatit_common import cli_errors
from ugatit_common import options as opt
from ugatit_common.results import save_grid, save_image

from . import checkpoint as ckpt
from . import distributed as ddp
from .data import ImageFolderDataset, ImageReadError, infinite_loader
from .model import build_ugatit

NAN_HOOK_ENV = "UGATIT_TORCH_INJECT_NAN_AT"  # hidden test hook: counter at which d_loss becomes NaN


class NonFiniteLoss(RuntimeError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise opt.OptionError(f"--device={name!r}: CUDA is not available on this machine")
    return torch.device(name)


def resumable_loader(dataset, batch_size: int, seed: int, start: int = 0, num_workers: int = 0,
                     rank: int = 0, world_size: int = 1):
    """`infinite_loader` (same permutations, shards and batches, batches spanning passes as TF's)
    started at batch `start`."""
    return infinite_loader(dataset, batch_size, seed, num_workers, rank, world_size, start=start)


class _Feed:
    """A loader that counts the batches it hands out (its resume position)."""

    def __init__(self, dataset, batch_size, seed, start, num_workers, dist_info, device):
        self.pos = int(start)
        self.device = device
        self._it = resumable_loader(dataset, batch_size, seed, start, num_workers,
                                    dist_info.rank, dist_info.world_size)

    def next(self) -> torch.Tensor:
        self.pos += 1
        return next(self._it).to(self.device)


def gp_draws(cfg, real_A, real_B, seed, counter, rank=0):
    """The gradient-penalty draws of one D step as a function of (seed, counter, rank): alpha
    ~ U[0,1) of shape [B,1,1,1] and (dragan) noise ~ U[0,1) of the image shape."""
    from .losses import uses_gradient_penalty
    if not uses_gradient_penalty(cfg["gan_type"]):
        return None
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(counter)) * 1009 + int(rank))
    out = {}
    for name, real in (("A", real_A), ("B", real_B)):
        out["alpha_" + name] = torch.rand(real.shape[0], 1, 1, 1, generator=g).to(real.device, real.dtype)
        out["noise_" + name] = torch.rand(real.shape, generator=g).to(real.device, real.dtype)
    return out


def print_information(cfg, sizes, device, paths, dist_info):
    print(opt.information(cfg, max(sizes)))
    print(f"\n# trainA / trainB images : {sizes[0]} / {sizes[1]}")
    for key in ("img_size", "ch", "augment_flag", "seed"):
        print(f"# {key} : ", cfg.get(key))
    print(f"# device : {device}" + (f" (rank {dist_info.rank} of {dist_info.world_size})"
                                    if dist_info.enabled else "")
          + (f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""))
    print(f"# model_dir : {opt.model_dir(cfg)}")
    print(f"# checkpoint : {paths.checkpoint}\n# samples : {paths.sample}\n# logs : {paths.log}\n",
          flush=True)


def load_dataset(cfg, folder, seed):
    import warnings
    files = opt.domain_files(cfg, folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = ImageFolderDataset(files, cfg["img_size"], cfg["augment_flag"], seed=seed)
        except ImageReadError as e:
            raise opt.OptionError(f"no readable image in {os.path.join(opt.dataset_root(cfg), folder)!r}: "
                                  f"{e.reason}") from e
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    return ds


def _check_finite(values: dict, what: str, counter: int):
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteLoss(f"{what} loss {k} is {v} at step {counter} (counter {counter}); "
                                f"training stopped, the last checkpoint is left as it was")


def _rho_summaries(writer, model, step):
    for name, p in model.named_parameters():
        if name.endswith("rho"):
            tag = name.replace(".", "/")
            v = p.detach().float().cpu()
            writer.add_histogram(tag, v, step)
            writer.add_scalar(tag + "_min", float(v.min()), step)
            writer.add_scalar(tag + "_max", float(v.max()), step)
            writer.add_scalar(tag + "_mean", float(v.mean()), step)


def restore(model, cfg, folder, dist_info):
    """Load the newest usable checkpoint, whichever framework wrote it (the checkpoint policy,
    ugatit_common.checkpoint_policy). Returns a dict describing where to continue, or None when
    the folder holds no checkpoint; checkpoints that cannot be used stop the run (exit 2)."""
    found = ckpt.resume_point(folder, cfg, "train", set_aside=dist_info.is_main)
    if found is None:
        return None
    cli_errors.note_checkpoint(found["found"].name)
    if found["framework"] == "torch":
        step, weights, state = found["step"], found["weights"], found["state"]
        ckpt.load_weights_into(model, weights, found["found"].weights)
        model.G_optim.load_state_dict(state["G_optim"])
        model.D_optim.load_state_dict(state["D_optim"])
        print(f" [*] Success to read {os.path.basename(found['found'].base)} (torch)")
        return {"counter": int(state["counter"]), "epoch": int(state["epoch"]), "batch_id": int(state["batch_id"]),
                "loader_A": int(state["loader_A"]), "loader_B": int(state["loader_B"]),
                "past_g_loss": float(state.get("past_g_loss", -1.0)), "rng": state.get("rng"),
                "world_size": int(state.get("world_size", 1)), "run": state.get("run")}
    st = found["tf"]
    ckpt.load_weights_into(model, st["model"], f"{found['found'].base} (TensorFlow)")
    model.G_optim.load_named_slots(st["G_slots"], *st["G_powers"])
    model.D_optim.load_named_slots(st["D_slots"], *st["D_powers"])
    counter = int(st["step"])
    start_epoch, start_batch_id = opt.resume_position(counter, cfg["iteration"])
    print(f" [*] Success to read the TensorFlow checkpoint {os.path.basename(found['found'].base)} "
          f"at counter {counter}")
    return {"counter": counter, "epoch": start_epoch, "batch_id": start_batch_id, "loader_A": 0,
            "loader_B": 0, "past_g_loss": -1.0, "rng": None, "world_size": dist_info.world_size,
            "run": None}


def train(cfg: dict, device: torch.device, num_workers: int = 0, seed: int = 0, keep_checkpoints: int = 3,
          resume: bool = True) -> dict:
    dist_info = ddp.current()
    main = dist_info.is_main
    paths = opt.run_paths(cfg)
    ds_A = load_dataset(cfg, "trainA", seed)
    ds_B = load_dataset(cfg, "trainB", seed + 1)
    cfg = dict(cfg, seed=seed)
    if main:
        print_information(cfg, (len(ds_A), len(ds_B)), device, paths, dist_info)
        for p, flag in ((paths.sample, "--sample_dir"), (paths.log, "--log_dir"), (paths.checkpoint, "--checkpoint_dir")):
            cli_errors.check_writable_folder(p, flag)  # fail now, not at the first save
        policy.sweep_temp(paths.checkpoint)
        policy.sweep_temp(paths.sample)
        if not resume:  # an older run in the folder is moved aside, never deleted, shadowed or overwritten
            moved = policy.move_previous_run(paths.checkpoint)
            if moved:
                policy.move_previous_outputs(paths.sample, os.path.basename(moved))
    ddp.barrier()

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    import random
    random.seed(seed)
    model = build_ugatit(cfg).to(device)
    model.make_optimizers(cfg["lr"])
    if dist_info.enabled:
        ddp.average_gradients_before_step(model.G_optim)
        ddp.average_gradients_before_step(model.D_optim)

    pos = restore(model, cfg, paths.checkpoint, dist_info) if resume else None
    run_id = (pos or {}).get("run") or policy.new_run_id()
    if pos is None:
        if main:
            print(f" [!] Load failed... (no checkpoint in {paths.checkpoint}): starting from scratch" if resume
                  else " [*] --resume False: starting from scratch")
        start_epoch, start_batch_id, counter = 0, 0, 1
        loader_A = loader_B = 0
        past_g_loss = -1.0
    else:
        if main:
            print(" [*] Load SUCCESS")
        start_epoch, start_batch_id, counter = pos["epoch"], pos["batch_id"], pos["counter"]
        loader_A, loader_B, past_g_loss = pos["loader_A"], pos["loader_B"], pos["past_g_loss"]
        if pos["rng"] is not None:
            ckpt.set_rng_state(pos["rng"])
    ddp.broadcast_module_(model)

    feed_A = _Feed(ds_A, cfg["batch_size"], seed, loader_A, num_workers, dist_info, device)
    feed_B = _Feed(ds_B, cfg["batch_size"], seed + 1, loader_B, num_workers, dist_info, device)

    writer = None
    if main:
        from .events import EventWriter  # never imports TensorFlow
        writer = EventWriter(paths.log)
    from tqdm import tqdm
    total = max(0, (cfg["epoch"] - start_epoch) * cfg["iteration"] - start_batch_id)
    bar = tqdm(total=total, file=sys.stderr, disable=(not main) or not sys.stderr.isatty(), desc="train")

    nan_at = os.environ.get(NAN_HOOK_ENV)
    nan_at = int(nan_at) if nan_at else None
    prefix = opt.model_name(cfg)
    history = []
    last_saved = None
    real_A = fake_B = real_B = fake_A = None

    def save_checkpoint(next_epoch, next_batch):
        nonlocal last_saved
        if next_batch >= cfg["iteration"]:
            next_epoch, next_batch = next_epoch + 1, 0
        if last_saved == counter:
            return
        if main:
            state = {"counter": counter, "epoch": next_epoch, "batch_id": next_batch,
                     "loader_A": feed_A.pos, "loader_B": feed_B.pos, "past_g_loss": float(past_g_loss),
                     "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict(),
                     "rng": ckpt.rng_state(), "config": ckpt.plain_config(cfg),
                     "world_size": dist_info.world_size, "run": run_id}
            ckpt.save(paths.checkpoint, prefix, counter, model, state, keep_checkpoints)
            cli_errors.note_checkpoint(f"{prefix}.model-{counter}")
        ddp.barrier()
        last_saved = counter

    start_time = time.time()
    try:
        for epoch in range(start_epoch, cfg["epoch"]):
            lr = opt.learning_rate(cfg, epoch)
            for idx in range(start_batch_id, cfg["iteration"]):
                real_A_d, real_B_d = feed_A.next(), feed_B.next()
                d = model.d_step(real_A_d, real_B_d, lr, gp_draws(cfg, real_A_d, real_B_d, seed, counter,
                                                                  dist_info.rank))
                if nan_at is not None and counter == nan_at:
                    d["Discriminator_loss"] = float("nan")
                d = ddp.average_scalars(d)
                _check_finite(d, "discriminator", counter)
                if writer:
                    for k, v in d.items():
                        writer.add_scalar(k, v, counter)
                g_loss = None
                if (counter - 1) % cfg["n_critic"] == 0:
                    ra, rb = feed_A.next(), feed_B.next()
                    g = model.g_step(ra, rb, lr)
                    real_A, real_B, fake_A, fake_B = ra, rb, g.pop("fake_A"), g.pop("fake_B")
                    g = ddp.average_scalars(g)
                    _check_finite(g, "generator", counter)
                    if writer:
                        for k, v in g.items():
                            writer.add_scalar(k, v, counter)
                        _rho_summaries(writer, model, counter)
                    g_loss = g["Generator_loss"]
                    past_g_loss = g_loss
                counter += 1
                cli_errors.note_step(counter - 1)
                if g_loss is None:
                    g_loss = past_g_loss
                d_loss = d["Discriminator_loss"]
                if main:
                    bar.update(1)
                    print(opt.iteration_line(epoch, idx, cfg["iteration"], time.time() - start_time, d_loss, g_loss),
                          flush=True)
                history.append({"d_loss": d_loss, "g_loss": g_loss})
                if main and (idx + 1) % cfg["print_freq"] == 0 and real_A is not None:
                    nhwc = [t[:1].permute(0, 2, 3, 1).float().cpu().numpy() for t in (real_A, fake_B, real_B, fake_A)]
                    tag = f"{epoch:02d}_{idx + 1:06d}"
                    save_grid(nhwc, os.path.join(paths.sample, f"sample_{tag}.png"), ncols=4)
                    save_image(nhwc[0], os.path.join(paths.sample, f"real_A_{tag}.png"))
                    save_image(nhwc[1], os.path.join(paths.sample, f"fake_B_{tag}.png"))
                if (idx + 1) % cfg["save_freq"] == 0:
                    save_checkpoint(epoch, idx + 1)
            start_batch_id = 0
            save_checkpoint(epoch + 1, 0)
    finally:
        bar.close()
        if writer:
            writer.close()
    return {"steps": history, "checkpoint_dir": paths.checkpoint, "counter": counter, "model": model}
