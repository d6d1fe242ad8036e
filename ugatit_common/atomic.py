"""Atomic file output: write to a temp file beside the target, then os.replace; on any error
the temp file is removed and the target is untouched (nothing half-written is ever seen).
Published files get the mode a plain `open(path, "w")` would give them: 0o666 minus the umask
(`file_mode`), not the 0o600 of the temp file. A temp file's name holds its writer's pid
(`.tmp-<pid>-...`), so one left by a killed writer can be told from one being written
(`sweep_dead_temps`)."""
from __future__ import annotations

import contextlib
import json
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


JOURNAL = ".journal"  # suffix of all_or_nothing's record: `.tmp-<pid>-<hex>.journal`
_BACKUP = re.compile(r"^\.tmp-\d+-[0-9a-f]+\.keep$")  # its backups' names


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


def _write_journal(folder: str, entries: list) -> str:
    """The record of one all_or_nothing block, in `folder`: for each file, its name (relative to
    `folder`) and what it was before - the name of its backup hard link, "absent", or "kept"
    (existed but could not be linked: nothing to restore it from). Written to a `.journal-part`
    file, fsynced, then renamed: a `.journal` is always whole."""
    stem = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
    with open(stem + JOURNAL + "-part", "w", encoding="utf-8") as fh:
        json.dump({"journal": 1, "files": entries}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(stem + JOURNAL + "-part", stem + JOURNAL)
    fsync_folder(folder)
    return stem + JOURNAL


def _roll_back(folder: str, entries: list) -> list[str]:
    """Put every file of a journal back as it was: a backup renamed over its file (removed where
    the file was never replaced: the same inode), a file that was absent removed. Returns the names
    changed; every file is tried, then the first OSError is raised. Idempotent (a backup put back
    is gone)."""
    for e in entries:  # a journal names files of its own folder only, and its own backups
        if os.path.basename(e["path"]) != e["path"] or e["path"] in ("", ".", "..") \
                or not (e["was"] in ("absent", "kept") or _BACKUP.match(e["was"])):
            raise ValueError(f"not a journal entry: {e!r}")
    changed, failed = [], None
    for e in entries:
        p = os.path.join(folder, e["path"])
        was = e["was"]
        try:
            if was == "absent":
                if os.path.lexists(p):
                    os.remove(p)
                    changed.append(e["path"])
            elif was != "kept":
                backup = os.path.join(folder, was)
                if not os.path.lexists(backup):
                    continue
                try:
                    same = os.path.samestat(os.lstat(p), os.lstat(backup))
                except FileNotFoundError:
                    same = False
                if same:
                    os.remove(backup)
                else:
                    os.replace(backup, p)
                    changed.append(e["path"])
        except OSError as err:
            failed = failed or err
    if failed:
        raise failed
    return changed


def recover_interrupted_writes(folder: str, log=print) -> list[str]:
    """Finish what a killed all_or_nothing block left in `folder` (SIGKILL or power loss between
    its renames: a new .data beside the old .index, an ONNX model without its new codes): each
    journal whose writer is gone (`abandoned`) is rolled back - every file it names is again what
    it was before that write - and removed. A running writer's journal is left alone. Returns the
    names put back; a file that cannot be put back (no permission) is said in one line and left."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(JOURNAL) and _WRITER.match(n))
    except OSError:
        return []
    restored = []
    for n in names:
        p = os.path.join(folder, n)
        if not abandoned(p):
            continue
        try:
            with open(p, encoding="utf-8") as fh:
                entries = json.load(fh)["files"]
            changed = _roll_back(folder, entries)
            os.remove(p)
        except FileNotFoundError:  # another command recovered it meanwhile
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f" [!] {p}: the record of an interrupted write cannot be rolled back ({e}); "
                f"the files it names are left as they are")
            continue
        fsync_folder(folder)
        if changed:
            log(f" [*] {folder}: a write there was interrupted (process {_WRITER.match(n).group(1)} killed "
                f"between its renames); put back as they were before it: {', '.join(changed)}")
        restored += changed
    # a backup whose journal is gone (the write committed, or was killed before its journal existed)
    # is a plain left-over: removed, unless a journal still names it (its rollback failed above)
    named = set()
    for n in os.listdir(folder):
        if n.endswith(JOURNAL) and _WRITER.match(n):
            try:
                with open(os.path.join(folder, n), encoding="utf-8") as fh:
                    named |= {e["was"] for e in json.load(fh)["files"]}
            except (OSError, ValueError, KeyError, TypeError):
                return restored
    for n in os.listdir(folder):
        if n.endswith(".keep") and n not in named and abandoned(os.path.join(folder, n)):
            try:
                os.remove(os.path.join(folder, n))
            except OSError:
                pass
    return restored


@contextlib.contextmanager
def all_or_nothing(paths, log=print):
    """Around writes that publish several files, each atomically (a TF checkpoint's .data, .index
    and `checkpoint` file, an ONNX model and its companion codes): every one of `paths` ends as
    the block left it, or as it was before - never some of each. When the block raises (a rename
    failing half way, a full disk, Ctrl-C), every path is put back at once: a file that existed
    from a hard link kept beside it (`.tmp-<pid>-...keep`), one that did not is removed. When the
    process is killed (SIGKILL, power loss), a journal beside the first path records the same;
    the next command that writes or reads there rolls it back (`recover_interrupted_writes`),
    so a new .data never stays beside an old .index (a corrupt checkpoint). A killed earlier
    write in these folders is rolled back first. All paths in one folder (the journal's).
    Where the file system has no hard links, an existing file cannot be restored (it may be left
    replaced); new files are still removed."""
    paths = [os.path.abspath(p) for p in paths]
    folder = os.path.dirname(paths[0])
    if any(os.path.dirname(p) != folder for p in paths):
        raise ValueError(f"all_or_nothing: files in several folders: {paths}")
    os.makedirs(folder, exist_ok=True)
    recover_interrupted_writes(folder, log)
    entries = []
    journal = None
    try:
        for p in paths:
            name = os.path.basename(p)
            try:
                os.lstat(p)
            except FileNotFoundError:
                entries.append({"path": name, "was": "absent"})
                continue
            backup = f".tmp-{os.getpid()}-{os.urandom(6).hex()}.keep"
            try:
                os.link(p, os.path.join(folder, backup), follow_symlinks=False)
            except OSError:  # no hard links here: nothing to restore from
                entries.append({"path": name, "was": "kept"})
                continue
            entries.append({"path": name, "was": backup})
        journal = _write_journal(folder, entries)
        yield
    except BaseException:
        try:
            _roll_back(folder, entries)
        except OSError:  # journal and backups stay: the next command there rolls back the rest
            pass
        else:
            if journal:
                os.remove(journal)
            _remove_backups(folder, entries)
        raise
    else:
        os.remove(journal)  # the commit: from here on a kill leaves the new files
        fsync_folder(folder)
        _remove_backups(folder, entries)


def _remove_backups(folder: str, entries: list) -> None:
    for e in entries:
        if e["was"] not in ("absent", "kept"):
            try:
                os.remove(os.path.join(folder, e["was"]))
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
    recover_interrupted_writes(folder)  # a killed all_or_nothing's backups are temp files: put back first
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
