"""The data-parallel gradient sync: scalerec's one flat all-reduce after the backward against PyTorch's
DistributedDataParallel (gradients all-reduced in buckets, overlapping the backward), on the same model, batches
and processes, alternated R times in one torchrun job. Prints one JSON line per way (steps/s of each repeat) and one
with the ratio of the medians. Run:

    .venv/bin/python benchmarks/allreduce.py                          # 2 processes on the CPU, NeuMF, ML-1M shape
    python3 benchmarks/allreduce.py --processes 8 --device cuda --batch-size 65536
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import SHAPES, machine, run

from scalerec import distributed
from scalerec.model import build_model


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--shape", choices=sorted(SHAPES), default="ml-1m", help="the model's tables: users, items")
    p.add_argument("--batch-size", type=int, default=8192, help="the global batch, split between the processes")
    p.add_argument("--steps", type=int, default=20, help="steps per way per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def step(model, optimizer, users, items, labels, sync) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(model(users, items), labels).backward()
    if sync is not None:
        sync()
    optimizer.step()


def worker(args: argparse.Namespace) -> None:
    """Each process: the same NeuMF twice (dense tables, as Adam has them at this batch), one synced by scalerec's
    flat all-reduce, one wrapped in DistributedDataParallel; each times its steps in turn."""
    group, device = distributed.setup(torch.device(args.device))
    n_users, n_items, _ = SHAPES[args.shape]
    torch.manual_seed(0)
    flat = build_model("neumf", n_users, n_items, 64, (256, 256, 128, 64), 0.0).to(device)
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(
        build_model("neumf", n_users, n_items, 64, (256, 256, 128, 64), 0.0).to(device)
    )
    local = args.batch_size // group.world
    g = torch.Generator(device="cpu").manual_seed(1 + group.rank)  # each process its own share
    batches = [
        (torch.randint(n_users, (local,), generator=g), torch.randint(n_items, (local,), generator=g))
        for _ in range(args.steps)
    ]
    batches = [
        (u.to(device), i.to(device), (torch.rand(local, generator=g) < 0.2).float().to(device)) for u, i in batches
    ]
    ways = {
        "flat": (flat, torch.optim.Adam(flat.parameters(), 1e-3), lambda: group.sum_gradients(flat, 1 / group.world)),
        "ddp": (ddp, torch.optim.Adam(ddp.parameters(), 1e-3), None),  # DDP averages in its backward hooks
    }
    times: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(args.repeats + 1):  # the first round warms up
        for name, (model, opt, sync) in ways.items():
            group.total(torch.zeros(1))  # start together
            t0 = time.perf_counter()
            for users, items, labels in batches:
                step(model, opt, users, items, labels, sync)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(args.steps / (time.perf_counter() - t0))
    same = all(torch.allclose(a, b, atol=1e-4) for a, b in zip(flat.parameters(), ddp.module.parameters()))
    if group.is_main:
        shape = {"shape": args.shape, "batch": args.batch_size, "processes": group.world, "device": str(device)}
        for name, rates in times.items():
            print(json.dumps({"bench": "allreduce", **machine(), **shape, "sync": name, "steps_per_s": rates}))
        ratio = statistics.median(times["ddp"]) / statistics.median(times["flat"])
        print(json.dumps({"bench": "allreduce", **shape, "ddp_over_flat": round(ratio, 3), "same_weights": same}))
    distributed.teardown(group)


def main() -> None:
    args = parse()
    if args.worker:
        return worker(args)
    threads = max(1, (os.cpu_count() or 1) // args.processes) if args.device == "cpu" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.processes}"]
    cmd += [__file__, "--worker", *sys.argv[1:]]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    sys.stdout.write(done.stdout)


if __name__ == "__main__":
    run(main)
