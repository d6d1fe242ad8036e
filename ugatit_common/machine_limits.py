"""Errors that are a limit of the machine (open files, memory), not a fault of a file or a flag.

A file that cannot be opened because `ulimit -n` was reached is no damaged image, no unreadable
checkpoint and no unwritable folder: saying so (or skipping the file, or setting a checkpoint
aside for it) would send the user after the wrong cause. Numpy-, torch- and TF-free.
"""
from __future__ import annotations

import errno

try:  # imported now: importing it when the limit is reached needs a file descriptor it cannot have
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

# errno -> what it means for the machine; `{n}` takes ": N here" for the open-file limit
MACHINE_LIMITS = {errno.EMFILE: "the limit on open files per process was reached (`ulimit -n`{n})",
                  errno.ENFILE: "the system's limit on open files was reached",
                  errno.ENOMEM: "the machine ran out of memory"}

# how libraries that wrap the OS error in their own (torch's DataLoader, safetensors) word it
_TEXT = {"too many open files": errno.EMFILE, "too many open files in system": errno.ENFILE}


def open_files_limit() -> int | None:
    """The soft `ulimit -n` of this process, None where it cannot be read."""
    try:
        return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (AttributeError, OSError, ValueError):
        return None


def limit_text(code: int) -> str:
    """MACHINE_LIMITS[code] with the open-file limit filled in where known."""
    n = open_files_limit() if code == errno.EMFILE else None
    return MACHINE_LIMITS[code].format(n=f": {n} here" if n is not None else "")


def machine_limit(e: BaseException | None) -> int | None:
    """The errno (a MACHINE_LIMITS key) when `e` or an error it wraps (its cause or context) is a
    limit of the machine on open files, by errno or - where a library re-raised it as its own
    error - by the OS's words; None otherwise. ENOMEM counts only as an OSError's errno."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in MACHINE_LIMITS:
            return e.errno
        text = str(e).lower()
        for words, code in sorted(_TEXT.items(), key=lambda kv: -len(kv[0])):
            if words in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def too_many_open_files(what: str = "", workers: bool = True, code: int = errno.EMFILE) -> OSError:
    """One clear error for EMFILE / ENFILE (`code`) met by `what` (e.g. "the data loader's
    workers"): the limit, and the ways out (`workers`: lowering --num_workers is one, where the
    command has it). ENFILE is the whole system's table: `ulimit -n` does not help there."""
    where = f" ({what})" if what else ""
    lower = " or lower --num_workers," if workers else ""
    if code == errno.ENFILE:
        return OSError(errno.ENFILE, f"too many open files in the system (the whole system's table of open files is "
                                     f"full){where}: close other programs or raise the system's "
                                     f"limit (`sysctl fs.file-max`),{lower} or run fewer things at once")
    n = open_files_limit()
    limit = f"ulimit -n {n}" if n is not None else "ulimit -n"
    return OSError(errno.EMFILE, f"too many open files ({limit}){where}: raise the limit (e.g. `ulimit -n 4096`)"
                                 f"{lower} or run fewer things at once")


def limit_error(e: BaseException, doing: str) -> OSError | None:
    """The error to stop with when `e`, met while `doing` (e.g. "cannot write a file in --log_dir
    'logs'"), is a limit of the machine (`machine_limit`), not the file's or folder's fault (an
    unwritable folder, a damaged checkpoint); None when it is not."""
    code = machine_limit(e)
    if code is None:
        return None
    return OSError(code, f"{doing}: {limit_text(code)}, not a fault of the file or folder; raise the limit, "
                         f"or run fewer things at once")
