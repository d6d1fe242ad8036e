"""Data-parallel training across processes/machines (torchrun / torch.distributed).

`UGATIT._apply` computes gradients with `torch.autograd.grad`, sets `.grad` and calls
`optim.step(lr)`; DDP's reducer hooks never fire on that path. So instead of wrapping the model
in DistributedDataParallel, each TF1Adam's `step` is wrapped (`average_gradients_before_step`):
the `.grad` tensors are flattened into one buffer, all-reduced (sum) and divided by the world
size, then the original TF1 Adam step runs. Every rank therefore applies the same update to the
same weights. Spectral-norm `u` buffers stay identical on all ranks without communication: each
rank runs the same power iteration from the same `u` and the same (identical) kernel.

Logged loss values are averaged on their device (`torch_port.host_device.PendingValues`, through
`all_reduce_mean_`: NCCL on CUDA, gloo on CPU), without a read back to the host. On CUDA each
process drives one GPU (`LOCAL_RANK`); the steps are not captured in CUDA graphs when there is
more than one process (`torch_port.train_graphs`).

Every collective of the run goes through this module. When another process of the run has
stopped (its own error, Ctrl-C, a kill), a collective fails on the others with the backend's
error (gloo: "Connection closed by peer ... GLHF!"); it is raised as `PeerStopped`, which the
command lines report as one `error:` line (exit 2) instead of an internal error, and which a
rank other than 0 keeps quiet about before its training loop starts (`ugatit_common.cli_errors`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class PeerStopped(RuntimeError):
    """A collective failed: another process of this run stopped (its error is on its own stderr)."""


@contextlib.contextmanager
def _collective():
    try:
        yield
    except PeerStopped:
        raise
    except RuntimeError as e:  # gloo / NCCL / c10d: the peer's socket closed, a timeout, an abort
        info = current()
        raise PeerStopped(f"rank {info.rank} of this {info.world_size}-process torchrun run stopped because another "
                          f"rank stopped first (its error, if it printed one, is above)") from e


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_type: str) -> DistInfo:
    """Initialise torch.distributed from the torchrun environment when WORLD_SIZE > 1
    (NCCL on CUDA, gloo otherwise)."""
    ws = env_world_size()
    if ws <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average `tensors` in place across ranks with one flat all-reduce."""
    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    with _collective():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def average_gradients_before_step(optim) -> None:
    """Wrap `optim.step` (a TF1Adam) so the `.grad` of its parameters are averaged across ranks
    first. Parameters with no gradient have none on every rank (same graph), so they are skipped
    consistently."""
    if getattr(optim, "_grads_averaged", False):
        return
    original = optim.step

    def step(lr=None):
        grads = [p.grad for _, p in optim.named_params if p.grad is not None]
        all_reduce_mean_(grads)
        return original(lr)

    optim.step = step
    optim._grads_averaged = True


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad(), _collective():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with _collective():
            dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
