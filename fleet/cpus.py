"""How many CPUs this process may really use: a container limited to 2 CPUs on a 64-core host
must start 2 render processes, not 64 (each one can take ~1 GB at peak)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs of this process's affinity mask, fewer when a cgroup v2 quota allows less."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cpu_max)
    return max(1, min(cpus, quota) if quota is not None else cpus)


def cgroup_quota(cpu_max: Path = CPU_MAX) -> int | None:
    """CPUs granted by cgroup v2 ``cpu.max`` ("<quota> <period>", quota "max": unlimited),
    rounded up; None when there is no quota or no such file."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None
