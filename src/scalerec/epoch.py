"""An epoch: the training step, the pass over the epoch's tensors, and the epoch's evaluation and metrics row.

train_step computes a batch's loss and gradients (in micro-batches where asked) and takes one optimizer step;
train_epoch runs it over slices of the epoch's device tensors, each process of a data-parallel group on its share
of every batch, with no host sync; run_epoch draws the epoch's samples, trains, evaluates and logs.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scalerec import distributed
from scalerec.config import PROTOCOLS, Config
from scalerec.find_batch import peak_memory_bytes
from scalerec.kernels import encode_rows, interact_rows

if TYPE_CHECKING:
    from scalerec.assembly import Parts


def train_step(
    model,
    optimizer,
    scaler,
    ctx,
    users,
    items,
    labels,
    micro_batch: int | None = None,
    group: distributed.Group | None = None,
    weight: float = 1.0,
    by_ddp: bool = False,
    l2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on a batch: (the batch's mean loss, 1 if fp16 loss scaling skipped the step else 0), both device
    tensors (no host sync). With `micro_batch`, the batch is computed in slices of that many samples whose
    gradients add up to the whole batch's (each slice's loss is its sum over the batch size): one optimizer step,
    the same gradient, but activations that stay in cache (or fit in device memory). On the CPU each distinct
    user and item is encoded once for the whole batch; each slice gathers its rows from the encodings as leaves
    of its own graph, and their gradients are added into one buffer per encoding (index_add), so that one
    backward takes them to the tables. Letting autograd do that per slice would cost a zeroed encoding-sized
    gradient per slice and gather, a large part of the step at ML-20M's shape. On a GPU, where that cost is small
    and finding the distinct rows would sync with the host, each slice runs whole and autograd adds up the
    gradients. With a process `group`, the batch is this process's share of the step's (`weight`: its size over
    the step's), and the processes' gradients are summed before the optimizer step: with `by_ddp` (the whole
    share in one backward) by the group's DDP during the backward, else in one all-reduce after it. Every process
    of the group must take the same way at each step. `l2` adds l2/2 x the squared norms of the embedding rows
    each sample uses (`row_penalty`) to its loss; the loss returned is the cross-entropy alone."""
    n = len(labels)
    chunk = min(micro_batch or n, n)
    optimizer.zero_grad(set_to_none=True)
    ddp = group.ddp if by_ddp else None  # by_ddp: the whole share in one backward
    on_cpu = users.device.type == "cpu"
    # On a GPU the penalty gathers a row per sample: with micro-batches, `accumulated` adds it slice by slice.
    penalty = l2 / 2 * row_penalty(model, users, items) / n if l2 and (chunk == n or on_cpu) else None
    if chunk == n:
        with ctx:
            logits = (ddp or model)(users, items)
        total = F.binary_cross_entropy_with_logits(logits.float(), labels)
        objective = total if penalty is None else total + penalty
        if ddp is None:
            scaler.scale(objective).backward()
        else:
            group.backward(scaler.scale(objective), weight)
        total = total.detach()
    else:
        if on_cpu:
            total = encoded_once(model, scaler, ctx, users, items, labels, chunk)
        else:  # finding the distinct rows would sync with the host (their count sizes the encodings)
            total = accumulated(model, scaler, ctx, users, items, labels, chunk, l2)
        if penalty is not None:
            scaler.scale(penalty).backward()
    if group is not None and ddp is None:
        group.sum_gradients(model, weight)
    scaler.step(optimizer)  # unscales first, and skips the step if a gradient is inf/nan
    skipped = sum(scaler._found_inf_per_device(optimizer).values()) if scaler.is_enabled() else torch.zeros(())
    scaler.update()
    return total, skipped


def row_penalty(model, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The sum over the samples of the squared norms of the embedding rows (and bias rows) each one uses: on the
    CPU per distinct row times its count (a sparse table keeps its gradient sparse); on a GPU per sample, where
    finding the distinct rows would sync with the host."""
    total = torch.zeros((), device=users.device)
    for ids, tables in ((users, model.tables("user")), (items, model.tables("item"))):
        if ids.device.type == "cuda":
            for t in tables:
                total = total + F.embedding(ids, t.weight).float().square().sum()
        else:
            distinct, counts = ids.unique(return_counts=True)
            for t in tables:
                rows = F.embedding(distinct, t.weight, sparse=t.sparse)
                total = total + counts.float() @ rows.float().square().sum(1)
    return total


def encoded_once(model, scaler, ctx, users, items, labels, chunk: int) -> torch.Tensor:
    """A batch's gradients in slices of `chunk` samples, each distinct user and item encoded once (train_step,
    on the CPU); the batch's mean loss."""
    n = len(labels)
    with ctx:
        (user, u_at), (item, i_at) = encode_rows(model, users, items)
    encodings = [t for t in user + item if t is not None]
    # fp32 sums whatever autocast made the encodings: a bf16 row's sum stops growing at ~256x one slice's term
    grads = [torch.zeros_like(t, dtype=torch.float32) for t in encodings]
    sides = [u_at] * sum(t is not None for t in user) + [i_at] * sum(t is not None for t in item)
    total = torch.zeros((), device=labels.device)
    for s in range(0, n, chunk):
        rows = [t.detach().index_select(0, at[s : s + chunk]).requires_grad_() for t, at in zip(encodings, sides)]
        parts = iter(rows)
        u_rows, i_rows = (tuple(None if t is None else next(parts) for t in e) for e in (user, item))
        with ctx:
            logits = interact_rows(model, u_rows, i_rows, None, None)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels[s : s + chunk], reduction="sum") / n
        scaler.scale(loss).backward()
        total += loss.detach()
        for grad, r, at in zip(grads, rows, sides):
            grad.index_add_(0, at[s : s + chunk], r.grad.float())
    torch.autograd.backward(encodings, [g.to(t.dtype) for g, t in zip(grads, encodings)])
    return total


def accumulated(model, scaler, ctx, users, items, labels, chunk: int, l2: float = 0.0) -> torch.Tensor:
    """A batch's gradients in slices of `chunk` samples, each slice's forward and backward whole, the gradients
    adding up in the parameters' (fp32) .grad (train_step on a GPU: no host sync); the batch's mean loss. With
    `l2`, each slice's backward includes its samples' share of the row penalty (train_step)."""
    n = len(labels)
    total = torch.zeros((), device=labels.device)
    for s in range(0, n, chunk):
        with ctx:
            logits = model(users[s : s + chunk], items[s : s + chunk])
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels[s : s + chunk], reduction="sum") / n
        penalty = l2 / 2 * row_penalty(model, users[s : s + chunk], items[s : s + chunk]) / n if l2 else 0.0
        scaler.scale(loss + penalty).backward()
        total += loss.detach()
    return total


DIVERGENCE_CHECK = 64


def train_epoch(
    model,
    optimizer,
    users,
    items,
    labels,
    batch_size: int,
    bar=None,
    scheduler=None,
    scaler=None,
    ctx=None,
    micro_batch: int | None = None,
    group: distributed.Group | None = None,
    l2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the epoch's tensors in slices: (each step's mean loss, the number of skipped steps), on the
    device (no host sync). Without `scaler` and `ctx` it trains in fp32. With a process `group`, each process
    computes its share of every batch, and the losses are this process's shares (their sum over the group is
    each step's mean)."""
    scaler = scaler or torch.amp.GradScaler(users.device.type, enabled=False)
    ctx = ctx or contextlib.nullcontext()
    n = len(users)
    losses = torch.empty((n + batch_size - 1) // batch_size, device=users.device)
    skipped = torch.zeros((), device=users.device)
    for k, s in enumerate(range(0, n, batch_size)):
        e = min(s + batch_size, n)
        a, b, weight = (s, e, 1.0) if group is None else group.share(s, e)
        by_ddp = group is not None and group.by_ddp(e - s, micro_batch)  # the same answer in every process
        loss, skip = train_step(  # the epoch holds int32 ids (sampling.py); the step takes a batch's as int64
            model, optimizer, scaler, ctx, users[a:b].long(), items[a:b].long(), labels[a:b],
            micro_batch=micro_batch, group=group, weight=weight, by_ddp=by_ddp, l2=l2,
        )  # fmt: skip
        losses[k] = loss * weight
        skipped += skip
        if scheduler is not None:
            scheduler.step()
        if bar is not None:
            bar.update(e - s)
        # One host sync every DIVERGENCE_CHECK steps: a diverged run stops within them instead of training
        # on nans to the end of the epoch (a whole epoch of ML-20M).
        if (k + 1) % DIVERGENCE_CHECK == 0 and not bool(torch.isfinite(group.total(losses[k]) if group else losses[k])):
            losses[k + 1 :] = float("nan")
            break
    return losses, skipped


def epoch_mean(losses: torch.Tensor, n: int, batch_size: int) -> float:
    """The epoch's mean loss over samples from per-step means (the last step may be short). A host sync."""
    sizes = torch.full_like(losses, batch_size, dtype=torch.float64)
    sizes[-1] = n - batch_size * (len(losses) - 1)
    return float((losses.double() * sizes).sum() / n)


def run_epoch(cfg: Config, p: Parts, epoch: int, group, evaluation: Callable[[], dict], log) -> tuple[dict, Any]:
    """One epoch: fresh negatives and a shuffle, the steps, the evaluation; (its metrics row, logged, or where the
    loss diverged {"diverged": where}; its steps' mean losses, on the device)."""
    main = group is None or group.is_main
    p.model.train()
    t0 = time.perf_counter()
    users, items, labels = p.sampler.epoch()
    batch, micro, first = p.plan.batches[epoch], p.plan.micros[epoch], p.plan.starts[epoch]
    with tqdm(
        total=p.samples,
        disable=not (main and sys.stderr.isatty()),  # one bar, the first process's
        leave=False,
        unit="sample",
        unit_scale=True,
        mininterval=0.5,
        desc=f"Epoch {epoch}",
    ) as bar:
        losses, skipped = train_epoch(
            p.model, p.optimizer, users, items, labels, batch, bar, p.scheduler, p.scaler, p.ctx, micro, group,
            cfg.optim.l2,
        )  # fmt: skip
    if group is not None:  # each process's shares of the steps' losses, summed
        losses = group.total(losses)
    loss = epoch_mean(losses, p.samples, batch)  # sync point: the epoch is done
    skipped_steps = int(skipped)
    train_s = time.perf_counter() - t0
    if not math.isfinite(loss):
        step = int((~torch.isfinite(losses)).nonzero()[0])
        lr = p.lr * p.schedule(first + step)
        log(
            f"Diverged: the loss became {float(losses[step])} at epoch {epoch}, step {step} "
            f"(lr {lr:g}); stopping. Try a lower --lr, a warmup, or --optimizer lars/lamb."
        )
        return {"diverged": {"epoch": epoch, "step": step, "lr": lr}}, losses
    t1 = time.perf_counter()
    metrics = evaluation()
    val_s = time.perf_counter() - t1
    log_epoch(cfg, log, epoch, metrics, loss, train_s, val_s, p.samples, skipped_steps)
    return {
        "epoch": epoch,
        "loss": loss,
        **metrics,
        "train_s": train_s,
        "eval_s": val_s,
        "samples_per_s": p.samples / train_s,
        "skipped_steps": skipped_steps,
        "batch_size": batch,
        "peak_memory_mb": round(peak_memory_bytes(users.device) / 2**20),
        "lr": p.lr * p.schedule(p.plan.starts[epoch + 1] - 1),  # the lr of the epoch's last step
    }, losses


def log_epoch(cfg: Config, log, epoch: int, metrics: dict, loss: float, train_s, val_s, n, skipped: int) -> None:
    shown = ", ".join(
        f"{split}{p}_{m}@{kk} = {metrics[f'{split}{p}_{m}@{kk}']:.4f}"
        for split in ("", "valid_")
        for p in PROTOCOLS[cfg.eval.eval]
        for kk in cfg.eval.topk
        for m in ("HR", "NDCG")
        if f"{split}{p}_{m}@{kk}" in metrics
    )
    log(
        f"Epoch {epoch}: {shown}, loss = {loss:.4f}, "
        f"train_time = {train_s:.2f} s, val_time = {val_s:.2f} s, throughput = {n / train_s:.0f} samples/s"
        + (f", skipped_steps = {skipped} (fp16 overflow)" if skipped else "")
    )
