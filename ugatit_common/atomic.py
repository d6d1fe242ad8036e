"""Atomic file output: write to a temp file beside the target, then os.replace; on any error
the temp file is removed and the target is untouched (nothing half-written is ever seen).
Published files get the mode a plain `open(path, "w")` would give them: 0o666 minus the umask
(`file_mode`), not the 0o600 of the temp file. A temp file's name holds its writer's pid
and host (`.tmp-<pid>@<host id>-...`), so one left by a killed writer can be told from one being
written (`sweep_dead_temps`), and one of another machine sharing the folder (NFS) is never judged
by a pid of this one."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import tempfile
import time
import zlib

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


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


class FolderGiven(IsADirectoryError):
    """A file was to be written at a path that is, or names, a folder (an existing one, or one
    written with a trailing separator): said with the user's path, not the OS's line about the
    temp file (`Is a directory: '.tmp-...' -> 'x'`, after the work)."""

    def __init__(self, path: str):
        why = "ends in a path separator" if path.endswith(("/", os.sep)) else "is a folder"
        super().__init__(errno.EISDIR, f"{path!r} {why}, where this command writes a file: give a file name, "
                                        f"or move that folder away")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def folder_given(path: str) -> FolderGiven | None:
    """FolderGiven when `path`, where a file goes, is an existing folder (a link to one too) or
    ends in a separator; else None. For checks before a command's work, and atomic writes."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return FolderGiven(path)
    return None


@contextlib.contextmanager
def atomic_output(path: str, mode: int | None = None):
    """Yield a temp file name in `path`'s folder (created if needed); it replaces `path` when the
    block ends normally and is deleted when it raises. `mode`: the published file's mode
    (default: file_mode(), i.e. what the umask allows). FolderGiven where `path` is a folder."""
    if folder_given(path):
        raise folder_given(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        with naming(path):
            yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def naming(path: str):
    """An OSError without a file name raised in the block (a write or flush on a full disk:
    `[Errno 28] No space left on device`, naming nothing) becomes WriteFailed naming `path`."""
    try:
        yield
    except OSError as e:
        if type(e) is not OSError or e.filename is not None:  # FileNotFoundError & co. stay what they are
            raise
        raise WriteFailed(path, e) from e


JOURNAL = ".journal"  # suffix of publish_together's record: `.tmp-<pid>@<host id>-<hex>.journal`
_BACKUP = re.compile(r"^\.tmp-\d+(@[0-9a-z]+)?-[0-9a-f]+\.keep$")  # its backups' names (older: no host)


def fsync_folder(folder: str) -> None:
    """fsync a folder (its entries: renames into it survive a power cut); a no-op where not possible."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _identity(st) -> list:
    """What tells a published file from any other at its path: size and mtime (a rename keeps both,
    and so does a copy that keeps times, `cp -a`; a file put there since has its own mtime)."""
    return [st.st_size, st.st_mtime_ns]


class _Journal:
    """One publish_together's record, `<stem>.journal`, held under an exclusive flock by its writer
    from before its first backup until the write has committed or been rolled back: a journal whose
    lock can be taken is a dead writer's (SIGKILL, power loss) - whatever its pid says (a pid reused
    after a restart, another container's). Written as `<stem>.journal-part`, then renamed whole."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, f"{temp_prefix()}{os.urandom(6).hex()}{JOURNAL}")
        self.part = self.path + "-part"
        # made under a name recovery never looks at and locked before it takes the `-part` name: a
        # `-part` file whose lock is free is then always a dead writer's (another command's
        # recover_interrupted_writes, between an open and its flock, removed a live one's journal)
        new = self.path + "-new"
        self.fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(new, self.part)
        except BaseException:
            remove_quietly(new)
            self.close()
            raise

    def write(self, entries: list) -> None:
        """For each file its name (in the journal's folder), what it was before - the name of its
        backup hard link, "absent", or "kept" (existed but could not be linked: nothing to restore
        it from) - and `new`, the identity of the file about to be renamed onto it (None: it is
        being removed)."""
        data = json.dumps({"journal": 3, "files": entries}).encode()
        os.write(self.fd, data)
        os.fsync(self.fd)
        os.replace(self.part, self.path)
        fsync_folder(os.path.dirname(self.path))

    def close(self) -> None:
        """Remove the journal (either name) and let its lock go."""
        for p in (self.path, self.part):
            remove_quietly(p)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _dead_journal(path: str):
    """An fd holding the lock of the journal at `path` when its writer is gone (the caller then
    owns it: roll back, remove, close), else None (a live writer holds it, or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif not abandoned(path):  # pragma: no cover - no flock: the writer's pid and age decide
            raise BlockingIOError
        if not os.path.samestat(os.fstat(fd), os.stat(path)):  # renamed or removed meanwhile
            raise FileNotFoundError
    except OSError:
        os.close(fd)
        return None
    return fd


def _valid(entries) -> list:
    """A journal's entries, or ValueError: it names files of its own folder only, its own backups,
    and identities of two integers."""
    for e in entries:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and os.path.basename(e["path"]) == e["path"]
                and e["path"] not in ("", ".", "..") and isinstance(e.get("was"), str)
                and (e["was"] in ("absent", "kept") or _BACKUP.match(e["was"]))
                and (e.get("new") is None or (isinstance(e["new"], list) and len(e["new"]) == 2
                                              and all(isinstance(v, int) for v in e["new"])))):
            raise ValueError(f"not a journal entry: {e!r}")
    return entries


class ChangedSince(Exception):
    """A journal names a file that is neither what its write published nor what was there
    before (copied without its times, or replaced by hand since): nothing is decided for it."""


def _roll_back(folder: str, entries: list) -> list[str]:
    """Put back every file of a journal that its write changed: a file it published (its identity
    in `new`) is replaced by its backup or, where there was none, removed; a file it removed (`new`
    None, now absent) comes back from its backup. A file the write had not reached is left as it
    is. Backups are then removed. A file that is neither the published one nor the one before it
    (changed since) stops everything first: ChangedSince, nothing touched. Returns the names put
    back; every file is tried, then the first OSError is raised. Idempotent."""
    plan = []
    for e in _valid(entries):
        p = os.path.join(folder, e["path"])
        backup = None if e["was"] in ("absent", "kept") else os.path.join(folder, e["was"])
        try:
            now = _identity(os.lstat(p))
        except FileNotFoundError:
            now = None
        try:
            before = _identity(os.lstat(backup)) if backup else None
        except FileNotFoundError:
            before, backup = None, None
        if e["new"] is not None:
            ours = now == e["new"]
            untouched = now is None if e["was"] == "absent" else (now == before if backup else not ours)
        else:
            ours = now is None and e["was"] != "absent"
            untouched = now is not None and (now == before if backup else True)
        if not (ours or untouched or (now is None and e["was"] == "absent")):
            raise ChangedSince(e["path"])
        plan.append((p, e, backup, ours and now is not None or (ours and e["new"] is None)))
    changed, failed = [], None
    for p, e, backup, put_back in plan:
        try:
            if put_back and backup is not None:
                os.replace(backup, p)
                changed.append(e["path"])
            elif put_back and e["was"] == "absent" and os.path.lexists(p):
                os.remove(p)
                changed.append(e["path"])
            if backup is not None and os.path.lexists(backup):
                os.remove(backup)
        except OSError as err:
            failed = failed or err
    if failed:
        raise failed
    return changed


def _writer(name: str) -> str:
    """Who wrote the journal `name`, for a message: `process <pid>`, `... on another host`."""
    m = _WRITER.match(name)
    return f"process {m.group(1)}" + ("" if m.group(2) in (None, host_id()) else " on another host")


def recover_interrupted_writes(folder: str, log=print) -> list[str]:
    """Finish what a killed publish_together left in `folder` (SIGKILL or power loss between its
    renames: a new .data beside the old .index, a port checkpoint's weights without their state,
    an ONNX model without its new codes): each journal whose writer is gone (its lock free) is
    rolled back - every file it had changed is again what it was before that write - and removed.
    A running writer's journal is left alone. A journal naming a file changed since, or one that
    cannot be rolled back (no permission, damaged), is said in one line and left with its backups
    (the earlier files), for the user to decide. Returns the names put back."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    restored = []
    for n in names:
        p = os.path.join(folder, n)
        if not (_WRITER.match(n) and n.endswith((JOURNAL, JOURNAL + "-part"))):
            continue
        fd = _dead_journal(p)
        if fd is None:
            continue
        try:
            if n.endswith("-part"):  # killed while writing its journal: no rename had begun
                os.remove(p)
                continue
            with open(p, encoding="utf-8") as fh:
                entries = json.load(fh)["files"]
            changed = _roll_back(folder, entries)
            os.remove(p)
        except FileNotFoundError:  # another command recovered it meanwhile
            continue
        except ChangedSince as e:
            kept = [x["was"] for x in entries if _BACKUP.match(str(x.get("was")))]
            log(f" [!] {folder}: a write there was interrupted ({_writer(n)} stopped between "
                f"its renames), and {e} has changed since: nothing was put back; the files from before that write "
                f"are kept as {', '.join(kept) or '(none)'} - remove {n} to drop them")
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f" [!] {p}: the record of an interrupted write cannot be rolled back ({e}); "
                f"the files it names are left as they are")
            continue
        finally:
            os.close(fd)
        fsync_folder(folder)
        if changed:
            log(f" [*] {folder}: a write there was interrupted ({_writer(n)} stopped "
                f"between its renames); put back as they were before it: {', '.join(changed)}")
        restored += changed
    # a backup no journal names and no journal of its writer's pid is still there for (the write
    # committed, or was killed before its journal had entries) is a plain left-over. The backups
    # are listed before the journals: a live writer makes its journal before its backups and drops
    # it only at its commit, so a backup seen first has its journal in the second listing (listed
    # the other way round, a write starting in between lost its backups: nothing to put back from)
    backups = [n for n in os.listdir(folder) if _BACKUP.match(n)]
    named, pids = set(), set()
    for n in os.listdir(folder):
        if _WRITER.match(n) and n.endswith((JOURNAL, JOURNAL + "-part")):
            pids.add(_WRITER.match(n).group(1))
            try:
                with open(os.path.join(folder, n), encoding="utf-8") as fh:
                    named |= {e["was"] for e in json.load(fh)["files"]}
            except (OSError, ValueError, KeyError, TypeError):
                pass
    for n in backups:
        if n not in named and _WRITER.match(n).group(1) not in pids:
            remove_quietly(os.path.join(folder, n))
    return restored


def journal_file(name: str) -> bool:
    """A journal or a backup of publish_together: recover_interrupted_writes alone removes them."""
    return bool(_WRITER.match(name)) and (name.endswith((JOURNAL, JOURNAL + "-part")) or bool(_BACKUP.match(name)))


class WriteFailed(OSError):
    """publish_together / write_files_atomic: one of the files could not be written (`path`);
    none was."""

    def __init__(self, path: str, e: OSError):
        super().__init__(e.errno, f"cannot write {path!r}: {e.strerror or e}")
        self.path = path


def publish_together(moves: dict, log=print) -> None:
    """Publish several files of one folder as one write: `moves` {path: a temp file beside it,
    renamed onto it | None: path removed}, in that order. Every path ends as this call left it or
    as it was before - never some of each (a TF checkpoint's .data, .index and `checkpoint` file;
    a port checkpoint's weights, state and pointer; an ONNX model and its codes). An error or
    Ctrl-C half way puts every path back at once: a file that existed from a hard link kept beside
    it (`.tmp-<pid>@<host id>-<hex>.keep`), one that did not is removed. A process killed half
    way (SIGKILL, power loss) leaves a journal, written before the first rename and locked while the write runs:
    the next command that reads or writes that folder rolls it back (`recover_interrupted_writes`),
    touching only the files this write had published or removed. A killed earlier write there is
    rolled back first. WriteFailed names the file that failed. The temp files are the caller's
    (left where a rename did not happen). Where the file system has no hard links, a file that
    existed cannot be restored: its rename comes last, after the commit (the write is then
    finished, not undone)."""
    moves = {os.path.abspath(p): t for p, t in moves.items()}
    folder = os.path.dirname(next(iter(moves)))
    if any(os.path.dirname(p) != folder for p in moves):
        raise ValueError(f"publish_together: files in several folders: {list(moves)}")
    recover_interrupted_writes(folder, log)
    entries = []
    path, committed, journal = None, False, None
    try:
        journal = _Journal(folder)
        for path, tmp in moves.items():
            entry = {"path": os.path.basename(path), "was": "absent",
                     "new": None if tmp is None else _identity(os.lstat(tmp))}
            if os.path.lexists(path):
                backup = f"{temp_prefix()}{os.urandom(6).hex()}.keep"
                try:
                    os.link(path, os.path.join(folder, backup), follow_symlinks=False)
                    entry["was"] = backup
                except OSError:  # no hard links here: nothing to restore from
                    entry["was"] = "kept"
            entries.append(entry)
        path = None
        order = sorted(range(len(entries)), key=lambda i: entries[i]["was"] == "kept")  # unrestorable last
        journal.write([entries[i] for i in order if entries[i]["was"] != "kept"])
        targets = list(moves.items())
        for i in order:
            path, tmp = targets[i]
            if entries[i]["was"] == "kept" and not committed:
                journal.close()  # the commit comes before a file that could not be put back
                committed = True
            if tmp is not None:
                os.replace(tmp, path)
            elif os.path.lexists(path):
                os.remove(path)
        path = None
        if not committed:
            journal.close()  # the commit: from here on the new files stay, whatever happens
            committed = True
        fsync_folder(folder)
    except BaseException as e:
        if not committed:
            try:
                _roll_back(folder, [x for x in entries if x["was"] != "kept"])
            except (OSError, ChangedSince):  # the journal stays: the next command there rolls back the rest
                if journal is not None:
                    remove_quietly(journal.part)
                    os.close(journal.fd)
                    journal.fd = None
            else:
                if journal is not None:
                    journal.close()
        if isinstance(e, OSError) and path is not None and not isinstance(e, WriteFailed):
            raise WriteFailed(path, e) from e
        raise
    finally:
        if committed:  # the backups go, even past a Ctrl-C landing here (it is raised once they are gone)
            stopped = None
            for e in entries:
                if e["was"] not in ("absent", "kept"):
                    try:
                        remove_quietly(os.path.join(folder, e["was"]))
                    except KeyboardInterrupt as ki:
                        stopped = ki
                        remove_quietly(os.path.join(folder, e["was"]))
            if stopped is not None:
                raise stopped


def remove_quietly(path: str) -> None:
    """Remove a file if it is there (a temp file, a journal, a backup); an OSError is ignored."""
    try:
        os.remove(path)
    except OSError:
        pass


def write_temp_beside(folder: str, data: bytes, suffix: str = "", name: str = "", fsync: bool = True) -> str:
    """`data` in a new temp file of `folder` (`.tmp-<pid>@<host id>-<name>...<suffix>`:
    `sweep_dead_temps` knows its writer), fsynced, with the mode the umask gives: its path, for
    the caller to rename or publish. Removed again when the write fails."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())  # mkstemp's 0o600 -> what the umask allows
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def write_files_atomic(files: dict, fsync: bool = True) -> None:
    """Write several files {path: bytes} of one folder together or not at all: every one to a temp
    file beside it (fsynced), then all published as one (`publish_together`: a failure, Ctrl-C or
    kill half way leaves every file as it was). WriteFailed (an OSError) names the file that
    failed; FolderGiven (nothing written) where one of the paths is a folder."""
    for path in files:
        if folder_given(path):
            raise folder_given(path)
    temps = {}
    writing = None
    try:
        for writing, data in files.items():
            folder = os.path.dirname(os.path.abspath(writing))
            os.makedirs(folder, exist_ok=True)
            temps[writing] = write_temp_beside(folder, data, suffix=os.path.splitext(writing)[1], fsync=fsync)
        writing = None
        publish_together(temps)
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(writing, e) from e
    finally:
        for tmp in temps.values():
            remove_quietly(tmp)


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


_WRITER = re.compile(r"^\.tmp-(\d+)(?:@([0-9a-z]+))?-")  # pid, host id (None: an older version's name)
STALE_S = 24 * 3600  # a temp file this old is left over whatever its pid says (pids are reused)


def host_id() -> str:
    """This machine's tag in temp-file names: its host name's CRC-32 in 8 hex digits (short and
    safe in any file name; host names differing in one character never share it). A pid means
    something only on the machine that wrote it: a folder shared between hosts (NFS, multi-node
    training) holds other machines' temp files, whose pids are dead or unrelated processes here."""
    try:
        name = socket.gethostname()
    except OSError:  # pragma: no cover - no host name: every process here still shares one tag
        name = ""
    return f"{zlib.crc32(name.encode('utf-8', 'surrogateescape')):08x}"


def temp_prefix(name: str = "") -> str:
    """The start of a temp file's name, `.tmp-<pid>@<host id>-<name>`: `abandoned` reads its writer
    from it (every atomic writer of the project names its temp files so)."""
    return f".tmp-{os.getpid()}@{host_id()}-{name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def abandoned(path: str) -> bool | None:
    """For a temp file of `atomic_output` (`.tmp-<pid>@<host id>-...`, or an older version's
    `.tmp-<pid>-...`): whether its writer is gone (that pid is not running, or the file is older
    than STALE_S); None for any other name. Another host's file (a folder shared over NFS) is gone
    only when older than STALE_S: its pid cannot be asked about here (dead here, or an unrelated
    process), and a file untouched for a day is no write in progress - the rule that already
    overrides a live pid here, so a killed host's leftovers do not stay for ever."""
    m = _WRITER.match(os.path.basename(path))
    if not m:
        return None
    pid, host = int(m.group(1)), m.group(2)
    here = host is None or host == host_id()
    if here and pid == os.getpid():
        return False
    try:
        return (here and not _alive(pid)) or time.time() - os.path.getmtime(path) >= STALE_S
    except OSError:  # gone meanwhile
        return False


def sweep_dead_temps(folder: str) -> list[str]:
    """Remove the temp files of `atomic_output` in `folder` (not in subfolders) whose writer is
    gone (a process killed mid-write, SIGKILL or power loss): their pid is not running, or they are
    older than STALE_S. A temp file of a process still running (another command writing into the
    same folder) is left alone, and so is another host's younger than STALE_S (`abandoned`).
    Returns the names removed."""
    gone = []
    recover_interrupted_writes(folder)  # a killed publish_together's backups are temp files: put back first
    try:
        names = os.listdir(folder)
    except OSError:
        return gone
    for n in names:
        p = os.path.join(folder, n)
        if journal_file(n) or not abandoned(p) or not os.path.isfile(p):  # journals: recovery's alone
            continue
        try:
            os.remove(p)
            gone.append(n)
        except OSError:  # gone meanwhile, or not ours to remove
            pass
    return gone
