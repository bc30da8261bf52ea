"""Scalerec's step at several batch sizes, per sample, side by side: does a batch far larger than the cache keep the
per-sample rate of the best batch?

Each batch size gets the model, optimizer and micro-batches `scalerec train` would use for it, and trains on the
same samples: the first `--samples` of an epoch of synthetic data of `--shape` (or the NCF paper's files), drawn as
`scalerec train` draws it, split into batches of that size. The passes interleave: every repeat runs each batch
size once over those samples, in a seeded shuffled order, so that a slow spell of this shared machine slows them
alike. One JSON line per batch size: the median pass's samples/s, the median of each repeat's own ratio to the
fastest batch size, and the peak memory of a pass of its own (taken first). Run:

    .venv/bin/python benchmarks/batch_sizes.py --batch-sizes 4096 65536 786432
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time

import torch
from common import SHAPES, data_config, machine, run
from step_speed import epoch_of

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import build_run_model, micro_batch_for
from scalerec.config import Config
from scalerec.epoch import train_step
from scalerec.find_batch import peak_memory_bytes, reset_peak_rss
from scalerec.optim import build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[65536, 786432])
    p.add_argument("--samples", type=int, default=None, help="samples per pass (default: 3 of the largest batch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m", help="synthetic data of this shape")
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--data-dir", default=None, help="where the prepared synthetic data is cached")
    args = p.parse_args()
    keep_large_blocks_in_heap()  # as `scalerec train` runs on the CPU
    device = torch.device("cpu")
    data = data_config(args.ncf, args.shape)
    data.data_dir = args.data_dir or data.data_dir
    n_users, n_items, epoch = epoch_of(data, "samples", device, args.samples or 3 * max(args.batch_sizes))
    n = len(epoch[0])
    passes, peaks, micro_of = {}, {}, {}
    for bs in args.batch_sizes:
        cfg = Config(data=data)
        cfg.optim.optimizer, cfg.train.batch_size = "adam", bs
        torch.manual_seed(0)
        model = build_run_model(cfg, n_users, n_items, device)
        opt = build_optimizer("adam", model, 0.001)[0]
        micro_of[bs] = micro_batch_for(cfg, device, bs)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        batches = [tuple(t[s : s + bs] for t in epoch) for s in range(0, n, bs)]

        def one_pass(model=model, opt=opt, scaler=scaler, micro=micro_of[bs], batches=batches) -> None:
            for users, items, labels in batches:
                loss = train_step(model, opt, scaler, contextlib.nullcontext(), users, items, labels, micro)[0]
            float(loss)

        reset_peak_rss()
        one_pass()  # the warm-up, and this batch size's own peak
        peaks[bs] = peak_memory_bytes(device)
        passes[bs] = one_pass
    times: dict[int, list[float]] = {bs: [] for bs in args.batch_sizes}
    for r in range(args.repeats):
        for bs in random.Random(r).sample(args.batch_sizes, len(args.batch_sizes)):
            t0 = time.perf_counter()
            passes[bs]()
            times[bs].append(time.perf_counter() - t0)
    rates = {bs: n / statistics.median(ts) for bs, ts in times.items()}
    best = max(rates, key=rates.get)
    base = {"bench": "batch_sizes", **machine(), "device": "cpu", "dtype": "fp32"}
    base.update(dataset=args.ncf or args.shape, users=n_users, items=n_items, samples=n, best_batch=best)
    for bs, ts in times.items():
        line = {**base, "batch": bs, "micro_batch": micro_of[bs], "samples_per_s": round(rates[bs])}
        line["over_best"] = round(statistics.median(b / t for b, t in zip(times[best], ts)), 3)
        line["peak_memory_mb"] = round(peaks[bs] / 2**20)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run(main)
