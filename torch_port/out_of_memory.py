"""Which errors mean the device ran out of memory (one line naming what to lower, not a traceback).

PyTorch's caching allocator raises `torch.OutOfMemoryError`. An allocation a CUDA library makes
itself - cuDNN's or cuBLAS's workspace or handle, made the first time a kernel of a new shape runs -
or a CUDA call outside the allocator fails as a plain `RuntimeError` (`torch.AcceleratorError` in
newer releases) carrying the library's status name instead (`ugatit_common.cli_errors.GPU_OOM_MARKS`);
it is the same condition for a user."""
from __future__ import annotations

import torch

from ugatit_common.cli_errors import gpu_library_out_of_memory


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error of the allocator or of a CUDA library."""
    return isinstance(error, torch.OutOfMemoryError) or gpu_library_out_of_memory(error)
