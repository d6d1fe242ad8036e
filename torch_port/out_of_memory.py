"""Which errors mean the device ran out of memory (one line naming what to lower, not a traceback).

PyTorch's caching allocator raises `torch.OutOfMemoryError`. An allocation a CUDA library makes
itself - cuDNN's or cuBLAS's workspace or handle, made the first time a kernel of a new shape runs -
or a CUDA call outside the allocator fails as a plain `RuntimeError` (`torch.AcceleratorError` in
newer releases) carrying the library's status name instead; it is the same condition for a user."""
from __future__ import annotations

import torch

# status names of a failed allocation, as the libraries and the CUDA runtime spell them in torch's messages
MARKS = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED",
         "CUSOLVER_STATUS_ALLOC_FAILED", "CUSPARSE_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error of the allocator or of a CUDA library."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in MARKS)
