"""Accuracy of scalerec's step against the plain PyTorch step: the same model, start and batches, HR@10 per epoch.

Both start from the same weights (scalerec's NeuMF initialisation, copied into step_speed.py's PlainNeuMF) and
train on the same epochs of batches (one sampler, each epoch drawn once and given to both; --shuffle as in
`scalerec train`), with Adam at the default lr: "plain" with the plain step (nn.Embedding tables, nn.Linear
MLP, dense torch.optim.Adam), "scalerec" with `scalerec train`'s step (distinct rows, fused Adam, micro-batches
above 8192 on the CPU).
After each epoch both are evaluated by scalerec's sampled evaluation (the plain weights copied back into a
NeuMF), and one JSON line per step prints HR@10, NDCG@10 and samples/s. Run:

    .venv/bin/python benchmarks/step_accuracy.py --ncf ../shared/data/ncf-ml-1m/ml-1m --epochs 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import SHAPES, data_config, machine, run
from step_speed import FACTORS, LAYERS, PlainNeuMF, plain_step

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import build_run_model, micro_batch_for, optimizer_for
from scalerec.config import Config
from scalerec.data.loading import load_dataset
from scalerec.epoch import train_epoch
from scalerec.metrics import evaluate, users_per_batch
from scalerec.model import NeuMF
from scalerec.precision import autocast_context, grad_scaler
from scalerec.sampling import SHUFFLES, EpochSampler


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module, to_plain: bool) -> None:
    """NeuMF <-> PlainNeuMF: the same tensors, the first MLP layer split in two halves in NeuMF."""
    neumf, plain = (src, dst) if to_plain else (dst, src)
    pairs = [(neumf.gmf_user.weight, plain.gmf_user.weight), (neumf.gmf_item.weight, plain.gmf_item.weight)]
    pairs += [(neumf.mlp_user.weight, plain.mlp_user.weight), (neumf.mlp_item.weight, plain.mlp_item.weight)]
    linears = [m for m in plain.mlp if isinstance(m, torch.nn.Linear)]
    half = neumf.first_user.in_features
    pairs += [
        (neumf.first_user.weight, linears[0].weight[:, :half]),
        (neumf.first_item.weight, linears[0].weight[:, half:]),
    ]
    pairs += [(neumf.first_user.bias, linears[0].bias)]
    for ours, theirs in zip(neumf.hidden, linears[1:]):
        pairs += [(ours.weight, theirs.weight), (ours.bias, theirs.bias)]
    pairs += [(neumf.predict.weight, plain.predict.weight), (neumf.predict.bias, plain.predict.bias)]
    with torch.no_grad():
        for a, b in pairs:
            (b if to_plain else a).copy_(a if to_plain else b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ncf", metavar="PREFIX", help="the NCF paper's files instead of synthetic data")
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m", help="synthetic data of this shape")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--shuffle", choices=SHUFFLES, default=SHUFFLES[0], help="the epoch order (sampling.py)")
    args = p.parse_args()
    data = data_config(args.ncf, args.shape)
    ds = load_dataset(data, log=lambda s: None)
    device = torch.device("cpu")
    keep_large_blocks_in_heap()  # as `scalerec train` runs on the CPU
    cfg = Config(data=data)
    cfg.model.factors, cfg.model.layers = FACTORS, LAYERS
    cfg.optim.optimizer, cfg.train.batch_size = "adam", args.batch_size
    torch.manual_seed(0)
    ours = build_run_model(cfg, ds.n_users, ds.n_items, device)
    plain = PlainNeuMF(ds.n_users, ds.n_items)
    copy_weights(ours, plain, to_plain=True)
    ours_opt, _ = optimizer_for(cfg, ours, cfg.optim.lr)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=cfg.optim.lr)
    micro = micro_batch_for(cfg, device, args.batch_size)
    fp32_scaler, fp32 = grad_scaler("fp32", device), autocast_context("fp32", device)
    sampler = EpochSampler(ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, 4, device, 0, args.shuffle)
    test = [torch.tensor(a) for a in (ds.test_users, ds.test_items, ds.eval_negatives)]
    scored = NeuMF(ds.n_users, ds.n_items, FACTORS, LAYERS)
    base = {"bench": "step_accuracy", **machine(), "dataset": ds.name, "batch": args.batch_size}
    base["shuffle"] = args.shuffle
    for epoch in range(args.epochs):
        users, items, labels = sampler.epoch()
        users, items = users.long(), items.long()  # as the steps take them
        for name in ("plain", "scalerec"):
            model = plain if name == "plain" else ours
            model.train()
            t0 = time.perf_counter()
            if name == "plain":
                for s in range(0, len(users), args.batch_size):
                    e = s + args.batch_size
                    loss = plain_step(plain, plain_opt, fp32_scaler, fp32, users[s:e], items[s:e], labels[s:e])
                float(loss)
            else:
                float(train_epoch(ours, ours_opt, users, items, labels, args.batch_size, micro_batch=micro)[0].sum())
            rate = len(users) / (time.perf_counter() - t0)
            if name == "plain":
                copy_weights(plain, scored, to_plain=False)
            evaluated = scored if name == "plain" else ours
            evaluated.eval()
            per_batch = cfg.eval.eval_batch_size or users_per_batch(evaluated, device, test[2].shape[1] + 1)
            metrics = evaluate(evaluated, *test, ds.n_items, (10,), per_batch)
            line = {**base, "step": name, "epoch": epoch, "samples_per_s": round(rate)}
            line.update({k: round(v, 4) for k, v in metrics.items()})
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run(main)
