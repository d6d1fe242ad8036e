"""The benchmarks' temp folders, and the removal of those a killed run left.

A benchmark's work folder (`<tmp>/<prefix>XXXXXXXX`: an inductor cache, converted weights, images)
goes when the run ends, by an exception or Ctrl-C included; a SIGKILL (a lent machine's timeout, an
out-of-memory killer) skips that clean-up and the folder, often hundreds of MB of inductor cache,
stays. Each work folder therefore holds `.owner.lock`, flock'ed by its run for its life (the kernel
lets it go however the run ends) and renamed to that name only once locked, so a folder whose
`.owner.lock` can be locked is a dead run's - whatever pid it records (pids are reused). The next
run with the same prefix removes those (`sweep`, said in one line) and never a folder whose lock is
held (a run still going), nor one without the lock file (an earlier version's, or one being made
this instant: named, left alone), nor anything not named `<prefix>` + mkdtemp's tail.

    with work_folder("bench_train_") as path: ...            # TemporaryDirectory-like: .name, .cleanup()
    python bench/work_folders.py sweep gpu_check_            # what bench/gpu_check.sh runs before its mktemp

Standard library only (bench/gpu_check.sh runs it before anything else is imported).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile

LOCK = ".owner.lock"
_TAIL = re.compile(r"^[A-Za-z0-9_]{6,8}$")  # mkdtemp's (8) / mktemp's (6) random tail: not another prefix's folder


def _mine(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def sweep(prefix: str, tmp: str | None = None, log=print) -> list[str]:
    """Remove the work folders `<tmp>/<prefix>XXXXXX` of runs that ended without their clean-up
    (their `.owner.lock` free); say so in one line, and name in one more those left alone because
    they hold no lock file. Returns the folders removed."""
    tmp = tmp or tempfile.gettempdir()
    try:
        names = sorted(os.listdir(tmp))
    except OSError:
        return []
    gone, who, unknown = [], [], []
    for name in names:
        if not (name.startswith(prefix) and _TAIL.match(name[len(prefix):])):
            continue
        path = os.path.join(tmp, name)
        if not _mine(path):  # another user's, or not a folder: never ours to remove
            continue
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            unknown.append(path)
            continue
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a run still going (or its children)
                continue
            try:
                info = json.loads(os.read(fd, 4096).decode() or "{}")
            except (OSError, ValueError):
                info = {}
            shutil.rmtree(path, ignore_errors=True)  # removed while held: a racing sweep sees it held or gone
            if not os.path.lexists(path):
                gone.append(path)
                who.append(f"pid {info.get('pid', '?')}" + (f", started {info['started']}" if info.get("started") else ""))
        finally:
            os.close(fd)
    if gone and log:
        log(f"note: removed {len(gone)} work folder(s) of runs that ended without their clean-up (killed): "
            + ", ".join(f"{p} ({w})" for p, w in zip(gone, who)))
    if unknown and log:
        log(f"note: left alone {len(unknown)} folder(s) named like this run's work folder but holding no {LOCK} "
            f"(an earlier version's, or one being made now): {', '.join(unknown)}; remove them once no run uses them")
    return gone


class WorkFolder:
    """A temp folder held by this process (its `.owner.lock`) until `cleanup()`; a context manager."""

    def __init__(self, prefix: str, tmp: str | None = None, log=print):
        sweep(prefix, tmp, log)
        self.name = tempfile.mkdtemp(prefix=prefix, dir=tmp)
        part = os.path.join(self.name, LOCK + ".part")
        self._fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # a new file nobody else has: at once
        info = {"pid": os.getpid(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        os.write(self._fd, json.dumps(info).encode())
        os.rename(part, os.path.join(self.name, LOCK))  # visible under its name only once locked

    def cleanup(self) -> None:
        if self._fd is None:
            return
        shutil.rmtree(self.name, ignore_errors=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        self.cleanup()


def work_folder(prefix: str, tmp: str | None = None, log=print) -> WorkFolder:
    """A new work folder `<tmp>/<prefix>XXXXXXXX`, after removing those of killed runs of that prefix."""
    return WorkFolder(prefix, tmp, log)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "sweep" or not sys.argv[2]:
        print("usage: python bench/work_folders.py sweep PREFIX", file=sys.stderr)
        sys.exit(2)
    sweep(sys.argv[2])
