"""How many CPU threads a run uses: the CPUs the process may use (its affinity mask and its cgroup's CPU
quota, where PyTorch would count every core of the machine), less those that other processes keep busy.

Why less: PyTorch's parallel regions are OpenMP teams that meet at a barrier, and a team with more threads than
free cores waits at every barrier for a thread the scheduler has put aside. A NeuMF step runs thousands of small
regions, so one busy process beside a 2-thread run on 2 cores cuts it to a fraction of the 1-thread rate,
OpenMP's spin-waiting makes it worse, and passive waiting (OMP_WAIT_POLICY) helps under load but costs a quiet
machine much of its rate (benchmarks/contention.py; the figures are in docs/performance.md). So the team is sized
to the cores that are free: measured before the first epoch and again after each epoch, from the CPUs' busy
time (/proc/stat) less this process's own.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

CGROUP = Path("/sys/fs/cgroup")
SETTLE_S = 0.2  # how long the first measure of the others' load watches the CPUs


def cgroup_cpu_quota(root: Path = CGROUP, own: str | None = None) -> float | None:
    """The CPUs a cgroup's quota allows this process (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cfs_period_us), or
    None where there is no quota. `own`: the process's /proc/self/cgroup text."""
    try:
        own = Path("/proc/self/cgroup").read_text() if own is None else own
    except OSError:
        own = ""
    found = []
    for line in own.splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":  # v2: one hierarchy
            candidates = [root / path / "cpu.max", root / "cpu.max"]
            found += [_v2(p) for p in candidates]
        elif "cpu" in controllers.split(","):
            for folder in (root / controllers / path, root / controllers, root / "cpu" / path, root / "cpu"):
                found.append(_v1(folder))
    quotas = [q for q in found if q is not None]
    return min(quotas) if quotas else None


def _v2(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> tuple[int, str]:
    """(the CPUs this process may use, how that was found)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    usable = affinity if quota is None else max(1, min(affinity, math.ceil(quota - 0.01)))
    limit = "no cgroup CPU quota" if quota is None else f"cgroup CPU quota {quota:g}"
    return usable, f"{affinity} CPUs in its affinity mask, {limit}"


def busy_seconds(cpus: set[int]) -> float | None:
    """The time these CPUs have spent busy since boot (all but idle and I/O wait; steal counts: a vCPU the
    hypervisor runs elsewhere does not run this process), from /proc/stat; None where there is none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class Threads:
    """The run's thread count: `fixed` where given (--threads), else OMP_NUM_THREADS where set (torchrun sets 1 per
    process), else the usable CPUs less those other processes keep busy, measured at start and after each epoch
    (adjust; not under torchrun, whose processes keep one count so that they round alike). `said`: the line that
    tells the count and why."""

    def __init__(self, fixed: int | None, watch: bool = True) -> None:
        self.usable, why = usable_cpus()
        given = os.environ.get("OMP_NUM_THREADS", "")
        self.fixed = fixed or (int(given) if given.isdigit() and int(given) > 0 else None)
        if self.fixed:
            torch.set_num_threads(self.fixed)
            source = "--threads" if fixed else "OMP_NUM_THREADS"
            self.said = f"Threads: {self.fixed} ({source}; {self.usable} usable CPUs: {why})"
            return
        watch = watch and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        # another tenant's load on a machine whose cores a cgroup quota shares out is not this process's to avoid
        self.watching = watch and len(self.cpus) <= self.usable and busy_seconds(self.cpus) is not None
        self._mark()
        if self.watching:
            time.sleep(SETTLE_S)
        others = self._others()
        torch.set_num_threads(self._count(others))
        busy = f"; other processes keep {others:.1f} of them busy" if others >= 0.5 else ""
        self.said = f"Threads: {torch.get_num_threads()} of {self.usable} usable CPUs ({why}){busy}"

    def adjust(self, epoch: int) -> str | None:
        """After an epoch: follow the other processes' load over it; a line where the count changed."""
        if self.fixed or not self.watching:
            return None
        others = self._others()
        count = self._count(others)
        if count == torch.get_num_threads():
            return None
        torch.set_num_threads(count)
        return f"Threads: {count} (other processes kept {others:.1f} of {self.usable} CPUs busy in epoch {epoch})"

    def _count(self, others: float) -> int:
        return max(1, self.usable - math.floor(others + 0.5))

    def _mark(self) -> None:
        self.at = (time.monotonic(), busy_seconds(self.cpus) if self.watching else None, time.process_time())

    def _others(self) -> float:
        """CPUs kept busy by other processes since the last mark, in CPUs (a mean over the time); marks anew."""
        (wall0, busy0, own0) = self.at
        self._mark()
        wall1, busy1, own1 = self.at
        if busy0 is None or busy1 is None:
            return 0.0
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-3)
