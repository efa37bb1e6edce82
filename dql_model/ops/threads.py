"""How many CPU threads this process may use, and torch set to that: the one owner of thread counts.

torch's default is one intra-op thread per core of the machine, whatever the process may really use:
in a container with a CPU quota, on a worker pinned to some cores, or beside another job on the same
cores it then oversubscribes, and OpenMP's spin-waiting makes that far worse than a fair share
(measured: training at 170-960 transitions/s beside two other pipelines, 8,000+ alone). Every torch
entry point (training, evaluation, scoring, simulation; the Spark executors' Python workers) calls
``set_torch_threads`` with ``train.threads`` from the config: 0 means the CPUs this process may use
(``usable_cpus``), a positive value is a cap that can only lower it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD) -> int | None:
    """CPUs allowed by the cgroup's quota, rounded up (None: no quota, or no cgroup file to read)."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1_quota.read_text().strip(), v1_period.read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, lowered by a cgroup CPU quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def torch_threads(configured: int = 0) -> int:
    """The intra-op thread count for ``train.threads = configured``: usable CPUs, capped by a positive value."""
    if configured < 0:
        from dql_model.config import ConfigError

        raise ConfigError(f"train.threads={configured}: expected 0 (the usable CPUs) or a positive cap")
    usable = usable_cpus()
    return min(configured, usable) if configured else usable


def set_torch_threads(configured: int = 0) -> int:
    """Set torch's intra-op threads (and inter-op, if still possible) to ``torch_threads(configured)``."""
    import torch

    threads = torch_threads(configured)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:  # allowed once, before any inter-op work; later calls raise and the first setting stays
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return threads
