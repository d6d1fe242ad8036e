"""One owner per run folder: an exclusive lock held for the life of a training run.

The lock is `flock` on `<folder>/.ugatit-run.lock` (created, never deleted: deleting a lock
file races with a run opening it). The kernel releases it when the holder's process ends in
any way (exit, crash, SIGKILL), so a killed run never blocks the next one. Who holds it is
written beside it, atomically, in `<folder>/.ugatit-run.owner` (JSON: pid, command, start
time, host); that file is only information - the lock is what decides.

    with own_folder(folder, "--checkpoint_dir"):   # FolderInUse (exit 2) if another run holds it
        ... read, sweep, move aside, train, save ...
    held_by(folder)                                # Holder or None: for commands that write outputs

Everything a run does to its folder (reading checkpoints, sweeping temp files, moving an older
run aside, falling back from an unusable checkpoint) happens while holding the lock.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from dataclasses import dataclass

from .options import OptionError

LOCK_NAME = ".ugatit-run.lock"
OWNER_NAME = ".ugatit-run.owner"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class FolderInUse(OptionError):
    """Another live process holds the folder's run lock."""


@dataclass
class Holder:
    """Who holds a folder's lock (from the owner file; fields may be unknown: None)."""
    pid: int | None = None
    command: str | None = None
    started: str | None = None
    host: str | None = None

    def describe(self) -> str:
        parts = [f"pid {self.pid if self.pid is not None else '?'}"]
        if self.host and self.host != socket.gethostname():
            parts[0] += f" on {self.host}"
        if self.started:
            parts.append(f"started {self.started}")
        if self.command:
            parts.append(f"command: {self.command}")
        return ", ".join(parts)


def _read_owner(folder: str) -> Holder:
    try:
        with open(os.path.join(folder, OWNER_NAME)) as fh:
            d = json.load(fh)
        return Holder(d.get("pid"), d.get("command"), d.get("started"), d.get("host"))
    except (OSError, ValueError, AttributeError):
        return Holder()


def held_by(folder: str) -> Holder | None:
    """The live holder of `folder`'s run lock, or None when no process holds it (a lock held by
    this very process counts: its pid is os.getpid())."""
    path = os.path.join(folder, LOCK_NAME)
    if fcntl is None or not os.path.isfile(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(folder)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The held lock of one folder; `release()` (or leaving `own_folder`) lets it go."""

    def __init__(self, folder: str, fd: int):
        self.folder, self._fd = folder, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(os.path.join(self.folder, OWNER_NAME))
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _command_line() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"] + list(sys.argv[1:])
    text = " ".join(argv)
    return text if len(text) <= 400 else text[:400] + "..."


def acquire(folder: str, what: str = "checkpoint folder", command: str | None = None) -> RunLock:
    """Create `folder` if needed and take its run lock, or raise FolderInUse naming the holder
    (pid, command, start time). An unwritable folder is an OptionError naming `what`."""
    if fcntl is None:  # pragma: no cover
        raise OptionError("run folders can only be locked on a POSIX system (fcntl.flock)")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise OptionError(f"{what} {folder!r} is not writable: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _read_owner(folder)
        raise FolderInUse(f"{what} {folder!r} is in use by another run ({holder.describe()}); "
                          f"wait for it to end, or give this run another folder") from None
    except OSError as e:
        os.close(fd)
        raise OptionError(f"{what} {folder!r}: cannot lock it ({e.strerror or e})") from e
    info = {"pid": os.getpid(), "command": command or _command_line(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname()}
    try:  # information only; written atomically so a reader never sees half of it
        from .atomic import write_bytes_atomic
        write_bytes_atomic(os.path.join(folder, OWNER_NAME), json.dumps(info).encode())
    except OSError:
        pass
    return RunLock(folder, fd)


own_folder = acquire  # `with own_folder(folder): ...` reads as what it is
