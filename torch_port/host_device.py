"""Moving values between the host and the device without making the host wait (issue 17).

A CUDA copy from ordinary (pageable) host memory, and any read of a device value (`float(t)`,
`.item()`, `.cpu()`), makes the host wait until the GPU has finished everything queued before it;
read once per step, that wait serialises the host's work (data loading, Python, kernel launches)
with the GPU's. Here, on CUDA:

- `to_device(t, device)`: a host tensor copied from pinned memory with `non_blocking=True` (the
  copy is queued behind the running step; the host goes on);
- `PendingValues(values)`: the loss terms of one step (0-d device tensors, or Python floats)
  stacked into one float64 vector on the device, averaged across torchrun ranks there, and
  copied to pinned host memory with `non_blocking=True`, a CUDA event marking when it lands;
  `ready()` asks the event without waiting, `result()` waits for it (the trainer's loop reads
  the values one or two iterations later);
- `stream_event(device)`: that event, recorded on the current stream of the values' GPU (where
  their copy was queued), not of the process's current GPU (another one, when the values are on
  cuda:N and N is not current: its event would say "arrived" before the copy ran).

On a CPU both are plain: the values are already on the host, so `ready()` is always true and the
floats are the ones `float(t)` gives (float32 -> float64 is exact)."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t.to(device, dtype)`; a host tensor bound for CUDA goes through pinned memory without
    blocking the host (the same values)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        if not t.is_pinned():
            t = t.pin_memory()
        t = t.to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t if dtype is None else t.to(dtype)


def stream_event(device) -> "torch.cuda.Event":
    """A CUDA event recorded on `device`'s current stream: it completes once the work queued there
    so far (e.g. a copy to pinned memory) has run, whichever GPU is the current one."""
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(torch.device(device)))
    return event


class PendingValues:
    """Named scalar values of one training step on their way to the host.

    `values`: name -> 0-d tensor (any device, any float dtype) or Python float; the order is
    kept. `arrays`: name -> tensor (e.g. a snapshot of the rho parameters), fetched with them as
    float32. `average`: average every value across torchrun ranks first (on the device: NCCL on
    CUDA, gloo on CPU; in float64, sum then divide by the world size)."""

    def __init__(self, values: dict, arrays: dict | None = None, average: bool = False):
        self.keys = list(values)
        tensors = [v for v in values.values() if torch.is_tensor(v)]
        device = tensors[0].device if tensors else torch.device("cpu")
        parts = [v.detach().reshape(()).to(device, torch.float64) if torch.is_tensor(v)
                 else torch.full((), float(v), dtype=torch.float64, device=device) for v in values.values()]
        vec = torch.stack(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
        if average:
            from .distributed import all_reduce_mean_
            all_reduce_mean_([vec])
        self.arrays = [(k, tuple(a.shape)) for k, a in (arrays or {}).items()]
        flat = torch.cat([a.detach().reshape(-1).to(device, torch.float32) for a in arrays.values()]) \
            if arrays else None
        self.event = None
        if device.type == "cuda":
            self._vec = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True).copy_(vec, non_blocking=True)
            self._flat = None if flat is None else \
                torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True).copy_(flat, non_blocking=True)
            self.event = stream_event(device)  # the copies' GPU, not necessarily the current one
        else:
            self._vec, self._flat = vec, flat

    def ready(self) -> bool:
        """True when the values have reached the host (never waits)."""
        return self.event is None or self.event.query()

    def result(self) -> tuple[dict, dict]:
        """({name: float}, {array name: float32 CPU tensor}); waits for the copy if needed."""
        if self.event is not None:
            self.event.synchronize()
        values = dict(zip(self.keys, self._vec.tolist()))
        arrays, offset = {}, 0
        for name, shape in self.arrays:
            n = 1
            for s in shape:
                n *= s
            arrays[name] = self._flat[offset:offset + n].view(shape)
            offset += n
        return values, arrays
