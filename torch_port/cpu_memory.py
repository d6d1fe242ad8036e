"""Keep freed CPU memory for reuse during training (glibc only; a no-op elsewhere).

Every training step allocates and frees the same large tensors (a light 256 px model's largest
discriminator kernels and their gradients are 134 MB each). glibc serves blocks above its mmap
threshold (at most 32 MB) with a fresh mmap and unmaps them on free, so each step page-faults
them in again: a `w / sigma` on such a kernel measured 67 ms with a new block vs 14 ms into a
reused one. Turning mmap off and raising the trim threshold keeps freed blocks in the heap.
Called by the command lines (a process setting), never on import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """mallopt(M_MMAP_MAX, 0) and a 1 TiB trim threshold; True if glibc accepted both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
