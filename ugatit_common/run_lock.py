"""One owner per run folder: an exclusive lock held for the life of a training run.

The lock is `flock` on `<folder>/.ugatit-run.lock`. The kernel releases it when the holder's
process ends in any way (exit, crash, SIGKILL), so a killed run never blocks the next one. Who
holds it is written beside it, atomically, in `<folder>/.ugatit-run.owner` (JSON: pid, command,
start time, host); that file is only information - the lock is what decides. A run that ends
normally removes both files (it unlinks the lock file while still holding it; `acquire` checks
that the file it locked is still the one at that path, so a run that opened the file just
before it was removed tries again instead of holding a lock nobody else sees). A killed run
leaves them; the next run takes the same file over (`RunLock.taken_over`: who left it, for the
training run's one `note:` line, checkpoint_policy.own_run).

    with own_folder(folder, "--checkpoint_dir"):   # FolderInUse (exit 2) if another run holds it
        ... read, sweep, move aside, train, save ...
    held_by(folder)                                # Holder or None: for commands that write outputs
    require(owner, folder, "moving an older run aside")   # the policy's folder-changing steps

Everything a run does to its folder (reading checkpoints, sweeping temp files, moving an older
run aside, falling back from an unusable checkpoint) happens while holding the lock; the
checkpoint policy's functions that change a folder take the lock (`owner`) and `require` it.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass

from .machine_limits import limit_error
from .made_folders import missing_top, remove_empty_chain
from .options import OptionError

LOCK_NAME = ".ugatit-run.lock"
OWNER_NAME = ".ugatit-run.owner"
# a results command's hold on the folder it writes its pictures and page into (output_guard.own_result_folder)
RESULTS_LOCK_NAME, RESULTS_OWNER_NAME = ".ugatit-results.lock", ".ugatit-results.owner"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

# `held_by` probes with a shared lock for a few microseconds; an `acquire` landing in that moment
# tries again this often before it concludes that another run holds the folder
_CONTENDED_TRIES, _CONTENDED_WAIT_S = 5, 0.02
_FRESH_S = 60  # `sweep_dead` leaves a lock file this young without its owner file (being taken right now)


class FolderInUse(OptionError):
    """Another live process holds the folder's run lock (`holder`: who, from the owner file)."""

    def __init__(self, message: str, holder: "Holder | None" = None):
        super().__init__(message)
        self.holder = holder


class NotOwner(RuntimeError):
    """A folder-changing step of the checkpoint policy was called without holding the folder's
    run lock: a bug in the caller (exit 1), never bad input."""


@dataclass
class Holder:
    """Who holds a folder's lock (from the owner file; fields may be unknown: None)."""
    pid: int | None = None
    command: str | None = None
    started: str | None = None
    host: str | None = None

    def is_this_process(self) -> bool:
        """Whether the holder is this very process: its pid, on this host (a folder shared between
        hosts may be held by the same pid elsewhere); an owner file naming no host: by pid alone."""
        return self.pid == os.getpid() and (self.host is None or self.host == socket.gethostname())

    def describe(self) -> str:
        parts = [f"pid {self.pid if self.pid is not None else '?'}"]
        if self.host and self.host != socket.gethostname():
            parts[0] += f" on {self.host}"
        if self.started:
            parts.append(f"started {self.started}")
        if self.command:
            parts.append(f"command: {self.command}")
        return ", ".join(parts)


def _read_owner(folder: str, owner_name: str = OWNER_NAME) -> Holder:
    try:
        with open(os.path.join(folder, owner_name)) as fh:
            d = json.load(fh)
        return Holder(d.get("pid"), d.get("command"), d.get("started"), d.get("host"))
    except (OSError, ValueError, AttributeError):
        return Holder()


def held_by(folder: str, lock_name: str = LOCK_NAME, owner_name: str = OWNER_NAME) -> Holder | None:
    """The live holder of `folder`'s run lock, or None when no process holds it (a lock held by
    this very process counts: its pid is os.getpid()). `lock_name` / `owner_name`: another lock
    of the folder taken the same way (output_guard's claims of one output file)."""
    path = os.path.join(folder, lock_name)
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
            return _read_owner(folder, owner_name)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()  # this process's held locks (_forget_in_child)


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker with --num_workers N): close its copies of the held
    locks' descriptors and forget them. A flock belongs to the open file that fork shares, so a
    child keeping its copy kept the folder locked after its parent was killed (SIGKILL): the next
    run was refused, naming the dead parent's pid, until the workers noticed and exited. Closing a
    copy never releases the parent's lock, and a forgotten lock's `release()` in the child is a
    no-op: it never removes the parent's lock files."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """The held lock of one folder; `release()` (or leaving `own_folder`) lets it go."""

    def __init__(self, folder: str, fd: int, names=(OWNER_NAME, LOCK_NAME), created: str | None = None,
                 taken_over: "Holder | None" = None):
        self.folder, self._fd, self._names = folder, fd, tuple(names)
        self.created = created  # the topmost folder `acquire` created for it (None: it existed)
        self.taken_over = taken_over  # the holder whose lock files were left behind (`acquire`), else None
        _HELD.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def covers(self, folder: str) -> bool:
        """Whether this lock is held and is `folder`'s."""
        return self.held and _same_folder(self.folder, folder)

    def release(self) -> None:
        _HELD.discard(self)
        if self._fd is None:
            return
        for name in self._names:  # removed while still held: see the module docstring
            try:
                os.remove(os.path.join(self.folder, name))
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


class RunLocks:
    """The held locks of every folder one run writes (checkpoints, samples, logs)."""

    def __init__(self, locks: list):
        self.locks = list(locks)

    @property
    def held(self) -> bool:
        return bool(self.locks) and all(lock.held for lock in self.locks)

    @property
    def folder(self) -> str:
        return self.locks[0].folder

    def covers(self, folder: str) -> bool:
        return any(lock.covers(folder) for lock in self.locks)

    def taken_over(self) -> list[tuple[str, Holder]]:
        """[(folder, holder)] of the folders whose lock this run took over from a holder that ended
        without its clean-up (`RunLock.taken_over`)."""
        return [(lock.folder, lock.taken_over) for lock in self.locks if lock.taken_over is not None]

    def release(self, failed: bool = False) -> None:
        """Let every lock go; `failed` (the run ended by an exception: a refusal, Ctrl-C, a NaN
        stop): the folders `acquire` made for it that are still empty go too, so a run refused
        before it wrote anything leaves the disk as it found it (one holding anything stays)."""
        for lock in reversed(self.locks):
            lock.release()
            if failed:
                remove_created(lock)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.release(failed=exc_type is not None)


def require(owner, folder: str, action: str) -> None:
    """Raise NotOwner unless `owner` (a RunLock or RunLocks) holds `folder`'s lock: the checkpoint
    policy's folder-changing steps call this first."""
    if owner is None or not owner.covers(folder):
        raise NotOwner(f"internal: {action} in {folder!r} without holding its run lock "
                       f"(ugatit_common.run_lock)")


def _command_line() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if os.path.basename(argv0) == "__main__.py":  # python -m <package>
        argv0 = "python -m " + os.path.basename(os.path.dirname(os.path.abspath(argv0)))
    else:
        argv0 = os.path.basename(argv0)
    text = " ".join([argv0] + list(sys.argv[1:]))
    text = text if len(text) <= 400 else text[:400] + "..."
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:  # a torchrun worker: the one to stop is its launcher
        text += (f" (rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')} under torchrun, "
                 f"whose pid is {os.getppid()})")
    return text


def _identity(st) -> tuple:
    return st.st_dev, st.st_ino


def _open_lock_file(path: str, folder: str) -> int:
    """The lock file's descriptor, made if needed. One that this user may not write (left behind by
    another user's run that was killed: mode 0644, theirs) is opened read-only: a flock needs no
    write access, and a folder this user may write is then not called "not writable"."""
    flags = getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
    except PermissionError:
        if not (os.path.isfile(path) and os.access(folder, os.W_OK | os.X_OK)):
            raise
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | flags)


def acquire(folder: str, what: str = "checkpoint folder", command: str | None = None, *,
            lock_name: str = LOCK_NAME, owner_name: str = OWNER_NAME) -> RunLock:
    """Create `folder` if needed and take its run lock, or raise FolderInUse naming the holder
    (pid, command, start time). An unwritable folder is an OptionError naming `what`.
    `lock_name` / `owner_name`: another lock of the folder, taken the same way (output_guard
    claims one output file with `.<file name>.ugatit-out.lock`)."""
    if fcntl is None:  # pragma: no cover
        raise OptionError("run folders can only be locked on a POSIX system (fcntl.flock)")
    path = os.path.join(folder, lock_name)
    created = missing_top(folder)
    contended = 0
    while True:
        try:
            os.makedirs(folder, exist_ok=True)
            existed = os.path.lexists(path)  # a lock file left behind: its holder's clean-up never ran
            fd = _open_lock_file(path, folder)
        except OSError as e:
            if e.errno in (errno.EISDIR, errno.ENOENT, errno.ELOOP) and os.path.lexists(path):
                # a folder or a dangling link by that name, not an unwritable folder
                raise OptionError(f"{what} {folder!r}: its lock file {path!r} cannot be opened ({e.strerror or e}); "
                                  f"it is not a lock file this program wrote: move it away") from e
            limit = limit_error(e, f"cannot open the lock file of {what} {folder!r}")
            if limit is not None:  # `ulimit -n`, not the folder's permissions
                raise limit from None
            from .cli_errors import no_folder_on_the_way
            blocked = no_folder_on_the_way(folder)
            if blocked is not None:  # a file or a dead link where the folder goes, as check_writable_folder says
                raise OptionError(f"{what} {folder!r} is not writable: {blocked}") from e
            raise OptionError(f"{what} {folder!r} is not writable: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            contended += 1
            if contended < _CONTENDED_TRIES:
                time.sleep(_CONTENDED_WAIT_S)
                continue
            holder = _read_owner(folder, owner_name)
            raise FolderInUse(f"{what} {folder!r} is in use by another run ({holder.describe()}); "
                              f"wait for it to end, or give this run another folder", holder) from None
        except OSError as e:
            os.close(fd)
            raise OptionError(f"{what} {folder!r}: cannot lock it ({e.strerror or e})") from e
        try:  # the file locked must still be the one at `path` (a finishing run removes it)
            same = _identity(os.stat(path)) == _identity(os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    left = _left_behind(folder, fd, owner_name) if existed else None
    lock = RunLock(folder, fd, (owner_name, lock_name), created, left)
    try:
        info = {"pid": os.getpid(), "command": command or _command_line(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "host": socket.gethostname()}
        try:  # information only; written atomically so a reader never sees half of it
            from .atomic import write_bytes_atomic
            write_bytes_atomic(os.path.join(folder, owner_name), json.dumps(info).encode())
        except OSError:
            pass
    except BaseException:  # Ctrl-C while the owner file was written: the lock and its files go
        lock.release()
        raise
    return lock


def _left_behind(folder: str, fd: int, owner_name: str) -> Holder | None:
    """The holder (from its owner file) of the lock file `fd` that existed before `acquire` took it:
    a process that ended without its clean-up (killed; a run that ends removes both files). None
    when nothing says so: no owner file and a lock file this young (another command that opened it
    a moment ago and lost the race; `sweep_dead`'s rule)."""
    if not os.path.lexists(os.path.join(folder, owner_name)):
        try:
            if time.time() - os.fstat(fd).st_mtime < _FRESH_S:
                return None
        except OSError:
            return None
    return _read_owner(folder, owner_name)


def sweep_dead(folder: str, owner_of) -> list[tuple[str, Holder]]:
    """Remove the lock files in `folder` whose holder has ended without its clean-up (SIGKILL, a
    power cut): `owner_of(name)` gives a lock file's owner-file name, or None for a file that is
    not such a lock. A lock whose flock is free is a dead holder's, whatever pid its owner file
    names (a pid may be reused); it is removed with its owner file while held, as `release` does,
    so an `acquire` racing with the sweep locks a fresh file. A lock held by a live process (this
    one included) is left alone. Returns [(lock name, its holder as the owner file said)]."""
    if fcntl is None:  # pragma: no cover
        return []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    gone = []
    for name in names:
        owner_name = owner_of(name)
        if owner_name is None:
            continue
        path = os.path.join(folder, name)
        try:  # never created here: only an existing lock file is looked at
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a live command's
                continue
            try:
                if not os.path.samestat(os.fstat(fd), os.stat(path)):  # released and made anew meanwhile
                    continue
            except FileNotFoundError:
                continue
            if not os.path.lexists(os.path.join(folder, owner_name)) and \
                    time.time() - os.fstat(fd).st_mtime < _FRESH_S:  # an acquire between its open and its flock
                continue
            holder = _read_owner(folder, owner_name)
            for n in (owner_name, name):
                try:
                    os.remove(os.path.join(folder, n))
                except FileNotFoundError:
                    pass
            gone.append((name, holder))
        finally:
            os.close(fd)  # lets the lock go
    return gone


def remove_created(lock: RunLock) -> None:
    """Remove the folders `acquire` created for `lock` (from its folder up to `lock.created`)
    while they are empty: a run refused for another of its folders leaves none behind."""
    if lock.created:
        remove_empty_chain(lock.folder, lock.created)


own_folder = acquire  # `with own_folder(folder): ...` reads as what it is


def acquire_all(folders, command: str | None = None) -> RunLocks:
    """Take the run locks of several folders [(folder, what), ...] in the given order (the same
    folder named twice is locked once). If one is held by another run, the ones taken are let go
    again (and the folders made for them removed: the refused run changes nothing on disk) and
    FolderInUse names the held one."""
    taken: list[RunLock] = []
    try:
        for folder, what in folders:
            if any(lock.covers(folder) for lock in taken):
                continue
            taken.append(acquire(folder, what, command))
    except BaseException:
        for lock in reversed(taken):
            lock.release()
            remove_created(lock)
        raise
    return RunLocks(taken)
