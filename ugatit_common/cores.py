"""How many cores this process may run on, for sizing its decoder threads."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, `taskset`,
    a batch scheduler's allocation), not the machine's count, which can be many times more.
    A CPU quota without a cpuset (`docker --cpus`) is not seen here."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS / Windows have no affinity call
        return os.cpu_count() or 1
