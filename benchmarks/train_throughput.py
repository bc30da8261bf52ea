"""Training throughput: the bare step vs a full epoch (sampling and shuffling included), side by side.

For each batch size, alternates R times between
  (a) bare step: the training step over one epoch's batches already in memory (the model's limit here), and
  (b) full epoch: fresh negatives + shuffle + the same steps, exactly as `scalerec train` runs it,
and prints one JSON line per measurement (median over the repeats) and one with their ratio. Run:

    .venv/bin/python benchmarks/train_throughput.py                      # synthetic, ml-100k shape
    .venv/bin/python benchmarks/train_throughput.py --ncf ../shared/data/ncf-ml-1m/ml-1m
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import machine

from scalerec.config import DataConfig, ModelConfig, OptimConfig
from scalerec.data import load_dataset
from scalerec.model import build_model
from scalerec.optim import build_optimizer
from scalerec.sampling import EpochSampler
from scalerec.train import train_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--repeats", type=int, default=3, help="alternations of (a) and (b) per batch size")
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--optimizer", choices=["adam", "sgd", "lars", "lamb"], default=OptimConfig.optimizer)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ncf:
        data = DataConfig(dataset="ncf", data=args.ncf)
    else:  # the shape of MovieLens-100K: 943 users, 1682 items, ~100 interactions per user
        data = DataConfig(dataset="synthetic", synthetic_users=943, synthetic_items=1682, synthetic_interactions=106)
    ds = load_dataset(data, log=lambda s: None)
    device = torch.device("cpu")
    mcfg = ModelConfig()
    base = {
        "bench": "train_throughput",
        "device": device.type,
        **machine(),
        "dataset": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "train_positives": len(ds.train_users),
        "model": mcfg.model,
        "optimizer": args.optimizer,
    }
    for bs in args.batch_sizes:
        torch.manual_seed(0)
        model = build_model(
            mcfg.model, ds.n_users, ds.n_items, mcfg.factors, mcfg.layers, mcfg.dropout, args.optimizer == "adam"
        )  # as `scalerec train` builds it: sparse table gradients for adam
        opt, _ = build_optimizer(args.optimizer, model, OptimConfig.lr)
        sampler = EpochSampler(ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, 4, device, 0)
        fixed = sampler.epoch()  # (a) reuses one epoch's batches, already in memory
        n = len(fixed[0])
        train_epoch(model, opt, *(t[: 8 * bs] for t in fixed), bs)  # warm-up: allocator, optimizer state
        bare, full = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            train_epoch(model, opt, *fixed, bs)
            bare.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            train_epoch(model, opt, *sampler.epoch(), bs)[0].sum().item()
            full.append(n / (time.perf_counter() - t0))
        a, b = statistics.median(bare), statistics.median(full)
        print(json.dumps({**base, "batch": bs, "mode": "bare_step", "samples_per_s": round(a)}), flush=True)
        print(json.dumps({**base, "batch": bs, "mode": "full_epoch", "samples_per_s": round(b)}), flush=True)
        print(json.dumps({**base, "batch": bs, "mode": "ratio", "full_over_bare": round(b / a, 4)}), flush=True)


if __name__ == "__main__":
    main()
