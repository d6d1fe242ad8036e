"""The official train phase with the PyTorch port: one trainer (`Trainer`) that `python -m
torch_port` and `python -m morph train` both run.

Loop exactly as the official `UGATIT.train`: epochs x iterations, `counter` starting at 1 (or at
the checkpoint's counter), `lr = learning_rate(cfg, epoch)`, per iteration one D step and - when
`(counter - 1) % n_critic == 0` - one G step, each on a NEW batch, the official progress line,
samples every print_freq, a checkpoint every save_freq and at each epoch end (named by counter).

Determinism / resume: every random draw is a function of the seed and the loop position. The
data order is `infinite_loader`'s (seed, pass) permutation and each item's augmentation is a
function of (seed, pass, index); the loaders' batch positions are stored in the checkpoint and
a resumed loader starts exactly there. The global torch/numpy/python RNG states are stored and
restored; the gradient-penalty draws are a function of (seed, counter, rank). So 2N iterations
and N + resume + N end with bit-identical weights. A torch checkpoint stores the true loop
position (epoch, next batch id); a TF checkpoint only has the counter, so its resume position is
the official `resume_position(counter, iteration)` (which, as officially, skips one batch after a
fresh run since the counter starts at 1).

Around the loop: torchrun data parallelism (`torch_port.distributed`: gradients averaged before
each TF1 Adam step, rank 0 alone prints, writes samples, TensorBoard events and checkpoints),
TensorBoard scalars of every term the D / G steps return plus rho histograms (`events.EventWriter`,
never TensorFlow), the NaN stop (`NonFiniteLoss`, exit 3; the last checkpoint stays the newest),
and the checkpoint policy (`ugatit_common.checkpoint_policy`; `--resume`, `--keep_checkpoints`).
The steps return their loss values as device tensors; the loop reads them without blocking
(`torch_port.host_device`) and logs / records / checks each iteration when they arrive, at most
MAX_PENDING iterations later on CUDA (at once on a CPU); before each save every pending value is
read and the weights and Adam's state are checked finite.

Seams for a model built on the port (Morph-UGATIT, `morph.train.MorphTrainer`): `prepare_config`,
`run_paths`, `prefix`, `build_model`, `find_checkpoint` (kind checks), `extra_state` /
`load_extra_state` (e.g. the z generator's RNG), `start_fresh` (e.g. `--init_from`), `wrap_steps`
(the one place where the D and G steps can be wrapped: autocast, torch.compile, CUDA graphs),
`host_draws` (methods a step draws host values with, served from fixed tensors under CUDA graphs), `LOSS_LOG` (a
JSON-lines loss log) and `MOVE_ASIDE` (output folders `--resume False` moves aside).
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch

from ugatit_common import checkpoint_policy as policy
from ugatit_common import cli_errors
from ugatit_common import options as opt
from ugatit_common import strict_json
from ugatit_common.atomic import naming, write_bytes_atomic
from ugatit_common.finite import EXIT_NON_FINITE, NonFiniteLoss
from ugatit_common.results import save_grid

from . import checkpoint as ckpt
from . import distributed as ddp
from .data import ImageFolderDataset, ImageReadError, infinite_loader
from .host_device import PendingValues, to_device
from .model import build_ugatit
from .out_of_memory import is_out_of_memory

NAN_HOOK_ENV = "UGATIT_TORCH_INJECT_NAN_AT"  # hidden test hook: counter at which d_loss becomes NaN
MAX_PENDING = 2  # iterations whose loss values may still be on their way to the host (CUDA)
MAX_SKIPS_IN_A_ROW = 32  # fp16: steps of one network skipped in a row before the run stops (scale / 2^32)


class GPUOutOfMemory(opt.OptionError):
    """The GPU ran out of memory: bad input of the settings (exit 2, naming what to lower)."""


def gpu_out_of_memory(e: BaseException, cfg: dict | None = None) -> GPUOutOfMemory:
    """One line for a CUDA out-of-memory error: the run's size settings and which to lower."""
    said = " ".join(str(e).split())[:160]
    settings = ""
    if cfg:
        settings = " at " + ", ".join(f"--{k} {cfg[k]}" for k in ("img_size", "batch_size", "ch", "light") if k in cfg)
    return GPUOutOfMemory(f"the GPU ran out of memory{settings}: lower --img_size, --batch_size or --ch, or train "
                          f"with --light True or --precision bf16 (torch: {said})")


def check_device_name(name: str) -> str:
    """--device's value if it is auto, cpu, cuda or cuda:N; else the one line (torch's own error for
    'mps' or 'cuda:x' is an internal error, or a device this project does not run on)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(name)):
        raise opt.OptionError(f"--device={name!r}: expected cpu, cuda, cuda:N or auto")
    return name


def pick_device(name: str) -> torch.device:
    """The device of --device. On CUDA, TF32 is switched off for convolutions and matrix products:
    cuDNN's default rounds float32 inputs to 10 mantissa bits (~1e-3), and the fp32 path is the
    exact port of TF's float32 graph; the fast paths are --precision bf16/fp16."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise opt.OptionError(f"--device={name!r}: CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise opt.OptionError(f"--device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    cuda_exact_settings(device)
    return device


def cuda_exact_settings(device: torch.device) -> None:
    """A training process on CUDA: the exact fp32 path's math settings, and `device` made the
    current CUDA device (streams, events and graphs made without a device - the late loss read,
    the captured steps - then belong to the GPU the tensors are on, also for cuda:1 and up).
    Nothing on a CPU. Called by `pick_device` and by `Trainer` (a library caller's device too)."""
    if device.type != "cuda":
        return
    # cuBLAS is deterministic with a fixed workspace, read when its first handle is made:
    # the exact fp32 training path runs in deterministic mode (train_precision.cuda_steps)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.allow_tf32 = False  # (torch's default for cuDNN is True: TF32 convolutions)
    torch.backends.cuda.matmul.allow_tf32 = False
    if device.index is not None:
        torch.cuda.set_device(device)


# -- the command lines' training flags and process setup (python -m torch_port, python -m morph train) ----

def add_training_flags(p, resume_help: str = "resume from the newest checkpoint") -> None:
    """--num_workers, --threads, --keep_checkpoints, --resume (every training command line)."""
    p.add_argument("--num_workers", type=int, default=0,
                   help="data-loader workers per domain (default: 0; at most 8 per CPU, or 32 on small machines)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: one per core)")
    p.add_argument("--keep_checkpoints", type=int, default=5,
                   help="torch checkpoints of this run to keep (default: 5, as the official tf.train.Saver)")
    p.add_argument("--resume", type=opt.str2bool, default=True, help=resume_help)
    from .train_graphs import flag_value
    p.add_argument("--cuda_graphs", default="auto", type=flag_value, metavar="auto|True|False",
                   help="training: the D and G steps captured as CUDA graphs (default auto: on CUDA where "
                        "capturable; True where not is refused; torch_port.train_graphs)")


def max_num_workers() -> int:
    """The largest --num_workers accepted: a value past it starts more processes than a machine
    holds (100000 was killed by the OS, leaving orphaned workers), never more speed."""
    return max(32, 8 * (os.cpu_count() or 1))


def check_threads(threads: int | None) -> None:
    """--threads (training, the test phase, the ONNX exports): None (torch's default) or 1 .. the
    --num_workers bound; 0 or less was silently 1 in the exports, and a huge value reached
    torch.set_num_threads as a bare "Overflow when unpacking long"."""
    if threads is None:
        return
    if threads < 1:
        raise opt.OptionError(f"--threads={threads}: must be >= 1")
    most = max_num_workers()
    if threads > most:
        raise opt.OptionError(f"--threads={threads}: at most {most} (8 per CPU of this machine, at least 32)")


def check_training_flags(a) -> None:
    if a.num_workers < 0:
        raise opt.OptionError(f"--num_workers={a.num_workers}: must be >= 0")
    most = max_num_workers()
    if a.num_workers > most:  # each domain has its loader: 2 x N processes, each a copy of the trainer
        raise opt.OptionError(f"--num_workers={a.num_workers}: at most {most} (8 per CPU of this machine, at least "
                              f"32; each of the two domains' loaders starts that many processes)")
    check_threads(a.threads)
    if a.keep_checkpoints < 1:
        raise opt.OptionError(f"--keep_checkpoints={a.keep_checkpoints}: must be >= 1")


@contextlib.contextmanager
def training_process(device_name: str, threads: int | None = None):
    """Yields (device, dist_info) for one process of a run: --threads, the CPU allocator setting,
    torchrun's process group (gloo on CPU, NCCL on CUDA, each rank its own GPU); the group is
    closed at the end."""
    device = pick_device(device_name)
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        from .cpu_memory import keep_freed_memory
        keep_freed_memory()
    dist_info = ddp.init(device.type)
    if device.type == "cuda" and dist_info.world_size > 1 and device.index is not None:
        ddp.shutdown()
        raise opt.OptionError(f"--device={device_name!r} under torchrun with {dist_info.world_size} processes: each "
                              f"process takes the GPU of its LOCAL_RANK; give --device cuda")
    if device.type == "cuda" and dist_info.enabled and device.index is None:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        yield device, dist_info
    finally:
        ddp.shutdown()


def exit_code_of(run) -> int:
    """`run()`'s exit code: 0, or 3 with one `error:` line when a loss became NaN / inf (a GPU out
    of memory becomes `GPUOutOfMemory`: exit 2 with one line)."""
    try:
        run()
    except NonFiniteLoss as e:
        if ddp.current().is_main:  # (under torchrun every rank stops at the same step: rank 0 says it)
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    except Exception as e:  # noqa: BLE001 - only out of memory (e.g. while the model moves to the GPU)
        if not is_out_of_memory(e):
            raise
        raise gpu_out_of_memory(e) from e
    return 0


def cut_loss_log(path: str, counter: int) -> None:
    """The loss log (one JSON line per iteration) as of the checkpoint a run continues from: the
    lines of steps before `counter`. Lines a killed run wrote after its last checkpoint (steps
    the resumed run does again) and a line cut mid-write go, so every step has one line."""
    try:
        with open(path, "rb") as fh:
            lines = fh.read().splitlines(keepends=True)
    except FileNotFoundError:
        return
    keep = []
    for line in lines:
        try:
            if line.endswith(b"\n") and int(json.loads(line)["counter"]) < counter:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(keep) != len(lines):
        write_bytes_atomic(path, b"".join(keep))


# -- pieces of the loop ---------------------------------------------------------------------------

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
        return to_device(next(self._it), self.device)  # CUDA: pinned, without blocking the host


# training settings a resume may change without a new run folder (the model's settings are checked
# against the checkpoint; the loss weights, gan_type and n_critic name the folder): said when they
# differ from the checkpoint's run, never silently taken (as --seed, --iteration, --batch_size are)
RESUME_SAID = ("lr", "decay_flag", "decay_epoch", "augment_flag", "GP_ld")


def changed_training_flags(had: dict, cfg: dict) -> list[tuple[str, object, object]]:
    """[(flag, the checkpoint's run's value, this run's)] of RESUME_SAID that differ (a
    checkpoint that records none: none)."""
    out = []
    for k in RESUME_SAID:
        if k in had and k in cfg and had[k] != cfg[k]:
            out.append((k, had[k], cfg[k]))
    return out


def gp_draws(cfg, real_A, real_B, seed, counter, rank=0):
    """The gradient-penalty draws of one D step as a function of (seed, counter, rank): alpha
    ~ U[0,1) of shape [B,1,1,1] and (dragan) noise ~ U[0,1) of the image shape."""
    from .losses import uses_gradient_penalty
    if not uses_gradient_penalty(cfg["gan_type"]):
        return None
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(counter)) * 1009 + int(rank))
    out = {}
    for name, real in (("A", real_A), ("B", real_B)):
        out["alpha_" + name] = to_device(torch.rand(real.shape[0], 1, 1, 1, generator=g), real.device, real.dtype)
        out["noise_" + name] = to_device(torch.rand(real.shape, generator=g), real.device, real.dtype)
    return out


def print_information(cfg, sizes, device, paths, dist_info, log=print):
    log(opt.information(cfg, max(sizes)))
    log(f"\n# trainA / trainB images : {sizes[0]} / {sizes[1]}")
    for key in ("img_size", "ch", "augment_flag", "seed"):
        log(f"# {key} :  {cfg.get(key)}")
    log(f"# device : {device}" + (f" (rank {dist_info.rank} of {dist_info.world_size})" if dist_info.enabled else "")
        + (f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""))
    log(f"# model_dir : {os.path.basename(paths.checkpoint)}")
    log(f"# checkpoint : {paths.checkpoint}\n# samples : {paths.sample}\n# logs : {paths.log}\n")


def load_dataset(cfg, folder, seed, base="."):
    import warnings
    files = opt.domain_files(cfg, folder, base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = ImageFolderDataset(files, cfg["img_size"], cfg["augment_flag"], seed=seed)
        except ImageReadError as e:
            raise opt.OptionError(f"no readable image in {os.path.join(opt.dataset_root(cfg, base), folder)!r}: "
                                  f"{e.reason}") from e
    if ddp.current().is_main:  # (every rank reads the same folder: rank 0 says it)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
    return ds


def _check_finite(values: dict, what: str, counter: int, skips: dict, log, scaled_loss: bool = False) -> None:
    """Stop (NonFiniteLoss, exit 3) on a non-finite loss of step `counter` - unless the loss
    itself is computed at fp16's loss scale (`scaled_loss`: a discriminator loss with a gradient
    penalty, whose inner gradient is taken at that scale) and the loss scaling skipped that step
    (`<D|G>_step_skipped`): its weights and Adam state are unchanged, and the non-finite value is
    a float16 overflow at that scale, said in one line; the scale is halved for the next step, as
    torch.amp.GradScaler does - provided the loss without its penalty is finite
    (`D_unpenalized_finite`; otherwise the model itself overflowed: stop at once). More than
    MAX_SKIPS_IN_A_ROW skipped steps in a row of one network is an overflow no scale fixes:
    stop. `skips`: the count so far per network."""
    key = "D" if what == "discriminator" else "G"
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    skipped = values.get(f"{key}_step_skipped", 0.0) != 0
    skips[key] = skips.get(key, 0) + 1 if skipped else 0
    if skipped and skips[key] > MAX_SKIPS_IN_A_ROW:
        raise NonFiniteLoss(f"fp16: the {what} step overflowed float16 in {skips[key]} steps in a row, up to step "
                            f"{counter} (loss scale now {values[f'{key}_loss_scale'] / 2:g}): not an overflow "
                            f"loss scaling fixes; training stopped, the last checkpoint is left as it was (train "
                            f"with --precision bf16 or fp32)")
    # the loss without its penalty non-finite too: the model's forward (a float16 overflow of an
    # activation, no loss scale changes it), not the penalty's gradient at the scale - stop now
    # (under torchrun the flag is averaged over the ranks: below 1 when any rank's forward overflowed)
    if bad and skipped and scaled_loss and values.get(f"{key}_unpenalized_finite", 1.0) == 1.0:
        log(f" [fp16] step {counter}: {what} loss {bad[0]} is {values[bad[0]]} at loss scale "
            f"{values[f'{key}_loss_scale']:g} (most likely a float16 overflow at that scale): the step was skipped, "
            f"weights unchanged, the scale halved")
    elif bad:
        raise NonFiniteLoss(f"{what} loss {bad[0]} is {values[bad[0]]} at step {counter} (counter {counter}); "
                            f"training stopped, the last checkpoint is left as it was")


def _rho_summaries(writer, rho: dict, step):
    """Histogram and min / max / mean of each rho parameter (`rho`: name -> float32 CPU tensor,
    the values right after the G step of `step`)."""
    for name, v in rho.items():
        tag = name.replace(".", "/")
        writer.add_histogram(tag, v, step)
        writer.add_scalar(tag + "_min", float(v.min()), step)
        writer.add_scalar(tag + "_max", float(v.max()), step)
        writer.add_scalar(tag + "_mean", float(v.mean()), step)


class _Pending:
    """One iteration that ran, its loss values (`PendingValues`) not yet read: D's, and G's with
    the rho snapshot when a G step ran."""

    def __init__(self, counter: int, epoch: int, idx: int, d: PendingValues):
        self.counter, self.epoch, self.idx, self.d, self.g = counter, epoch, idx, d, None

    def ready(self) -> bool:
        return self.d.ready() and (self.g is None or self.g.ready())


def _drain_quietly(pending, finish) -> None:
    """After an interruption: log and record the iterations that ran, up to the first
    non-finite one, without raising (the interruption is what the user hears about)."""
    try:
        while pending:
            finish(pending.popleft())
    except Exception:
        pass


def _first_non_finite(model) -> str | None:
    """The first of the model's weights / buffers and its optimizers' slots and powers holding a
    NaN or inf (named), or None: one device reduction and one read back (before each save)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    for key in ("G_optim", "D_optim"):
        optim = getattr(model, key)
        tensors += [(f"{key} slot {k}", t) for k, t in optim.named_slots().items()]
        tensors += [(f"{key} beta1_power", optim.beta1_power), (f"{key} beta2_power", optim.beta2_power)]
    norms = torch._foreach_norm([t for _, t in tensors], float("inf"))  # max |x|; NaN and inf propagate
    if bool(torch.isfinite(torch.stack([n.to(torch.float64) for n in norms])).all()):
        return None
    from ugatit_common.finite import first_non_finite
    return repr(first_non_finite(tensors)[0])


def restore(model, cfg, found, dist_info, log=print):
    """Load `found` (a `checkpoint.resume_point` result: the newest usable checkpoint, whichever
    framework wrote it) into the model and its optimizers. Returns a dict describing where to
    continue (with "state", the torch state file's content), or None when there is no checkpoint."""
    if found is None:
        return None
    cli_errors.note_checkpoint(found["found"].name)
    if found["framework"] == "torch":
        step, weights, state = found["step"], found["weights"], found["state"]
        ckpt.load_weights_into(model, weights, found["found"].weights)
        model.G_optim.load_state_dict(state["G_optim"])
        model.D_optim.load_state_dict(state["D_optim"])
        log(f" [*] Success to read {os.path.basename(found['found'].base)} (torch)")
        epoch, batch_id = int(state["epoch"]), int(state["batch_id"])
        saved_iteration = (state.get("config") or {}).get("iteration", cfg["iteration"])
        if int(saved_iteration) != int(cfg["iteration"]):
            # the stored position counts batches of the other --iteration: continue where the official
            # loop would, from the counter (as a TF checkpoint, which records only the counter)
            epoch, batch_id = opt.resume_position(int(state["counter"]), cfg["iteration"])
            log(f" [*] --iteration {cfg['iteration']} (the checkpoint's run had {saved_iteration}): continuing at "
                f"epoch {epoch}, batch {batch_id}, from counter {int(state['counter'])} as the official loop does")
        return {"counter": int(state["counter"]), "epoch": epoch, "batch_id": batch_id,
                "loader_A": int(state["loader_A"]), "loader_B": int(state["loader_B"]),
                "past_g_loss": float(state.get("past_g_loss", -1.0)), "rng": state.get("rng"),
                "world_size": int(state.get("world_size", 1)), "run": state.get("run"), "state": state}
    st = found["tf"]
    ckpt.load_weights_into(model, st["model"], f"{found['found'].base} (TensorFlow)")
    model.G_optim.load_named_slots(st["G_slots"], *st["G_powers"])
    model.D_optim.load_named_slots(st["D_slots"], *st["D_powers"])
    counter = int(st["step"])
    start_epoch, start_batch_id = opt.resume_position(counter, cfg["iteration"])
    log(f" [*] Success to read the TensorFlow checkpoint {os.path.basename(found['found'].base)} "
        f"at counter {counter}")
    return {"counter": counter, "epoch": start_epoch, "batch_id": start_batch_id, "loader_A": 0,
            "loader_B": 0, "past_g_loss": -1.0, "rng": None, "world_size": dist_info.world_size,
            "run": None, "state": None}


def _print(msg: str) -> None:
    print(msg, flush=True)


# -- the trainer ------------------------------------------------------------------------------------

class Trainer:
    """One training run of the port (or of a model built on it: override the seams below).

    `Trainer(cfg, device, ...).run()` -> {"history", "checkpoint_dir", "counter", "model", "paths"};
    history holds one record per iteration: counter, d_loss, g_loss (the last G loss, as the
    official line prints it) and every term the D / G steps returned."""

    LOSS_LOG: str | None = None       # file name in the log folder for one JSON line per iteration
    MOVE_ASIDE = ("sample", "log")    # output folders (run_paths attributes) --resume False moves aside
    WRITER = "torch_port"             # the command named in the run record (policy.write_run_record)
    DETERMINISTIC_FP32 = True         # the exact fp32 path on CUDA runs deterministic (train_precision.cuda_steps)

    def __init__(self, cfg: dict, device="cpu", num_workers: int = 0, seed: int = 0, keep_checkpoints: int = 5,
                 resume: bool = True, base: str = ".", log=None, precision: str = "fp32", compile: bool = False,
                 cuda_graphs="auto"):
        self.dist_info = ddp.current()
        self.precision = precision  # "fp32" (the exact port), "tf32", "bf16" or "fp16" (torch_port.train_precision)
        self.compile = bool(compile)  # torch.compile the networks (torch_port.train_compile)
        self.cuda_graphs = cuda_graphs  # "auto" | "True" | "False" (torch_port.train_graphs)
        self.main = self.dist_info.is_main
        self.device = torch.device(device)
        cuda_exact_settings(self.device)  # (pick_device's settings, for a caller that made the device itself)
        from .train_graphs import plan
        plan(cuda_graphs, self.device, self.dist_info.world_size)  # e.g. True on a CPU: exit 2 before anything
        self.num_workers, self.seed, self.keep_checkpoints = int(num_workers), int(seed), int(keep_checkpoints)
        self.resume, self.base = bool(resume), base
        self.log = (log or _print) if self.main else (lambda msg: None)  # rank 0 alone talks
        self.cfg = self.prepare_config(cfg)
        self.paths = self.run_paths()

    # -- seams --------------------------------------------------------------------------------------
    def prepare_config(self, cfg: dict) -> dict:
        """The run's config (validation of extra keys goes here)."""
        return dict(cfg)

    def run_paths(self) -> opt.Paths:
        return opt.run_paths(self.cfg)

    def prefix(self) -> str:
        """Checkpoint file prefix: <prefix>.model-N.*"""
        return opt.model_name(self.cfg)

    def build_model(self):
        """The model (a `UGATIT` or subclass) with its optimizers' parameters; called after seeding."""
        return build_ugatit(self.cfg)

    def find_checkpoint(self):
        """The checkpoint to resume (`checkpoint.resume_point`; `self.owner`: the run lock, rank 0),
        or None; a subclass checks its kind."""
        return ckpt.resume_point(self.paths.checkpoint, self.cfg, "train", log=self.log,
                                 owner=getattr(self, "owner", None))

    def extra_state(self) -> dict:
        """Entries added to each checkpoint's state file (weights_only-loadable values)."""
        return {}

    def load_extra_state(self, state: dict | None) -> None:
        """Restore `extra_state` from a resumed torch state file (None: a TF checkpoint)."""

    def start_fresh(self) -> None:
        """No checkpoint to resume: the starting weights (default: the seeded initialisation)."""

    def check_fresh_start(self) -> None:
        """Checks of what `start_fresh` reads (Morph: `--init_from`), run before anything in the
        run's folders changes (made, swept, moved aside) when the run starts fresh for sure
        (`--resume False`, or no checkpoint in its folder): a refused start leaves them as they were."""

    def check_checkpoint_kind(self) -> None:
        """Refuse a checkpoint folder holding another kind of checkpoint than this trainer resumes
        (Morph: a UGATIT / TF one), run by rank 0 right after it takes the folders, before anything
        in them is swept, read for the resume or set aside (`_prepare_folders`). Default: none."""

    def host_draws(self) -> list:
        """[(object, method name)]: methods a step calls to draw values on the host (Morph config
        C's direction codes); a CUDA graph serves their values from fixed tensors."""
        return []

    def wrap_steps(self, d_step, g_step):
        """The one place where the D and G steps are wrapped (autocast, torch.compile, CUDA
        graphs): returns the two callables the loop calls, with `UGATIT.d_step` / `g_step`'s
        signatures (in the loop the model's steps return their loss terms as device tensors,
        read later without blocking: torch_port.host_device). Here: `precision` tf32 (TF32
        convolutions and matrix products, CUDA) or bf16 / fp16 (autocast with float32 norms,
        spectral norm, CAM, dense layers and output convolutions; float32 master weights and
        Adam state; fp16 with loss scaling: torch_port.train_precision), then `compile` (the
        networks compiled in place: torch_port.train_compile), then the CUDA math settings
        (train_precision.cuda_steps) and `cuda_graphs` (each step over fixed tensors, captured as
        a CUDA graph: torch_port.train_graphs). Called before
        torchrun's gradient averaging wraps the optimizers' steps, after the checkpoint's
        optimizer state is loaded."""
        from .train_graphs import plan, static_steps
        from .train_precision import cuda_steps
        log = getattr(self, "log", _print)  # (the seam alone, without __init__, is tested too)
        dist_info = getattr(self, "dist_info", None) or ddp.DistInfo()
        how, line = plan(getattr(self, "cuda_graphs", "auto"), self.device, dist_info.world_size)
        if self.precision != "fp32":
            from .train_precision import mixed_precision_steps
            d_step, g_step = mixed_precision_steps(self.model, d_step, g_step, self.precision, self.device)
        if self.compile:
            from .train_compile import compiled_steps
            d_step, g_step = compiled_steps(self.model, d_step, g_step, log)
        d_step, g_step = cuda_steps(d_step, g_step, self.precision, self.device, self.DETERMINISTIC_FP32)
        if line:
            log(line)
        return static_steps(self.model, d_step, g_step, how, self.host_draws(), log)

    def _load_loss_scale(self, state: dict) -> None:
        """An fp16 run resumed from an fp16 checkpoint continues with its loss scales (a checkpoint
        of another precision has none: the scales start afresh)."""
        from .train_precision import loss_scalers
        saved = state.get("loss_scale") or {}
        for key, scaler in loss_scalers(self.model).items():
            if key in saved:
                scaler.load_state_dict(saved[key])

    # -- the run ------------------------------------------------------------------------------------
    def _prepare_folders(self, sizes) -> None:
        """Rank 0: take the run's folders (checkpoints, samples, logs: `policy.own_run`) before
        anything in them is read, swept or moved; then sweep, and under --resume False move an
        older run aside - both only as their owner."""
        paths = self.paths
        # FolderInUse (exit 2, nothing changed) if another run holds one; a killed run's folders taken over: a note
        self.owner = policy.own_run(paths, log=self.log)
        cli_errors.note_checkpoint_folder(paths.checkpoint)
        if self.resume:  # (--resume False moves whatever is there aside)
            self.check_checkpoint_kind()
        print_information(self.cfg, sizes, self.device, paths, self.dist_info, self.log)
        for p, flag in ((paths.sample, "--sample_dir"), (paths.log, "--log_dir"), (paths.checkpoint, "--checkpoint_dir")):
            cli_errors.check_writable_folder(p, flag)  # fail now, not at the first save
        policy.sweep_temp(paths.checkpoint, self.log, owner=self.owner)
        policy.sweep_temp(paths.sample, self.log, owner=self.owner)
        if not self.resume:  # an older run in the folder is moved aside, never deleted, shadowed or overwritten
            cli_errors.note_older_run_aside(False)
            # noted under the moves' hold on Ctrl-C / SIGTERM: the stop line never says "did not take effect"
            # of a run moved aside, nor the reverse
            policy.move_older_run_aside(paths.checkpoint, [getattr(paths, name) for name in self.MOVE_ASIDE],
                                        self.owner, self.log, on_moved=lambda: cli_errors.note_older_run_aside(True))

    def _resume_point(self):
        """`find_checkpoint` on every rank, rank 0 (the owner, which sets unusable ones aside)
        first: the others read the folder as rank 0 left it."""
        if not self.resume:
            return None
        found = self.find_checkpoint() if self.main else None
        ddp.barrier()
        return found if self.main else self.find_checkpoint()

    def run(self) -> dict:
        """Train; the run's folders are held (rank 0) from before the first look into them to
        the end, whatever the end is."""
        self.owner = None
        failed = True
        try:
            out = self._run()
            failed = False
            return out
        finally:
            if self.owner is not None:  # a failed run's folders that it made and left empty go too
                self.owner.release(failed=failed)
                self.owner = None

    def _run(self) -> dict:
        cfg, seed, dist_info, main, log = self.cfg, self.seed, self.dist_info, self.main, self.log
        paths = self.paths
        ds_A = load_dataset(cfg, "trainA", seed, self.base)
        ds_B = load_dataset(cfg, "trainB", seed + 1, self.base)
        cfg = self.cfg = dict(cfg, seed=seed)
        if not self.resume or not policy.inventory(self.paths.checkpoint):
            self.check_fresh_start()  # a fresh start for sure: what it reads is checked before the folders change
        if main:
            self._prepare_folders((len(ds_A), len(ds_B)))
        ddp.barrier()
        # every rank: an error line (rank 1's unreadable image too) names the newest checkpoint there
        cli_errors.note_checkpoint_folder(paths.checkpoint)

        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        import random
        random.seed(seed)
        model = self.model = self.build_model().to(self.device)
        model.make_optimizers(cfg["lr"])

        pos = restore(model, cfg, self._resume_point(), dist_info, log)
        run_id = (pos or {}).get("run") or policy.new_run_id()
        if pos is None:
            log(f" [!] Load failed... (no checkpoint in {paths.checkpoint}): starting from scratch" if self.resume
                else " [*] --resume False: starting from scratch")
            self.start_fresh()  # (Morph: --init_from, refused before anything below is moved)
            if main:  # an older run's loss log, samples: moved aside, never cut or overwritten
                policy.move_outputs_of_an_older_run([getattr(paths, name) for name in self.MOVE_ASIDE], self.owner,
                                                    log)
                # the folder's record is this run's (its checkpoints record their config themselves)
                policy.write_run_record(paths.checkpoint, cfg, self.WRITER, self.owner)
            start_epoch, start_batch_id, counter = 0, 0, 1
            loader_A = loader_B = 0
            past_g_loss = -1.0
        else:
            log(" [*] Load SUCCESS")
            start_epoch, start_batch_id, counter = pos["epoch"], pos["batch_id"], pos["counter"]
            loader_A, loader_B, past_g_loss = pos["loader_A"], pos["loader_B"], pos["past_g_loss"]
            if pos["rng"] is not None:
                ckpt.set_rng_state(pos["rng"])
            had = (pos["state"] or {}).get("config") or {}  # the checkpoint's run's flags
            had_batch = int(had.get("batch_size", cfg["batch_size"]))
            if pos["state"] is not None and pos["world_size"] != dist_info.world_size and main:
                print(f"warning: the checkpoint was written by {pos['world_size']} process(es), this run has "
                      f"{dist_info.world_size}: the global batch changes from {pos['world_size']} x "
                      f"{had_batch} to {dist_info.world_size} x {cfg['batch_size']} images (resume through "
                      f"torchrun --nproc_per_node {pos['world_size']} to continue the run as it was)",
                      file=sys.stderr, flush=True)
            had_seed = had.get("seed")
            if had_seed is not None and int(had_seed) != seed and main:  # (the data order, augmentation, penalty draws)
                print(f"warning: the checkpoint's run used --seed {int(had_seed)}, this run --seed {seed}: its data "
                      f"order, augmentation and penalty draws differ from here on (resume with --seed "
                      f"{int(had_seed)} to continue the run as it was)", file=sys.stderr, flush=True)
            changed = changed_training_flags(had, cfg)
            if changed and main:
                print(f"warning: the checkpoint's run used {' '.join(f'--{k} {a}' for k, a, _ in changed)}, this run "
                      f"{' '.join(f'--{k} {b}' for k, _, b in changed)}: its training continues with this run's "
                      f"(resume with the checkpoint's to continue the run as it was)", file=sys.stderr, flush=True)
            if had_batch != cfg["batch_size"]:
                log(f" [*] --batch_size {cfg['batch_size']} (the checkpoint's run had {had_batch}): the data continue "
                    f"after the images the checkpoint's run used")
            if pos["state"] is not None and (pos["world_size"], had_batch) != (dist_info.world_size, cfg["batch_size"]):
                # the loaders' positions count global batches of the checkpoint's world size and batch size:
                # continue at the first whole global batch of this run after the images the checkpoint's run used
                old, new = pos["world_size"] * had_batch, dist_info.world_size * cfg["batch_size"]
                loader_A, loader_B = (-(-n * old // new) for n in (loader_A, loader_B))
            self.load_extra_state(pos["state"])
        steps_left = (cfg["epoch"] - start_epoch) * cfg["iteration"] - start_batch_id
        if pos is not None and steps_left <= 0:  # the official loop runs none
            log(f" [*] the checkpoint is at counter {counter - 1}, the end of --epoch {cfg['epoch']} x --iteration "
                f"{cfg['iteration']}: nothing to train (a larger --epoch trains on)")
        d_step, g_step = self.wrap_steps(model.d_step, model.g_step)
        if pos is not None and pos["state"] is not None:
            self._load_loss_scale(pos["state"])
        if dist_info.enabled:  # outermost: the averaged gradients are what any step wrapper sees
            ddp.average_gradients_before_step(model.G_optim)
            ddp.average_gradients_before_step(model.D_optim)
        ddp.broadcast_module_(model)

        feed_A = _Feed(ds_A, cfg["batch_size"], seed, loader_A, self.num_workers, dist_info, self.device)
        feed_B = _Feed(ds_B, cfg["batch_size"], seed + 1, loader_B, self.num_workers, dist_info, self.device)

        # the event file, the loss log and the progress bar are opened inside the loop's try (below), whose
        # finally closes them: an error or Ctrl-C landing between their opening and the loop left them unclosed
        # (a ResourceWarning: unclosed file)
        writer = loss_log = bar = None

        nan_at = os.environ.get(NAN_HOOK_ENV)
        nan_at = int(nan_at) if nan_at else None
        prefix = self.prefix()
        history = []
        last_saved = None
        real_A = fake_B = real_B = fake_A = None
        # iterations whose loss values are still on their way to the host (torch_port.host_device);
        # each is logged, recorded and checked when its values arrive, in order, at most
        # MAX_PENDING iterations after it ran (on a CPU at once)
        pending = collections.deque()
        skips = {}  # fp16: steps skipped in a row, per network (_check_finite)
        say = log if main else (lambda line: None)
        from .losses import uses_gradient_penalty
        gp_loss = uses_gradient_penalty(cfg["gan_type"])  # fp16: its D loss is computed at the loss scale
        model.loss_values = "tensor"  # the steps return device tensors; `finish` reads them
        rho_params = [(n, p) for n, p in model.named_parameters() if n.endswith("rho")] if main else []  # the writer's

        def finish(it) -> None:
            """Log, record and check one iteration whose values have arrived (the official line,
            TensorBoard, the loss log, history; a NaN / inf stops the run)."""
            nonlocal past_g_loss
            d, _ = it.d.result()
            _check_finite(d, "discriminator", it.counter, skips, say, scaled_loss=gp_loss)
            if writer:
                for k, v in d.items():
                    writer.add_scalar(k, v, it.counter)
            g, g_loss = {}, None
            if it.g is not None:
                g, rho = it.g.result()
                _check_finite(g, "generator", it.counter, skips, say)
                if writer:
                    for k, v in g.items():
                        writer.add_scalar(k, v, it.counter)
                    _rho_summaries(writer, rho, it.counter)
                g_loss = past_g_loss = g["Generator_loss"]
            if g_loss is None:
                g_loss = past_g_loss
            d_loss = d["Discriminator_loss"]
            record = {"counter": it.counter, "d_loss": d_loss, "g_loss": g_loss, **d, **g}
            history.append(record)
            if loss_log:
                with naming(loss_log.name):
                    # strict JSON (ugatit_common.strict_json): an fp16 step skipped at an overflowing loss
                    # scale has `null` losses, named in the line's `non_finite` field
                    loss_log.write(strict_json.dumps(record) + "\n")
            cli_errors.note_step(it.counter)  # the last step whose line is out (Ctrl-C names it)
            if main:
                bar.update(1)
                log(opt.iteration_line(it.epoch, it.idx, cfg["iteration"], time.time() - start_time, d_loss, g_loss))

        def drain(everything: bool = False) -> None:
            """Finish the pending iterations whose values have arrived, waiting for the oldest
            while more than MAX_PENDING are in flight (or for all: before a sample or a save).
            Under torchrun only the count decides, the same on every rank: a NaN then stops all
            ranks at the same iteration, none is left waiting in a collective."""
            while pending and (everything or len(pending) > MAX_PENDING
                               or (not dist_info.enabled and pending[0].ready())):
                finish(pending.popleft())

        def save_checkpoint(next_epoch, next_batch):
            nonlocal last_saved
            if next_batch >= cfg["iteration"]:
                next_epoch, next_batch = next_epoch + 1, 0
            if last_saved == counter:
                return
            drain(everything=True)  # every loss up to this step known finite before it is saved
            if loss_log:  # every line of the steps this checkpoint holds is on disk before it is
                with naming(loss_log.name):
                    loss_log.flush()
                    os.fsync(loss_log.fileno())
            if writer:  # and every event: a resumed run's purge marker hides whatever came after
                writer.flush(sync=True)
            bad = _first_non_finite(model)  # (every rank: the weights are the same on all)
            if bad:  # finite losses, yet a non-finite value in the weights or Adam's state
                raise NonFiniteLoss(f"{bad} holds a non-finite value (NaN or inf) after step {counter - 1} "
                                    f"(counter {counter}); training stopped, the last checkpoint is left as it was")
            if main:
                state = {"counter": counter, "epoch": next_epoch, "batch_id": next_batch,
                         "loader_A": feed_A.pos, "loader_B": feed_B.pos, "past_g_loss": float(past_g_loss),
                         "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict(),
                         "rng": ckpt.rng_state(), "config": ckpt.plain_config(cfg),
                         "world_size": dist_info.world_size, "run": run_id, "precision": self.precision,
                         "compile": self.compile}
                from .train_precision import loss_scalers
                scalers = loss_scalers(model)
                if scalers:  # fp16: the loss scales, so a resumed run continues exactly
                    state["loss_scale"] = {k: s.state_dict() for k, s in scalers.items()}
                state.update(self.extra_state())
                ckpt.save(paths.checkpoint, prefix, counter, model, state, self.keep_checkpoints)
                cli_errors.note_checkpoint(f"{prefix}.model-{counter}")
            ddp.barrier()
            last_saved = counter

        ok = False
        cli_errors.note_loop_started()
        try:
            if main:
                from .events import EventWriter  # never imports TensorFlow
                writer = EventWriter(paths.log, purge_step=counter)  # a resumed run's steps replace a killed run's
                if self.LOSS_LOG:
                    log_path = os.path.join(paths.log, self.LOSS_LOG)
                    cut_loss_log(log_path, counter)
                    loss_log = open(log_path, "a")
            from tqdm import tqdm
            bar = tqdm(total=max(0, steps_left), file=sys.stderr, disable=(not main) or not sys.stderr.isatty(),
                       desc="train")
            start_time = time.time()
            for epoch in range(start_epoch, cfg["epoch"]):
                lr = opt.learning_rate(cfg, epoch)
                for idx in range(start_batch_id, cfg["iteration"]):
                    real_A_d, real_B_d = feed_A.next(), feed_B.next()
                    d = d_step(real_A_d, real_B_d, lr, gp_draws(cfg, real_A_d, real_B_d, seed, counter, dist_info.rank))
                    if nan_at is not None and counter == nan_at:  # the test hook, on the device when the value is
                        v = d["Discriminator_loss"]
                        d["Discriminator_loss"] = torch.full_like(v, float("nan")) if torch.is_tensor(v) else float("nan")
                        if "D_step_skipped" in d:  # a NaN of the model, not of fp16's loss scale: a step not skipped
                            d["D_step_skipped"] = torch.zeros_like(d["D_step_skipped"]) \
                                if torch.is_tensor(d["D_step_skipped"]) else 0.0
                    it = _Pending(counter, epoch, idx, PendingValues(d, average=dist_info.enabled))
                    if (counter - 1) % cfg["n_critic"] == 0:
                        ra, rb = feed_A.next(), feed_B.next()
                        g = dict(g_step(ra, rb, lr))
                        real_A, real_B, fake_A, fake_B = ra, rb, g.pop("fake_A"), g.pop("fake_B")
                        rho = dict(rho_params) if rho_params else None
                        it.g = PendingValues(g, arrays=rho, average=dist_info.enabled)
                    pending.append(it)
                    counter += 1
                    drain()
                    if main and (idx + 1) % cfg["print_freq"] == 0 and real_A is not None:
                        drain(everything=True)  # the samples follow their iteration's line, as before
                        nhwc = [t.permute(0, 2, 3, 1).float().cpu().numpy() for t in (real_A, fake_B, real_B, fake_A)]
                        tag = f"{epoch:03d}_{idx + 1:05d}"  # the official sample names
                        # the official samples: the whole batch in one column ([batch_size, 1]); and a strip of the
                        # first image's four (real A, A->B, real B, B->A)
                        save_grid(nhwc[0], os.path.join(paths.sample, f"real_A_{tag}.png"), ncols=1)
                        save_grid(nhwc[1], os.path.join(paths.sample, f"fake_B_{tag}.png"), ncols=1)
                        save_grid([a[:1] for a in nhwc], os.path.join(paths.sample, f"sample_{tag}.png"), ncols=4)
                    if (idx + 1) % cfg["save_freq"] == 0:
                        save_checkpoint(epoch, idx + 1)
                start_batch_id = 0
                save_checkpoint(epoch + 1, 0)
            drain(everything=True)
            ok = True
        except NonFiniteLoss:
            pending.clear()  # the iterations after a NaN are neither logged nor recorded
            raise
        except Exception as e:  # noqa: BLE001 - only an out-of-memory error is turned into the one line
            if not is_out_of_memory(e):
                raise
            raise gpu_out_of_memory(e, cfg) from e
        finally:
            if not ok:  # stopped (Ctrl-C, an error): still say what the finished iterations did
                _drain_quietly(pending, finish)
            if bar is not None:
                bar.close()
            try:
                if writer:
                    writer.close()
            finally:  # the loss log closed even when the event file's close fails (a full disk)
                if loss_log:
                    loss_log.close()
        return {"history": history, "checkpoint_dir": paths.checkpoint, "counter": counter, "model": model,
                "paths": paths}


def train(cfg: dict, device: torch.device, num_workers: int = 0, seed: int = 0, keep_checkpoints: int = 5,
          resume: bool = True, precision: str = "fp32", compile: bool = False, cuda_graphs="auto") -> dict:
    """Train (or resume) the port: {"steps", "checkpoint_dir", "counter", "model"}."""
    out = Trainer(cfg, device, num_workers=num_workers, seed=seed, keep_checkpoints=keep_checkpoints,
                  resume=resume, precision=precision, compile=compile, cuda_graphs=cuda_graphs).run()
    return {"steps": out["history"], "checkpoint_dir": out["checkpoint_dir"], "counter": out["counter"],
            "model": out["model"]}
