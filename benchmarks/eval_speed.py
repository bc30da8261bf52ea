"""Evaluation speed: HR@10/NDCG@10 over every test user, sampled and full ranking, one JSON line each.

Sampled: each user's test item and its negatives. Full: every item (minus the user's training items). The models
have the default sizes (NeuMF: 64 factors, layers 256 256 128 64) and untrained weights: speed does not depend
on them. An sgemm at evaluation's largest layer is timed after each repeat, for a same-run ratio. Where the CPU's
scoring uses oneDNN's products (kernels.linear), each run is timed with BLAS's too ("matmul": "blas"), the two
alternating in every repeat, each line's sgemm by its own library.

.venv/bin/python benchmarks/eval_speed.py --ncf ../shared/data/ncf-ml-1m/ml-1m   # 6,040 users x 100 items
.venv/bin/python benchmarks/eval_speed.py --ncf ../shared/data/ncf-ml-1m/ml-1m --protocols full --models neumf mf
.venv/bin/python benchmarks/eval_speed.py                                          # synthetic, ml-1m shape
.venv/bin/python benchmarks/eval_speed.py --shape ml-20m                           # 138,493 users x 101 items
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from common import SHAPES, data_config, machine, run

from scalerec.config import ModelConfig
from scalerec.data.loading import load_dataset
from scalerec.kernels import linear, onednn_pays, set_cpu_matmul
from scalerec.metrics import evaluate, full_ranks, seen_index, users_per_batch
from scalerec.model import build_model


def pair_flops(model: torch.nn.Module) -> int:
    """FLOPs to score one (user, item) pair once both are encoded: the layers after the split first layer (for MF,
    the dot product)."""
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not name.startswith("first")]
    return sum(2 * m.in_features * m.out_features for m in layers) or 2 * model.user.embedding_dim


def sgemm_gflops(onednn: bool, m: int = 1600, k: int = 256, n: int = 128, reps: int = 200) -> float:
    """This machine's matmul rate now, at the shape of evaluation's largest layer (the reference for a ratio), by
    oneDNN or by BLAS (kernels.linear)."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    linear(a, w, onednn=onednn)
    t0 = time.perf_counter()
    for _ in range(reps):
        linear(a, w, onednn=onednn)
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--protocols", nargs="+", choices=["sampled", "full"], default=["sampled", "full"])
    p.add_argument("--models", nargs="+", choices=["neumf", "mf"], default=["neumf"])
    p.add_argument("--batch-users", type=int, nargs="+", help="sampled only (default: scalerec's on the CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m", help="synthetic data of this shape")
    args = p.parse_args()
    data = data_config(args.ncf, args.shape)
    ds = load_dataset(data, log=lambda s: None)
    users, items = torch.tensor(ds.test_users), torch.tensor(ds.test_items)
    negatives = torch.tensor(ds.eval_negatives)
    seen = seen_index(*map(torch.tensor, ds.pairs(("train", "valid"))), ds.n_users)  # as the test's full ranking
    mcfg = ModelConfig()
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, ds.n_users, ds.n_items, mcfg.factors, mcfg.layers, mcfg.dropout)
        runs = []
        if "sampled" in args.protocols:
            for bu in args.batch_users or [users_per_batch(model, torch.device("cpu"), 1 + negatives.shape[1])]:
                run = functools.partial(evaluate, model, users, items, negatives, ds.n_items, (10,), bu)
                runs.append(("sampled", bu, 1 + negatives.shape[1], run))
        if "full" in args.protocols:
            runs.append(
                ("full", None, ds.n_items, functools.partial(full_ranks, model, users, items, seen, ds.n_items))
            )
        matmuls = {"onednn": True, "blas": False} if onednn_pays() and hasattr(model, "onednn") else {"blas": False}
        for protocol, bu, candidates, run in runs:
            times: dict[str, list[float]] = {m: [] for m in matmuls}
            gemm: dict[str, list[float]] = {m: [] for m in matmuls}
            for r in range(args.repeats + 1):  # alternate with the reference so all see the same machine
                for matmul, onednn in matmuls.items():
                    set_cpu_matmul(model, "onednn" if onednn else "blas")
                    t0 = time.perf_counter()
                    run()
                    if r:  # the first round warms up
                        times[matmul].append(time.perf_counter() - t0)
                        gemm[matmul].append(sgemm_gflops(onednn))
            for matmul, ts in times.items():
                # full ranking scores every item, training items included, and then leaves those out
                eval_gflops = len(users) * candidates * pair_flops(model) / statistics.median(ts) / 1e9
                line = {"bench": "eval_speed", "protocol": protocol, "dataset": ds.name, "users": len(users)}
                line.update(candidates=candidates, model=name, batch_users=bu, matmul=matmul, **machine())
                line.update(seconds_median=round(statistics.median(ts), 4), seconds_min=round(min(ts), 4))
                sgemm = statistics.median(gemm[matmul])  # by the same library
                line.update(eval_gflops=round(eval_gflops, 1), sgemm_gflops=round(sgemm, 1))
                line["eval_over_sgemm"] = round(eval_gflops / sgemm, 3)
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run(main)
