"""Atomic file output: write to a temp file beside the target, then os.replace; on any error
the temp file is removed and the target is untouched (nothing half-written is ever seen)."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o644):
    """Yield a temp file name in `path`'s folder (created if needed); it replaces `path` when the
    block ends normally and is deleted when it raises."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path
