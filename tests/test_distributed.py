"""Data-parallel training: two processes under torchrun (Gloo, CPU) against one, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from subprocess import PIPE

import pytest
import torch

from scalerec.distributed import Group
from tests.test_cli import SYNTHETIC, tiny


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


def test_two_processes_train_as_one_does(tmp_path):
    """The same global batch in two halves, their gradients summed: the same losses and weights as one process,
    up to the order of float sums; only the first process prints and writes."""
    data = [*SYNTHETIC, "--data-dir", str(tmp_path / "data")]
    one = run(["train", *data, *tiny(tmp_path / "one", epochs=1)], tmp_path, 1)
    assert one.returncode == 0, one.stderr
    two = run(["train", *data, *tiny(tmp_path / "two", epochs=1)], tmp_path, 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("Epoch 0:") == 1 and "Traceback" not in two.stderr
    a, b = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("one", "two"))
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert abs(b["sampled_HR@10"] - a["sampled_HR@10"]) <= 0.01
    wa, wb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("one", "two"))
    for name in wa:  # without the summed gradients each process would train on half of every batch
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-5)
    refused = run(["find-batch", *data], tmp_path, 2)
    assert refused.returncode != 0 and refused.stderr.count("only scalerec train runs data-parallel") == 1
    again = run(["train", *data, *tiny(tmp_path / "two", epochs=1)], tmp_path, 2)  # every process refuses it
    assert again.returncode != 0 and again.stderr.count("holds an earlier run's results") == 1
    assert "RuntimeError" not in again.stderr  # no process left to fail in a collective (torchrun adds its own report)
