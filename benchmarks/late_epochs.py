"""Does the step slow down as training goes on? Early weights against late ones, with and without flush-to-zero.

A step can slow down after a while without any change in the code: subnormal floats (Adam's moments of rarely
seen rows decay towards zero, and x86 handles subnormals slowly in some units) or allocator growth. This script
trains scalerec's model and optimizer as `scalerec train` does for --epochs, printing per epoch the share of
subnormal values in the optimizer state and in the parameters. It then times the same fixed samples with the
weights and optimizer state of epoch 1 and of the last epoch, each in a fresh model in this process, with
flush-to-zero off and on (torch.set_flush_denormal), alternated --repeats times. If the late weights are slower
than the early ones the slowdown comes from the values, and if flush-to-zero removes it, subnormals. Run:

    .venv/bin/python benchmarks/late_epochs.py                       # MovieLens-100K, the default config
    .venv/bin/python benchmarks/late_epochs.py --shape ml-1m --epochs 8 --batch-size 4096
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from common import SHAPES, data_config, machine, run

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import build_run_model, micro_batch_for, optimizer_for
from scalerec.config import Config
from scalerec.data.loading import load_dataset
from scalerec.epoch import train_epoch
from scalerec.sampling import EpochSampler


@torch.no_grad()
def subnormal_share(tensors: list[torch.Tensor]) -> float:
    tiny = torch.finfo(torch.float32).tiny
    count = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors if t.is_floating_point())
    return count / max(1, sum(t.numel() for t in tensors if t.is_floating_point()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["ml-100k-real", *SHAPES], default="ml-100k-real",
                   help="synthetic data of this shape, or MovieLens-100K itself (the default)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=Config().train.batch_size)
    p.add_argument("--samples", type=int, default=200_000, help="samples of each timed pass")
    p.add_argument("--repeats", type=int, default=2, help="alternations of the four timed passes")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs: at least 2 (early and late weights)")
    keep_large_blocks_in_heap()
    cfg = Config() if args.shape == "ml-100k-real" else Config(data=data_config(None, args.shape))
    cfg.train.batch_size = args.batch_size
    ds = load_dataset(cfg.data, log=lambda s: None)
    device = torch.device("cpu")
    micro = micro_batch_for(cfg, device, args.batch_size)
    torch.manual_seed(0)
    model = build_run_model(cfg, ds.n_users, ds.n_items, device)
    opt, _ = optimizer_for(cfg, model, cfg.optim.lr)
    sampler = EpochSampler(ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, 4, device, 0)
    fixed = [t[: args.samples] for t in sampler.epoch()]
    base = {"bench": "late_epochs", **machine(), "dataset": ds.name, "batch": args.batch_size}
    snapshots = {}
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        users, items, labels = sampler.epoch()
        losses, _ = train_epoch(model, opt, users, items, labels, args.batch_size, micro_batch=micro)
        float(losses.sum())  # wait for the epoch's last step
        rate = len(users) / (time.perf_counter() - t0)
        state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
        line = {**base, "epoch": epoch, "samples_per_s": round(rate), "subnormal_state": subnormal_share(state)}
        print(json.dumps({**line, "subnormal_params": subnormal_share(list(model.parameters()))}), flush=True)
        if epoch in (0, args.epochs - 1):
            snapshots[f"epoch{epoch + 1}"] = copy.deepcopy((model.state_dict(), opt.state_dict()))

    def timed(weights, optimizer_state) -> float:
        m = build_run_model(cfg, ds.n_users, ds.n_items, device)
        m.load_state_dict(weights)
        o, _ = optimizer_for(cfg, m, cfg.optim.lr)
        o.load_state_dict(optimizer_state)
        train_epoch(m, o, *[t[: 4 * args.batch_size] for t in fixed], args.batch_size, micro_batch=micro)  # warm
        t0 = time.perf_counter()
        losses, _ = train_epoch(m, o, *fixed, args.batch_size, micro_batch=micro)
        float(losses.sum())
        return len(fixed[0]) / (time.perf_counter() - t0)

    runs = [(name, ftz) for name in snapshots for ftz in (False, True)]
    rates: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
    for r in range(args.repeats):
        for name, ftz in runs[r % len(runs) :] + runs[: r % len(runs)]:  # each repeat starts one later
            torch.set_flush_denormal(ftz)
            rates[(name, ftz)].append(timed(*snapshots[name]))
    torch.set_flush_denormal(False)
    median = {run: statistics.median(r) for run, r in rates.items()}
    for (name, ftz), rate in median.items():
        line = {**base, "weights": name, "flush_denormal": ftz, "samples": len(fixed[0])}
        print(json.dumps({**line, "samples_per_s": round(rate)}), flush=True)
    first, last = (f"epoch{e}" for e in (1, args.epochs))
    ratio = {"late_over_early": round(median[(last, False)] / median[(first, False)], 3)}
    ratio["late_ftz_over_late"] = round(median[(last, True)] / median[(last, False)], 3)
    print(json.dumps({**base, "weights": "ratio", **ratio}), flush=True)


if __name__ == "__main__":
    run(main)
