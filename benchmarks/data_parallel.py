"""Data-parallel training against one process: `scalerec train` on the same data and global batch, in one process
with all the threads and under torchrun with P processes of threads/P each, their gradients summed by DDP
(--grad-sync ddp, the default) or by one flat all-reduce after the backward (--grad-sync flat), alternated R times
in one run of this script. Prints one JSON line per run (samples/s of each epoch from its metrics.jsonl, the first
epoch's loss and HR@10) and one with the ratios of the medians. On a CPU the processes share its cores and add the
gradient all-reduce to every step; on P GPUs each process has its own. Run:

    .venv/bin/python benchmarks/data_parallel.py                                  # ML-100K, 2 processes
    python3 benchmarks/data_parallel.py --processes 8 --device cuda --batch-size 65536 --dataset ml-20m
    .venv/bin/python benchmarks/data_parallel.py --dataset synthetic -- --synthetic-users 500   # train options
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import machine, run


def train(args, processes: int, threads: int, out: Path, sync: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        cmd += ["-m", "scalerec"]
    else:
        cmd = [sys.executable, "-m", "scalerec"]
    cmd += ["train", "--dataset", args.dataset, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    cmd += ["--device", args.device, "--threads", str(threads), "--output", str(out), "--no-checkpoint"]
    cmd += ["--grad-sync", sync, *args.options]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "samples_per_s": [round(r["samples_per_s"]) for r in rows],
        "loss": round(rows[0]["loss"], 4),
        "HR@10": round(rows[0]["sampled_HR@10"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="in all (one process takes them all)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("options", nargs=argparse.REMAINDER, help="after --: more options for scalerec train")
    args = p.parse_args()
    args.options = [o for o in args.options if o != "--"]
    base = {"bench": "data_parallel", **machine(), "device": args.device, "dataset": args.dataset}
    base.update(batch=args.batch_size)
    threads = max(1, args.threads // args.processes)
    ways = [("one", 1, args.threads, "auto"), ("ddp", args.processes, threads, "ddp")]
    ways.append(("flat", args.processes, threads, "flat"))
    rates: dict[str, list[float]] = {name: [] for name, *_ in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, processes, each, sync in ways[r % 3 :] + ways[: r % 3]:  # rotate which goes first
                got = train(args, processes, each, Path(tmp) / f"{name}-{r}", sync)
                rates[name] += got["samples_per_s"]
                print(json.dumps({**base, "run": name, "processes": processes, "threads_each": each, **got}))
    median = {name: statistics.median(r) for name, r in rates.items()}
    ratios = {f"{w}_over_one": median[w] / median["one"] for w in ("ddp", "flat")}
    ratios["ddp_over_flat"] = median["ddp"] / median["flat"]
    ratios = {k: round(v, 3) for k, v in ratios.items()}
    print(json.dumps({**base, "run": "ratio", **ratios, "processes": args.processes}))


if __name__ == "__main__":
    run(main)
