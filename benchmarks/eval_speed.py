"""Sampled evaluation speed: HR@10/NDCG@10 of NeuMF (default sizes) over every test user, one JSON line each.

.venv/bin/python benchmarks/eval_speed.py --ncf ../shared/data/ncf-ml-1m/ml-1m   # 6,040 users x 100 items
.venv/bin/python benchmarks/eval_speed.py                                          # synthetic, ml-1m shape
.venv/bin/python benchmarks/eval_speed.py --shape ml-20m                           # 138,493 users x 101 items
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import SHAPES, data_config, machine

from scalerec.config import EvalConfig, ModelConfig
from scalerec.data import load_dataset
from scalerec.evaluate import evaluate
from scalerec.model import build_model


def pair_flops(model: torch.nn.Module) -> int:
    """FLOPs to score one (user, item) pair once both are encoded: the layers after the split first layer."""
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not name.startswith("first")]
    return sum(2 * m.in_features * m.out_features for m in layers)


def sgemm_gflops(m: int = 1600, k: int = 256, n: int = 128, reps: int = 200) -> float:
    """This machine's matmul rate now, at the shape of evaluation's largest layer (the reference for a ratio)."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    torch.mm(a, w.T)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, w.T)
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--batch-users", type=int, nargs="+", default=[EvalConfig.eval_batch_size])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m", help="synthetic data of this shape")
    args = p.parse_args()
    data = data_config(args.ncf, args.shape)
    ds = load_dataset(data, log=lambda s: None)
    mcfg = ModelConfig()
    torch.manual_seed(0)
    model = build_model(mcfg.model, ds.n_users, ds.n_items, mcfg.factors, mcfg.layers, mcfg.dropout)
    users, items = torch.tensor(ds.test_users), torch.tensor(ds.test_items)
    negatives = torch.tensor(ds.eval_negatives)
    for bu in args.batch_users:
        evaluate(model, users, items, negatives, ds.n_items, (10,), bu)  # warm-up
        times, gemm = [], []
        for _ in range(args.repeats):  # alternate with the reference so both see the same machine
            t0 = time.perf_counter()
            evaluate(model, users, items, negatives, ds.n_items, (10,), bu)
            times.append(time.perf_counter() - t0)
            gemm.append(sgemm_gflops())
        pairs = len(users) * (1 + negatives.shape[1])
        eval_gflops = pairs * pair_flops(model) / statistics.median(times) / 1e9
        print(
            json.dumps(
                {
                    "bench": "eval_speed",
                    "dataset": ds.name,
                    "users": len(users),
                    "candidates": 1 + negatives.shape[1],
                    "model": mcfg.model,
                    "batch_users": bu,
                    **machine(),
                    "seconds_median": round(statistics.median(times), 4),
                    "seconds_min": round(min(times), 4),
                    "eval_gflops": round(eval_gflops, 1),
                    "sgemm_gflops": round(statistics.median(gemm), 1),
                    "eval_over_sgemm": round(eval_gflops / statistics.median(gemm), 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
