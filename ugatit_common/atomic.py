"""Atomic file output: write to a temp file beside the target, then os.replace; on any error
the temp file is removed and the target is untouched (nothing half-written is ever seen).
Published files get the mode a plain `open(path, "w")` would give them: 0o666 minus the umask
(`file_mode`), not the 0o600 of the temp file. A temp file's name holds its writer's pid
(`.tmp-<pid>-...`), so one left by a killed writer can be told from one being written
(`sweep_dead_temps`)."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux: /proc; setting
    and restoring it would briefly give other threads' files a zero umask)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a newly created regular file gets under the current umask (0o666 & ~umask)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_output(path: str, mode: int | None = None):
    """Yield a temp file name in `path`'s folder (created if needed); it replaces `path` when the
    block ends normally and is deleted when it raises. `mode`: the published file's mode
    (default: file_mode(), i.e. what the umask allows)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def all_or_nothing(paths):
    """Around writes that publish several files, each atomically (a TF checkpoint's .data and
    .index, an ONNX model and its companion codes): when the block raises (a rename failing half
    way, a full disk, Ctrl-C), every one of `paths` is again what it was before - a file that
    existed is restored from a hard link kept beside it (`.tmp-<pid>-...`, swept as a temp file
    if the process is killed), one that did not is removed. Without this, the first file renamed
    stays: new .data beside the old .index (a corrupt checkpoint), or a new file without its
    partner. Where the file system has no hard links, an existing file cannot be restored (it
    may be left replaced); new files are still removed."""
    kept = {}      # path -> (backup, (dev, ino) of the file it was)
    absent = []
    try:
        for p in paths:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                absent.append(p)
                continue
            folder = os.path.dirname(os.path.abspath(p))
            backup = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(6).hex()}.keep")
            try:
                os.link(p, backup, follow_symlinks=False)
            except OSError:  # no hard links here: nothing to restore from
                continue
            kept[p] = (backup, (st.st_dev, st.st_ino))
        yield
    except BaseException:
        for p, (backup, identity) in kept.items():
            try:
                st = os.lstat(p)
                same = (st.st_dev, st.st_ino) == identity
            except FileNotFoundError:
                same = False
            try:
                if same:
                    os.remove(backup)
                else:
                    os.replace(backup, p)
            except OSError:
                pass
        for p in absent:
            try:
                if os.path.lexists(p):
                    os.remove(p)
            except OSError:
                pass
        raise
    else:
        for backup, _ in kept.values():
            try:
                os.remove(backup)
            except OSError:
                pass


class WriteFailed(OSError):
    """write_files_atomic: one of the files could not be written (`path`); none was."""

    def __init__(self, path: str, e: OSError):
        super().__init__(e.errno, f"cannot write {path!r}: {e.strerror or e}")
        self.path = path


def write_files_atomic(files: dict, fsync: bool = True) -> None:
    """Write several files {path: bytes} together or not at all: every one to a temp file beside
    it (fsynced), then each renamed into place (`all_or_nothing`: a rename failing half way puts
    back the ones already done). WriteFailed (an OSError) names the file that failed."""
    temps = {}
    writing = None
    try:
        with all_or_nothing(list(files)):
            for writing, data in files.items():
                folder = os.path.dirname(os.path.abspath(writing))
                os.makedirs(folder, exist_ok=True)
                fd, temps[writing] = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-",
                                                      suffix=os.path.splitext(writing)[1], dir=folder)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    if fsync:
                        os.fsync(fh.fileno())
                os.chmod(temps[writing], file_mode())
            for writing in files:
                os.replace(temps[writing], writing)
                del temps[writing]
    except OSError as e:
        raise WriteFailed(writing, e) from e
    finally:
        for tmp in temps.values():
            try:
                os.remove(tmp)
            except OSError:
                pass


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


_WRITER = re.compile(r"^\.tmp-(\d+)-")
STALE_S = 24 * 3600  # a temp file this old is left over whatever its pid says (pids are reused)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def abandoned(path: str) -> bool | None:
    """For a temp file of `atomic_output` (`.tmp-<pid>-...`): whether its writer is gone (that pid
    is not running, or the file is older than STALE_S); None for any other name."""
    m = _WRITER.match(os.path.basename(path))
    if not m:
        return None
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        return not _alive(pid) or time.time() - os.path.getmtime(path) >= STALE_S
    except OSError:  # gone meanwhile
        return False


def sweep_dead_temps(folder: str) -> list[str]:
    """Remove the temp files of `atomic_output` in `folder` (not in subfolders) whose writer is
    gone (a process killed mid-write, SIGKILL or power loss): their pid is not running, or they are
    older than STALE_S. A temp file of a process still running (another command writing into the
    same folder) is left alone. Returns the names removed."""
    gone = []
    try:
        names = os.listdir(folder)
    except OSError:
        return gone
    for n in names:
        p = os.path.join(folder, n)
        if not abandoned(p) or not os.path.isfile(p):
            continue
        try:
            os.remove(p)
            gone.append(n)
        except OSError:  # gone meanwhile, or not ours to remove
            pass
    return gone
