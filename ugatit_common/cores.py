"""How many cores this process may run on, for sizing its decoder threads."""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
# where cgroup v1 mounts the cpu controller (alone or joined with cpuacct)
V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, `taskset`,
    a batch scheduler's allocation), lowered to its CPU quota (`docker --cpus`, Kubernetes'
    CPU limit), not the machine's count, which can be many times more."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS / Windows have no affinity call
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_quota(cgroup_root: str | None = None, proc_cgroup: str | None = None) -> int | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in whole cores rounded
    up (1.5 CPUs -> 2), or None where there is none or it cannot be read (no cgroups, another OS).
    cgroup v2: `cpu.max` ("max 100000" or "150000 100000"); v1: `cpu.cfs_quota_us` (-1: none) over
    `cpu.cfs_period_us`. A folder of the path that is not mounted here (a container without its
    own cgroup namespace sees its own cgroup at the mount's root) is skipped."""
    try:
        lines = Path(proc_cgroup or PROC_CGROUP).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    root, limits = Path(cgroup_root or CGROUP_ROOT), []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 (unified) hierarchy
            limits += _walk(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for name in V1_CPU_DIRS:
                limits += _walk(root / name, path, _v1_limit)
    return min(limits) if limits else None


def _walk(mount: Path, path: str, limit) -> list[int]:
    """`limit` of each folder from the process's cgroup up to the mount's root that exists."""
    found, rel = [], Path(path.strip().lstrip("/"))
    while True:
        folder = mount / rel
        if folder.is_dir():
            cores = limit(folder)
            if cores is not None:
                found.append(cores)
        if rel == rel.parent:
            return found
        rel = rel.parent


def _cores(quota: int, period: int) -> int | None:
    return math.ceil(quota / period) if quota > 0 and period > 0 else None


def _v2_limit(folder: Path) -> int | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _cores(int(quota), int(period))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _v1_limit(folder: Path) -> int | None:
    try:
        return _cores(int((folder / "cpu.cfs_quota_us").read_text()),
                      int((folder / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
