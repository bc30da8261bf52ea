"""The bare training step: a plain PyTorch NeuMF step against scalerec's, side by side, with an sgemm for scale.

"plain" is the step a PyTorch user writes first: four nn.Embedding tables, an nn.Linear MLP on the concatenated
embeddings, dense torch.optim.Adam (its default, foreach). "scalerec" is scalerec's model, optimizer and step
exactly as `scalerec train` runs them for adam: each distinct user and item encoded once, table rows or dense
updates chosen by the table size per sample, micro-batches on the CPU above 8192, the per-sample part as one
autograd node with a hand-written backward (model._PairHead), each side's lookups and first layer as another
(model._EncodeRows). "scalerec_autograd" is the same with autograd's backward of the per-sample part,
"scalerec_embedding" with nn.Embedding's lookups and nn.Linear's first layer; "scalerec_rows" and "scalerec_dense"
force one table update, whole batch at once; "scalerec_blas" runs its fp32 matrix products by BLAS (MKL), as before
oneDNN's were chosen on CPUs with AVX-512 (kernels.linear), and so do scalerec_autograd, scalerec_embedding and
scalerec_compiled, whose autograd products are nn.Linear's (BLAS): compare those with scalerec_blas; --micro-batches
adds scalerec in those slices, --compile adds scalerec with torch.compile on the per-sample part (model.interact,
with autograd's backward). On the CPU every step runs with the malloc settings `scalerec train` sets (allocator.py),
plain included; --glibc-malloc keeps glibc's, and the minor page faults per step in each line show what the setting
changes. All train on the same batches: the first of an epoch drawn as `scalerec train` draws it (4 negatives per
positive, by sample unless --shuffle groups) from scalerec's synthetic data of each shape (users' activity and
items' popularity skewed like MovieLens; generated once and cached) or, with --ncf PREFIX, from the NCF paper's
files; --uniform-users draws them instead with every user equally likely (draw_batches; the figures before
2026-12-02), which puts more distinct users in a batch (2,972 at ML-1M shape and batch 4096, against 2,575 in the
synthetic epoch and 2,345 in the NCF paper's ML-1M) and so more rows through scalerec's first layer. They run with
the same threads, in one process: R passes over the batches (--repeats), each pass interleaving the steps a few
batches at a time (--chunk), in an order drawn anew for every chunk (seeded), so that a slow spell of this shared
machine, seconds long, slows every step alike instead of the one whose turn it was (passes of one step at a time
moved identical steps' rates by up to 10%); each step's peak memory is taken in a pass of its own first. The median
pass is printed, and the median of each pass's own ratio to plain. --precisions runs every step under each of fp32,
bf16 and fp16 (autocast, and for fp16 a GradScaler: plain as PyTorch's AMP recipe writes it, scalerec as `scalerec
train --precision` runs it).

FLOP rates: "gflops" counts the model's FLOPs per sample (3 x the forward FLOPs of the MLP and the GMF product,
as plain computes them); "executed_gflops" counts what scalerec computes, its first MLP layer once per distinct
user and item of a batch. "sgemm" is a plain matrix product (torch.mm: BLAS) at the MLP's largest layer with the
batch's rows, "onednn_gflops" the same product by oneDNN's inner product where this PyTorch has it, and
"sgemm_best" the best of either over 1024 to 16384 rows: the machine's practical FLOP rate. All are measured
after each pass over the batches, and the best is kept: noise only ever slows a product down. Run:

    .venv/bin/python benchmarks/step_speed.py                               # ml-1m and ml-20m shapes
    .venv/bin/python benchmarks/step_speed.py --shapes ml-1m --batch-sizes 4096 --compile
    .venv/bin/python benchmarks/step_speed.py --ncf ../shared/data/ncf-ml-1m/ml-1m --batch-sizes 4096
    python3 benchmarks/step_speed.py --device cuda --shapes ml-20m --batch-sizes 1048576 --precisions bf16 fp16
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from common import SHAPES, data_config, machine, run
from torch import nn

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import build_run_model, micro_batch_for
from scalerec.config import Config, DataConfig
from scalerec.data.loading import load_dataset
from scalerec.epoch import train_step
from scalerec.errors import UserError
from scalerec.find_batch import peak_memory_bytes, reset_peak_rss
from scalerec.kernels import linear, onednn_pays, set_cpu_matmul, unique_rows
from scalerec.model import build_model
from scalerec.optim import build_optimizer
from scalerec.precision import PRECISIONS, autocast_context, grad_scaler
from scalerec.sampling import SHUFFLES, EpochSampler

FACTORS, LAYERS = 64, (256, 256, 128, 64)


class PlainNeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.gmf_user, self.gmf_item = nn.Embedding(n_users, FACTORS), nn.Embedding(n_items, FACTORS)
        self.mlp_user, self.mlp_item = nn.Embedding(n_users, LAYERS[0] // 2), nn.Embedding(n_items, LAYERS[0] // 2)
        self.mlp = nn.Sequential(*(m for a, b in zip(LAYERS, LAYERS[1:]) for m in (nn.Linear(a, b), nn.ReLU())))
        self.predict = nn.Linear(FACTORS + LAYERS[-1], 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)


# Variants that differ from "scalerec" only on the CPU (its kernels, its row-wise or dense tables by rule).
CPU_ONLY = ("scalerec_autograd", "scalerec_embedding", "scalerec_rows", "scalerec_dense", "scalerec_blas")


def draw_batches(n_users: int, n_items: int, bs: int, steps: int, shuffle: str, device, negatives: int = 4):
    """`steps` batches as `scalerec train` would order them, with users uniform: per positive (a user drawn uniformly,
    its item skewed like MovieLens popularity), `negatives` uniformly drawn items of the same user; by group
    (each positive followed by its negatives, `--shuffle groups`) or every sample on its own (`samples`,
    scalerec's default)."""
    g = torch.Generator().manual_seed(0)
    group, n = 1 + negatives, steps * bs
    if shuffle == "groups":
        users = torch.randint(0, n_users, (n // group + 1,), generator=g).repeat_interleave(group)[:n]
        positive = torch.arange(n) % group == 0
    else:
        users = torch.randint(0, n_users, (n,), generator=g)
        positive = torch.rand(n, generator=g) < 1 / group
    items = torch.randint(0, n_items, (n,), generator=g)
    popularity = (torch.arange(n_items, dtype=torch.float64) + 1) ** -0.8  # Zipf-like
    items[positive] = torch.multinomial(popularity, int(positive.sum()), replacement=True, generator=g)
    parts = (users, items, positive.float())
    return [tuple(t[s : s + bs].to(device) for t in parts) for s in range(0, n, bs)]


def epoch_of(data: DataConfig, shuffle: str, device, samples: int) -> tuple:
    """(users, items, the first `samples` of one epoch's (users, items, labels)) of the data `data` names (the
    NCF paper's files, or synthetic data of a MovieLens shape), drawn as `scalerec train` draws an epoch: 4
    negatives per positive, in the `shuffle` order."""
    ds = load_dataset(data, log=lambda s: None)
    sampler = EpochSampler(ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, 4, device, 0, shuffle)
    users, items, labels = (t[:samples] for t in sampler.epoch())
    return ds.n_users, ds.n_items, (users.long(), items.long(), labels.clone())  # int64, as steps take them


def train_flops_per_sample() -> int:
    macs = sum(a * b for a, b in zip(LAYERS, LAYERS[1:])) + FACTORS + LAYERS[-1]
    return 3 * 2 * macs + 3 * FACTORS  # forward + backward (twice the forward), and the GMF product


def executed_flops_per_sample(batches, n_users: int, n_items: int, micro: int | None) -> float:
    """Scalerec's FLOPs per sample: the first MLP layer per distinct user and item (per whole batch, also with
    micro-batches), the rest per sample."""
    first = 3 * 2 * (LAYERS[0] // 2) * LAYERS[1]  # one half of the first layer, for one row
    rows = statistics.mean(len(unique_rows(u, n_users)[0]) + len(unique_rows(i, n_items)[0]) for u, i, _ in batches)
    return train_flops_per_sample() - 2 * first + first * rows / len(batches[0][0])


def plain_step(model, opt, scaler, ctx, users, items, labels) -> torch.Tensor:
    """A plain step, with AMP as its docs show it: autocast forward, a GradScaler (a no-op but for fp16)."""
    with ctx:
        logits = model(users, items)
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def scalerec_step(model, opt, scaler, ctx, micro, users, items, labels) -> torch.Tensor:
    return train_step(model, opt, scaler, ctx, users, items, labels, micro_batch=micro)[0]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()  # Linux: VmHWM restarts; elsewhere the process's peak since it started


def run_steps(step, batches) -> tuple[float, int]:
    """(seconds, minor page faults of the process) for one pass over the batches."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for users, items, labels in batches:
        loss = step(users, items, labels)
    float(loss)  # wait for the device
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def sgemm_gflops(batch: int, device: torch.device, seconds: float = 0.5, onednn: bool = False) -> float:
    """GFLOP/s of a product of `batch` rows at the MLP's largest layer: torch.mm (BLAS), or with `onednn` oneDNN's
    inner product as scalerec's step calls it (kernels.linear)."""
    a = torch.randn(batch, LAYERS[0], device=device)
    b = torch.randn(LAYERS[0], LAYERS[1], device=device)
    product = (lambda a, b: linear(a, b.T, onednn=True)) if onednn else torch.mm  # both a @ b
    product(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        product(a, b)
        n += 1
    float(a[0, 0])
    return 2 * batch * LAYERS[0] * LAYERS[1] * n / (time.perf_counter() - t0) / 1e9


def best_sgemm(device: torch.device, seconds: float = 0.5) -> float:
    """The best sgemm_gflops over 1024 to 16384 rows, by BLAS and, where the CPU's step uses it, by oneDNN."""
    backends = [False, True] if device.type == "cpu" and onednn_pays() else [False]
    return max(sgemm_gflops(rows, device, seconds, o) for rows in (1024, 4096, 8192, 16384) for o in backends)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["ml-1m", "ml-20m"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--samples", type=int, default=2_000_000, help="samples per timed pass (rounded to batches)")
    p.add_argument("--repeats", type=int, default=3, help="passes over the batches, every step in each")
    p.add_argument("--chunk", type=int, default=4, help="batches a step runs before the next one takes over")
    p.add_argument("--micro-batches", type=int, nargs="*", default=[], help="also scalerec's step in these slices")
    p.add_argument("--compile", action="store_true", help="also scalerec with torch.compile on model.interact")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--glibc-malloc", action="store_true", help="keep glibc's malloc settings (see allocator.py)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"], help="each step in each")
    p.add_argument("--shuffle", choices=SHUFFLES, default=SHUFFLES[0], help="batches as this epoch order")
    p.add_argument("--ncf", metavar="PREFIX", help="batches from an epoch of the NCF paper's files, not --shapes")
    p.add_argument("--uniform-users", action="store_true", help="--shapes' batches by draw_batches, not an epoch")
    p.add_argument("--data-dir", default=None, help="where the prepared synthetic data is cached")
    args = p.parse_args()
    malloc = "glibc" if args.glibc_malloc or not keep_large_blocks_in_heap() else "scalerec"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    onednn = device.type == "cpu" and onednn_pays()  # the CPU step's products by oneDNN (kernels.linear)
    flops = train_flops_per_sample()
    if args.ncf and args.uniform_users:
        p.error("--uniform-users: not with --ncf, whose batches are its own epoch's")
    if args.ncf:
        sources = [(args.ncf, data_config(args.ncf, "ml-1m"))]
    else:
        sources = [(shape, data_config(None, shape)) for shape in args.shapes]
    needed = max(max(2, args.samples // bs) * bs for bs in args.batch_sizes)
    for shape, data in sources:
        data.data_dir = args.data_dir or data.data_dir
        if args.uniform_users:
            n_users, n_items, epoch = *SHAPES[shape][:2], None
        else:
            n_users, n_items, epoch = epoch_of(data, args.shuffle, device, needed)
        for bs, precision in ((bs, prec) for bs in args.batch_sizes for prec in args.precisions):
            steps = max(2, args.samples // bs)
            if epoch is not None:  # the epoch's first batches, as `scalerec train` would step through them
                steps = min(steps, len(epoch[0]) // bs)
                if steps == 0:
                    raise UserError(f"--batch-sizes {bs}: more than an epoch of {shape} ({len(epoch[0]):,} samples)")
                batches = [tuple(t[s : s + bs] for t in epoch) for s in range(0, steps * bs, bs)]
            else:
                batches = draw_batches(n_users, n_items, bs, steps, args.shuffle, device)
            torch.manual_seed(0)
            plain = PlainNeuMF(n_users, n_items).to(device)
            plain_opt = torch.optim.Adam(plain.parameters(), lr=0.001)
            ctx = autocast_context(precision, device)  # reentered by every step
            candidates = {"plain": functools.partial(plain_step, plain, plain_opt, grad_scaler(precision, device), ctx)}
            cfg = Config()
            cfg.optim.optimizer, cfg.train.batch_size = "adam", bs
            train_micro = micro_batch_for(cfg, device, bs)
            variants = [(name, None, train_micro) for name in ("scalerec", "scalerec_autograd", "scalerec_embedding")]
            variants += [("scalerec_rows", True, None), ("scalerec_dense", False, None)]
            variants += [("scalerec_blas", None, train_micro)] if onednn else []
            variants += [(f"scalerec_micro{m}", None, m) for m in args.micro_batches if m < bs]
            variants += [("scalerec_compiled", None, train_micro)] if args.compile else []
            if device.type == "cuda":  # the CPU's kernels and row-wise tables: on a GPU, scalerec's step again
                variants = [v for v in variants if v[0] not in CPU_ONLY]
            micro_of = {}
            for name, sparse, micro in variants:
                torch.manual_seed(0)
                variant = {"scalerec_autograd": "autograd", "scalerec_compiled": "autograd"}.get(name, "scalerec")
                variant = "embedding" if name == "scalerec_embedding" else variant
                if sparse is None:  # as `scalerec train` builds it
                    ours = build_run_model(cfg, n_users, n_items, device, variant)
                else:
                    ours = build_model("neumf", n_users, n_items, FACTORS, LAYERS, 0.0, sparse, variant).to(device)
                # BLAS where autograd's nn.Linear computes some of the products: the ablations stay comparable
                blas = ("scalerec_blas", "scalerec_autograd", "scalerec_embedding", "scalerec_compiled")
                if name in blas:
                    set_cpu_matmul(ours, "blas")
                if name == "scalerec_compiled":
                    ours.interact = torch.compile(ours.interact, dynamic=True)
                opt = build_optimizer("adam", ours, 0.001)[0]
                candidates[name] = functools.partial(
                    scalerec_step, ours, opt, grad_scaler(precision, device), ctx, micro
                )
                micro_of[name] = micro
            peaks: dict[str, int] = {}
            for name, step in candidates.items():  # each step's own peak; the warm-up too (allocator, optimizer state)
                reset_peak(device)  # on the CPU this hands free heap memory back (allocator.py)...
                run_steps(step, batches[:2])
                peaks[name] = peak_memory_bytes(device)
            for step in candidates.values():
                run_steps(step, batches[:1])  # ...so one untimed step each takes the page faults that cost
            times: dict[str, list[float]] = {name: [] for name in candidates}
            faults: dict[str, list[int]] = {name: [] for name in candidates}
            gemm = onednn_gemm = best_gemm = 0.0
            names = list(candidates)
            for r in range(args.repeats):
                order = random.Random(r)
                for name in names:
                    times[name].append(0.0)
                    faults[name].append(0)
                for s in range(0, steps, args.chunk):
                    for name in order.sample(names, len(names)):
                        seconds, faulted = run_steps(candidates[name], batches[s : s + args.chunk])
                        times[name][-1] += seconds
                        faults[name][-1] += faulted
                gemm = max(gemm, sgemm_gflops(bs, device))
                if onednn:
                    onednn_gemm = max(onednn_gemm, sgemm_gflops(bs, device, onednn=True))
                best_gemm = max(best_gemm, gemm, onednn_gemm, best_sgemm(device))
            # on a GPU scalerec's step runs per sample: the FLOPs of plain's
            executed = flops if device.type == "cuda" else executed_flops_per_sample(batches, n_users, n_items, None)
            base = {"bench": "step_speed", **machine(), "device": device.type, "dtype": precision, "shape": shape}
            base.update(users=n_users, items=n_items, batch=bs, shuffle=args.shuffle, optimizer="adam", malloc=malloc)
            rates = {}
            for name, ts in times.items():
                rates[name] = steps * bs / statistics.median(ts)
                line = {**base, "step": name, "samples_per_s": round(rates[name])}
                if name.startswith("scalerec"):
                    line["micro_batch"] = micro_of[name]
                    line["executed_gflops"] = round(rates[name] * executed / 1e9, 1)
                line["gflops"] = round(rates[name] * flops / 1e9, 1)
                line["peak_memory_mb"] = round(peaks[name] / 2**20)  # GPU allocated, or the process's RSS
                line["page_faults_per_step"] = round(statistics.median(faults[name]) / steps)
                print(json.dumps(line), flush=True)
            line = {**base, "step": "sgemm", "gflops": round(gemm, 1), "sgemm_best": round(best_gemm, 1)}
            print(json.dumps({**line, **({"onednn_gflops": round(onednn_gemm, 1)} if onednn_gemm else {})}))
            ratio = {f"{name}_over_plain": round(rates[name] / rates["plain"], 3) for name in rates if name != "plain"}
            # each pass's own ratio: its median, and lowest and highest: how far this machine's noise moves it
            each = {n: sorted(p / t for p, t in zip(times["plain"], ts)) for n, ts in times.items() if n != "plain"}
            ratio.update({f"{n}_over_plain_paired": round(statistics.median(r), 3) for n, r in each.items()})
            ratio.update({f"{n}_over_plain_range": [round(r[0], 3), round(r[-1], 3)] for n, r in each.items()})
            ratio["plain_flops_over_sgemm_best"] = round(rates["plain"] * flops / 1e9 / best_gemm, 3)
            ratio.update(
                {
                    f"{n}_executed_flops_over_sgemm_best": round(r * executed / 1e9 / best_gemm, 3)
                    for n, r in rates.items()
                    if n != "plain"
                }
            )
            print(json.dumps({**base, "step": "ratio", **ratio}), flush=True)


if __name__ == "__main__":
    run(main)
