"""Training throughput: the bare step vs a full epoch (sampling and shuffling included), side by side, over epochs.

For each batch size, with the model, optimizer and micro-batches that `scalerec train` would use, each epoch runs
  (a) bare step: training steps over batches already in memory (one epoch drawn up front, or its first
      --bare-samples), the model's limit here, and
  (b) full epoch: fresh negatives + shuffle + every step, exactly as `scalerec train` runs it,
and prints one JSON line per epoch and mode (so slowdowns that appear only after a while show), then one with
the ratio of the mean rates over the epochs. The full epoch's time includes drawing it (negatives, shuffle), as
`scalerec train`'s does. "gflops" counts the model's FLOPs per sample as a plain step computes them
(step_speed.train_flops_per_sample); after every pass an sgemm at the MLP's largest layer, with 1024 to 16384
rows, by BLAS and, where the step uses it, by oneDNN (step_speed.best_sgemm), measures the machine's practical FLOP
rate, and the ratio line gives the bare step's mean FLOP rate over
the best of those (`bare_step_flops_over_sgemm_best`): the step as `scalerec train` runs it, alone in the
process, where step_speed.py's interleaved steps evict each other's tables and optimizer state. Peak memory is
the process's on the CPU (its high-water mark since the last reset: the dataset, the sampler's tensors, the
model and optimizer state), the GPU's allocated memory on a GPU. Run:

    .venv/bin/python benchmarks/train_throughput.py --shape ml-1m --batch-sizes 4096 65536 --epochs 3
    .venv/bin/python benchmarks/train_throughput.py --ncf ../shared/data/ncf-ml-1m/ml-1m
    .venv/bin/python benchmarks/train_throughput.py --shape ml-20m --batch-sizes 65536 --epochs 1 --bare-samples 5000000
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import SHAPES, data_config, machine, run
from step_speed import best_sgemm, train_flops_per_sample

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import build_run_model, micro_batch_for, optimizer_for
from scalerec.config import Config
from scalerec.data.loading import load_dataset
from scalerec.epoch import train_epoch
from scalerec.find_batch import peak_memory_bytes, reset_peak_rss
from scalerec.precision import PRECISIONS, autocast_context, grad_scaler
from scalerec.sampling import EpochSampler


def timed_epoch(model, opt, draw, bs: int, micro: int | None, amp, device) -> tuple[float, int, int]:
    """(samples per second, peak memory in bytes: the process's, or the GPU's; samples) of one pass: `draw()`
    (the epoch's tensors: sampling and shuffling for a full epoch, already in memory for the bare step), then
    every step, waiting for the device at the end. `amp` is the (GradScaler, autocast context) pair."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    t0 = time.perf_counter()
    users, items, labels = draw()
    losses, _ = train_epoch(model, opt, users, items, labels, bs, scaler=amp[0], ctx=amp[1], micro_batch=micro)
    float(losses.sum())
    return len(users) / (time.perf_counter() - t0), peak_memory_bytes(device), len(users)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--epochs", type=int, default=3, help="epochs of (a) and (b) each, alternated")
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m", help="synthetic data of this shape")
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--bare-samples", type=int, default=None, help="(a) over this many samples (default: an epoch)")
    p.add_argument("--optimizer", choices=["adam", "sgd", "lars", "lamb"], default="adam")
    p.add_argument("--data-dir", default=None, help="where the prepared synthetic data is cached")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = data_config(args.ncf, args.shape)
    if args.data_dir:
        data.data_dir = args.data_dir
    t0 = time.perf_counter()
    ds = load_dataset(data, log=lambda s: None)
    load_s = time.perf_counter() - t0
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_large_blocks_in_heap()  # as `scalerec train` runs on the CPU
    amp = (grad_scaler(args.precision, device), autocast_context(args.precision, device))
    base = {"bench": "train_throughput", "device": device.type, **machine(), "dataset": ds.name}
    base["dtype"] = args.precision
    base.update(shape=None if args.ncf else args.shape, users=ds.n_users, items=ds.n_items)
    base.update(train_positives=len(ds.train_users), optimizer=args.optimizer, load_s=round(load_s, 1))
    for bs in args.batch_sizes:
        cfg = Config(data=data)
        cfg.optim.optimizer, cfg.train.batch_size = args.optimizer, bs
        torch.manual_seed(0)
        model = build_run_model(cfg, ds.n_users, ds.n_items, device)
        opt, _ = optimizer_for(cfg, model, cfg.optim.lr)
        micro = micro_batch_for(cfg, device, bs)
        sampler = EpochSampler(ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, 4, device, 0)
        fixed = [t[: args.bare_samples] for t in sampler.epoch()]  # (a): batches already in memory
        warm = [t[: 4 * bs] for t in fixed]
        train_epoch(model, opt, *warm, bs, scaler=amp[0], ctx=amp[1], micro_batch=micro)  # warm-up
        sparse = any(getattr(m, "sparse", False) for m in model.modules())
        line = {**base, "batch": bs, "micro_batch": micro, "tables": "rows" if sparse else "dense"}
        rates: dict[str, list[float]] = {"bare_step": [], "full_epoch": []}
        flops, best_gemm = train_flops_per_sample(), 0.0  # the default NeuMF's, which cfg builds
        for epoch in range(args.epochs):
            for mode in rates:
                draw = (lambda f=fixed: f) if mode == "bare_step" else sampler.epoch  # the full epoch times its draw
                rate, peak, n = timed_epoch(model, opt, draw, bs, micro, amp, device)
                rates[mode].append(rate)
                best_gemm = max(best_gemm, best_sgemm(device, 0.25))
                out = {**line, "epoch": epoch, "mode": mode, "samples": n, "samples_per_s": round(rate)}
                out["gflops"] = round(rate * flops / 1e9, 1)
                print(json.dumps({**out, "peak_memory_mb": round(peak / 2**20)}), flush=True)
        mean = {mode: sum(r) / len(r) for mode, r in rates.items()}
        ratio = round(mean["full_epoch"] / mean["bare_step"], 4)
        out = {**line, "mode": "ratio", "epochs": args.epochs, "full_over_bare": ratio}
        out["sgemm_best"] = round(best_gemm, 1)
        out["bare_step_flops_over_sgemm_best"] = round(mean["bare_step"] * flops / 1e9 / best_gemm, 3)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    run(main)
