"""The run's thread count: the CPUs the process may use (affinity, cgroup quota), less those others keep busy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalerec import threads
from scalerec.threads import Threads, cgroup_cpu_quota


@pytest.fixture(autouse=True)
def torch_threads_kept(monkeypatch):
    """Not under torchrun or a set OMP_NUM_THREADS, whatever runs the tests; torch's count restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_quotas_v2_and_v1(tmp_path):
    write(tmp_path / "v2" / "pod" / "cpu.max", "250000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2", "0::/pod\n") == 2.5
    write(tmp_path / "v2max" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2max", "0::/\n") is None
    write(tmp_path / "v1" / "cpu,cpuacct" / "cpu.cfs_quota_us", "150000\n")
    write(tmp_path / "v1" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n") == 1.5
    write(tmp_path / "v1none" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "v1none" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1none", "2:cpu:/\n") is None
    assert cgroup_cpu_quota(tmp_path / "nothing", "0::/\n") is None


@pytest.mark.parametrize("quota, usable", [(None, None), (0.5, 1), (1.5, 2), (1.0, 1)])
def test_usable_cpus_is_the_affinity_bounded_by_the_quota(monkeypatch, quota, usable):
    import os

    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: quota)
    count, why = threads.usable_cpus()
    assert count == (affinity if usable is None else min(affinity, usable))
    assert f"{affinity} CPUs in its affinity mask" in why and ("no cgroup CPU quota" in why) == (quota is None)


def test_other_processes_load_takes_threads_away_and_gives_them_back(monkeypatch):
    """Four usable CPUs, one of them kept busy by others while the run starts, none after its first epoch."""
    monkeypatch.setattr(threads, "usable_cpus", lambda: (4, "test"))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    busy = {"cpus": 1.0, "base": 0.0, "since": time.monotonic()}

    def busy_seconds(cpus):  # others' busy time, growing at `cpus` per second, plus this process's own
        return busy["base"] + busy["cpus"] * (time.monotonic() - busy["since"]) + time.process_time()

    monkeypatch.setattr(threads, "busy_seconds", busy_seconds)
    t = Threads(None)
    assert torch.get_num_threads() == 3
    assert t.said == "Threads: 3 of 4 usable CPUs (test); other processes keep 1.0 of them busy"
    busy.update(base=busy_seconds(None) - time.process_time(), cpus=0.0, since=time.monotonic())
    time.sleep(0.05)
    assert t.adjust(0).startswith("Threads: 4 (other processes kept 0.0 of 4 CPUs") and torch.get_num_threads() == 4
    assert t.adjust(1) is None  # no change, no line


def test_a_given_thread_count_is_kept_and_said(monkeypatch):
    t = Threads(1)
    assert t.adjust(0) is None and torch.get_num_threads() == 1 and t.said.startswith("Threads: 1 (--threads;")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for each of several processes
    t = Threads(None)
    assert t.adjust(0) is None and torch.get_num_threads() == 1 and t.said.startswith("Threads: 1 (OMP_NUM_THREADS;")


def test_a_busy_process_beside_the_run_takes_its_core():
    usable = threads.usable_cpus()[0]
    if usable < 2 or threads.busy_seconds({0}) is None:
        pytest.skip("needs 2 usable CPUs and /proc/stat")
    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        said = Threads(None).said
    finally:
        spinning.kill()
        spinning.wait()
    assert torch.get_num_threads() < usable and "other processes keep" in said, said
