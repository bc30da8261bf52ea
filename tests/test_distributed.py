"""Data-parallel training: two processes under torchrun (Gloo, CPU) against one, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from scalerec.distributed import Group
from tests.helpers import SYNTHETIC, rows, tiny


def test_the_shares_of_a_batch_cover_it_and_weigh_it_whole():
    for n, world in ((1024, 2), (1000, 3), (7, 4), (2, 2)):
        shares = [Group(rank, world).share(100, 100 + n) for rank in range(world)]
        if n < world:  # too small to split: every process computes it whole, at 1/world
            assert shares == [(100, 100 + n, 1 / world)] * world
            continue
        assert shares[0][0] == 100 and shares[-1][1] == 100 + n
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))  # contiguous, no overlap
        assert sum(w for _, _, w in shares) == pytest.approx(1.0)
        assert all(w == pytest.approx((b - a) / n) for a, b, w in shares)


def run(args: list[str], cwd, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd = [*launch, "-m", "scalerec"] if processes > 1 else [sys.executable, "-m", "scalerec"]
    # its own session: on a timeout the launcher and its workers go together, none left behind
    with subprocess.Popen(
        [*cmd, *args], cwd=cwd, env=env, text=True, stdout=PIPE, stderr=PIPE, start_new_session=True
    ) as p:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(
    "micro, summed",
    [
        (["--grad-sync", "ddp"], "by DDP"),
        ([], "in one all-reduce"),  # auto: flat on the CPU
        (["--grad-sync", "ddp", "--micro-batch", "48"], "in one all-reduce"),
    ],
    ids=["ddp", "auto-flat", "micro-batches"],
)
def test_two_processes_train_as_one_does(tmp_path, micro, summed):
    """The same global batch in two halves, their gradients summed (by DDP during the backward, or after the
    backward or the micro-batches' last): the same losses and weights as one process, up to the order of float
    sums; only the first process prints and writes. An odd batch splits unequally (DDP averages the processes'
    gradients, while each share weighs by its size)."""
    data = [*SYNTHETIC, "--data-dir", str(tmp_path / "data"), *micro]
    one = run(["train", *data, *tiny(tmp_path / "one", epochs=1), "--batch-size", "255"], tmp_path, 1)
    assert one.returncode == 0, one.stderr
    two = run(["train", *data, *tiny(tmp_path / "two", epochs=1), "--batch-size", "255"], tmp_path, 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("Epoch 0:") == 1 and "Traceback" not in two.stderr
    assert f"Data-parallel over 2 processes, each computing 1/2 of every batch; gradients summed {summed}" in two.stdout
    a, b = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("one", "two"))
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert abs(b["sampled_HR@10"] - a["sampled_HR@10"]) <= 0.01
    wa, wb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("one", "two"))
    for name in wa:  # without the summed gradients each process would train on half of every batch
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-5)
    if micro:
        return
    refused = run(["find-batch", *data], tmp_path, 2)
    assert refused.returncode != 0 and refused.stderr.count("only scalerec train runs data-parallel") == 1
    again = run(["train", *data, *tiny(tmp_path / "two", epochs=1)], tmp_path, 2)  # every process refuses it
    assert again.returncode != 0 and again.stderr.count("holds an earlier run's results") == 1
    assert "RuntimeError" not in again.stderr  # no process left to fail in a collective (torchrun adds its own report)


# Epochs of a second or so with two processes: long enough to kill a worker in the middle of a run
LONGER = ["--dataset", "synthetic", "--synthetic-users", "1500", "--synthetic-items", "300", "--eval-negatives", "20"]


def launcher(args: list[str], cwd: Path, *options: str) -> subprocess.Popen:
    """torchrun with `options` (--standalone --nproc-per-node 2, or one node of several) running scalerec ARGS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCALEREC_DATA_DIR": str(cwd / "data")}
    cmd = [sys.executable, "-m", "torch.distributed.run", *options, "-m", "scalerec", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=PIPE, stderr=PIPE, start_new_session=True)


def ended(p: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_all(p)
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def stop_all(p: subprocess.Popen) -> None:
    """SIGKILL a launcher and its workers (torchrun gives them sessions of their own), and reap it."""
    for pid in workers(p.pid).values():
        os.kill(pid, signal.SIGKILL)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()


def workers(launcher_pid: int) -> dict[int, int]:
    """{global rank: pid} of a launcher's worker processes (its children), from their environment."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher_pid:
                env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
                found[int(env["RANK"])] = int(proc.name)
        except (OSError, ValueError, KeyError):
            continue  # gone meanwhile, or not a worker
    return found


def kill_a_worker_after_the_first_epoch(
    p: subprocess.Popen, run: Path, rank: int | None = 1, sig: int = signal.SIGKILL
) -> float:
    """Send `sig` to the worker of `rank` (or the launcher's only worker) once the run has logged an epoch; the
    time it was sent."""
    end = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        assert time.monotonic() < end and p.poll() is None, "the run ended before its first epoch was logged"
        time.sleep(0.05)
    pids = workers(p.pid)
    os.kill(pids[rank] if rank is not None else next(iter(pids.values())), sig)
    return time.monotonic()


def timings_aside(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "peak_memory_mb"} for row in rows(run)]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0], ids=["a-worker", "the-first"])
def test_a_dead_worker_ends_the_job_in_seconds_with_one_line_and_a_failed_summary(tmp_path, rank):
    args = ["train", *LONGER, *tiny(tmp_path / "run", epochs=30)]
    p = launcher(args, tmp_path, "--standalone", "--nproc-per-node=2")
    killed = kill_a_worker_after_the_first_epoch(p, tmp_path / "run", rank)
    done = ended(p)
    assert time.monotonic() - killed < 30 and done.returncode != 0
    assert done.stderr.count("scalerec: error:") == 1 and "[rank" not in done.stderr  # no worker's traceback
    survivor = 1 - rank  # the first process dead, the other writes the summary in its place
    # The survivor finds its collective broken, or, where torchrun saw the death first, gets its SIGTERM: either
    # way it names itself and the lost process, in one line and in the summary.
    why = ("another process of the run stopped or cannot be", "stopped by torchrun: another process of the run ended")
    (said,) = [line for line in done.stderr.splitlines() if line.startswith("scalerec: error:")]
    assert any(said.startswith(f"scalerec: error: process {survivor}: {w}") for w in why), said
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "failed" and any(summary["error"].startswith(f"process {survivor}: {w}") for w in why)
    assert summary["epochs"] == len(rows(tmp_path / "run")) >= 1


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_as_an_unbroken_one(tmp_path):
    args = [*LONGER, *tiny(tmp_path / "whole", epochs=3)]
    whole = ended(launcher(["train", *args], tmp_path, "--standalone", "--nproc-per-node=2"))
    assert whole.returncode == 0, whole.stderr
    args[args.index("--output") + 1] = str(tmp_path / "restarted")
    p = launcher(["train", *args], tmp_path, "--standalone", "--nproc-per-node=2", "--max-restarts=1")
    kill_a_worker_after_the_first_epoch(p, tmp_path / "restarted")
    done = ended(p)
    assert done.returncode == 0, done.stderr
    assert "Resuming" in done.stdout and done.stdout.count("Epoch 0:") == 1  # epoch 0 came from the checkpoint
    assert timings_aside(tmp_path / "restarted") == timings_aside(tmp_path / "whole")
    assert json.loads((tmp_path / "restarted" / "summary.json").read_text())["state"] == "finished"
    refused = ended(launcher(["train", *args[:-2]], tmp_path, "--standalone", "--nproc-per-node=2", "--max-restarts=1"))
    assert refused.returncode != 0 and "give --output" in refused.stderr  # the folder is the run's state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], cwd: Path, *options: str) -> list[subprocess.Popen]:
    """Two launchers on this machine acting as two machines of one process each (a c10d rendezvous)."""
    port = free_port()
    node = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", *options]
    return [launcher(args, cwd, *node, f"--node-rank={rank}") for rank in (0, 1)]


@pytest.mark.slow
def test_two_machines_train_as_one_process_does_and_recover_from_a_lost_worker(tmp_path):
    args = [*LONGER, *tiny(tmp_path / "one", epochs=3)]
    one = ended(launcher(["train", *args], tmp_path, "--standalone", "--nproc-per-node=1"))
    assert one.returncode == 0, one.stderr
    args[args.index("--output") + 1] = str(tmp_path / "two")
    nodes = [ended(p) for p in two_nodes(["train", *args], tmp_path)]
    assert all(n.returncode == 0 for n in nodes), [n.stderr for n in nodes]
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    for x, y in zip(a, b, strict=True):  # each global rank on its own half of every batch: one process's steps
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
        assert abs(y["sampled_HR@10"] - x["sampled_HR@10"]) <= 0.01
    args[args.index("--output") + 1] = str(tmp_path / "recovered")
    launchers = two_nodes(["train", *args], tmp_path, "--max-restarts=1")
    kill_a_worker_after_the_first_epoch(launchers[1], tmp_path / "recovered", rank=None)  # the second machine's
    nodes = [ended(p) for p in launchers]
    assert all(n.returncode == 0 for n in nodes), "\n".join(n.stdout + n.stderr for n in nodes)
    assert timings_aside(tmp_path / "recovered") == timings_aside(tmp_path / "two")


@pytest.mark.slow
def test_sigterm_stops_a_process_waiting_on_a_hung_one_within_seconds(tmp_path):
    """A process waiting in a collective runs no Python signal handler: without its watcher, torchrun's SIGTERM
    would wait for the process group's timeout (minutes)."""
    from scalerec.distributed import TERM_GRACE_S

    p = launcher(["train", *LONGER, *tiny(tmp_path / "run", epochs=30)], tmp_path, "--standalone", "--nproc-per-node=2")
    try:
        kill_a_worker_after_the_first_epoch(p, tmp_path / "run", rank=1, sig=signal.SIGSTOP)  # hung, not gone
        first = workers(p.pid)[0]
        time.sleep(1)  # the first process now waits for it in a collective
        os.kill(first, signal.SIGTERM)
        sent = time.monotonic()
        while Path(f"/proc/{first}").exists() and (Path(f"/proc/{first}/stat").read_text().split()[2] != "Z"):
            assert time.monotonic() - sent < TERM_GRACE_S + 15, "SIGTERM not honoured"
            time.sleep(0.1)
    finally:
        stop_all(p)


@pytest.mark.slow
def test_a_job_stopped_as_a_whole_is_interrupted_not_failed(tmp_path):
    """SIGTERM to torchrun (as a scheduler stops a job) reaches every process: the run is interrupted, and can go
    on with --resume; a lost process is what makes it failed."""
    p = launcher(["train", *LONGER, *tiny(tmp_path / "run", epochs=30)], tmp_path, "--standalone", "--nproc-per-node=2")
    try:
        kill_a_worker_after_the_first_epoch(p, tmp_path / "run", rank=None, sig=0)  # waits for the epoch only
        os.kill(p.pid, signal.SIGTERM)
        done = ended(p, timeout=60)
    finally:
        if p.poll() is None:
            stop_all(p)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "interrupted", (summary, done.stderr[-2000:])
    assert summary["epochs"] == len(rows(tmp_path / "run")) >= 1 and "scalerec: error" not in done.stderr


def test_every_process_of_a_step_sums_its_gradients_the_same_way():
    """DDP's all-reduce is armed by its forward: where one process's share needs micro-batches and another's does
    not (shares of 4 and 5 with --micro-batch 4), both must sum flat, or the collectives of the two differ."""
    for rank in (0, 1):
        group = Group(rank, 2, ddp=object())  # a group that has DDP
        assert group.by_ddp(9, 4) is False and group.by_ddp(9, 5) is True and group.by_ddp(8, 4) is True
        assert group.by_ddp(1, 1) is True and group.by_ddp(9, None) is True  # a batch below the world: whole
    assert Group(0, 2).by_ddp(8, None) is False  # --grad-sync flat: no DDP
