"""train(config) -> summary: one loop that reads top to bottom.

Per epoch: fresh negatives and a shuffle on the device, then batches as slices of device tensors. The epoch's
loss is summed on the device; the only host syncs are at the end of the epoch (loss, metrics) and inside the
sampler's rejection rounds. Every epoch appends one JSON line to <run>/metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from scalerec import checkpoint, distributed, run_folder
from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.config import FLOAT32_MAX, PROTOCOLS, Config
from scalerec.data import load_dataset
from scalerec.errors import OptionError, Terminated, UserError
from scalerec.files import FolderLock, WriteError, hold_folder, signals_held, write_atomic
from scalerec.find_batch import find_batch, peak_memory_bytes
from scalerec.metrics import evaluator
from scalerec.model import build_model, encode_rows, interact_rows, set_cpu_matmul, table_params
from scalerec.optim import build_optimizer, lr_factor, scaled_lr
from scalerec.precision import autocast_context, grad_scaler
from scalerec.run_folder import Claim
from scalerec.sampling import EpochSampler
from scalerec.threads import Threads

T = TypeVar("T")

# With fp16 loss scaling, a first step skipped for overflow makes LambdaLR warn that the scheduler stepped
# before the optimizer; that is expected (the schedule counts steps taken, skipped or not).
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def train_step(
    model, optimizer, scaler, ctx, users, items, labels, micro_batch: int | None = None, sync=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on a batch: (the batch's mean loss, 1 if fp16 loss scaling skipped the step else 0), both device
    tensors (no host sync). With `micro_batch`, the batch is computed in slices of that many samples whose
    gradients add up to the whole batch's (each slice's loss is its sum over the batch size): one optimizer step,
    the same gradient, but activations that stay in cache (or fit in device memory). Each distinct user and item
    is encoded once for the whole batch; each slice gathers its rows from the encodings as leaves of its own
    graph, and their gradients are added into one buffer per encoding (index_add), so that one backward takes
    them to the tables. Letting autograd do that per slice would cost a zeroed encoding-sized gradient per slice
    and gather (measured at ML-20M shape, batch 65536: a third of the step). `sync()`, where given, runs between
    the backward and the optimizer step (data-parallel: the processes' gradients summed)."""
    n = len(labels)
    chunk = min(micro_batch or n, n)
    optimizer.zero_grad(set_to_none=True)
    if chunk == n:
        with ctx:
            logits = model(users, items)
        total = F.binary_cross_entropy_with_logits(logits.float(), labels)
        scaler.scale(total).backward()
        total = total.detach()
    else:
        with ctx:
            (user, u_at), (item, i_at) = encode_rows(model, users, items)
        encodings = [t for t in user + item if t is not None]
        grads = [torch.zeros_like(t) for t in encodings]
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
                grad.index_add_(0, at[s : s + chunk], r.grad)
        torch.autograd.backward(encodings, grads)
    if sync is not None:
        sync()
    scaler.step(optimizer)  # unscales first, and skips the step if a gradient is inf/nan
    skipped = sum(scaler._found_inf_per_device(optimizer).values()) if scaler.is_enabled() else torch.zeros(())
    scaler.update()
    return total, skipped


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
        a, b, weight, sync = s, e, 1.0, None
        if group is not None:
            a, b, weight = group.share(s, e)
            sync = functools.partial(group.sum_gradients, model, weight)
        loss, skip = train_step(
            model, optimizer, scaler, ctx, users[a:b], items[a:b], labels[a:b], micro_batch=micro_batch, sync=sync
        )
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


def optimizer_for(cfg: Config, model: torch.nn.Module, lr: float) -> tuple[torch.optim.Optimizer, str]:
    o = cfg.optim
    return build_optimizer(
        o.optimizer, model, lr, o.momentum, o.nesterov, o.weight_decay, o.trust_coefficient, o.adapt_embeddings
    )


# Adam updates tables row by row (sparse gradients) where the tables hold at least this many parameters per sample
# of a batch: a dense step costs in proportion to the tables, a sparse one to the batch. benchmarks/step_speed.py
# on the 2-core EPYC, against fused dense Adam: ML-20M shape (32M table parameters) at batch 4096 (7,800 per
# sample): rows 2.3x faster; at batch 65536 (490 per sample) dense 1.05x faster; ML-1M shape at 4096 (460):
# dense 1.16x faster, at 8192 (230): dense 1.34x faster.
SPARSE_FROM_PARAMS_PER_SAMPLE = 2000


def build_run_model(cfg: Config, n_users: int, n_items: int, device: torch.device) -> torch.nn.Module:
    """The model as the config asks, with sparse table gradients where Adam should update rows."""
    o, m = cfg.optim, cfg.model
    sparse = o.sparse_embeddings
    if sparse is None:
        batch = cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 65536  # max: a large batch
        tables = table_params(m.model, n_users, n_items, m.factors, m.layers)
        # CPU only: measured there; on a GPU dense fused Adam is cheap, and coalescing sparse rows syncs the host
        rule = tables >= SPARSE_FROM_PARAMS_PER_SAMPLE * batch
        sparse = device.type == "cpu" and o.optimizer == "adam" and rule
    model = build_model(m.model, n_users, n_items, m.factors, m.layers, m.dropout, sparse).to(device)
    if device.type == "cpu":  # elsewhere the setting places nothing
        set_cpu_matmul(model, cfg.train.cpu_matmul)
    return model


# On the CPU, batches above this are computed in micro-batches of this size: activations that stay in the cache
# and a peak that does not grow with the batch. benchmarks/step_speed.py, ML-1M shape at batch 65536: 1.74x the
# samples/s of the whole batch at once (dense tables) while glibc mapped large blocks fresh; since malloc keeps
# them (allocator.py), the same speed (283,310 against 276,231 samples/s) in 788 MB against 1,157.
CPU_MICRO_BATCH = 8192


def micro_batch_for(cfg: Config, device: torch.device, batch: int | None) -> int | None:
    """--micro-batch, or by default CPU_MICRO_BATCH on the CPU where the batch is larger (none on a GPU)."""
    if cfg.train.micro_batch is not None:
        return cfg.train.micro_batch
    if device.type == "cpu" and (batch is None or batch > CPU_MICRO_BATCH):
        return CPU_MICRO_BATCH
    return None


# What a run holds beside its steps, per sample of an epoch: the epoch's users, items and labels (20 bytes) and the
# heap its draw leaves (negatives, their membership test, the shuffle). The search's trial steps run without them,
# so on the CPU it leaves room for them. Measured on MovieLens-100K (495,285 samples per epoch): a run's peak was
# 26-27 MB (53-55 bytes a sample) above the trial step's at the same batch (1024: 427 / 401 MB; 4096: 458 / 431).
EPOCH_BYTES_PER_SAMPLE = 64


def largest_batch(
    cfg: Config, model: torch.nn.Module, n_users: int, n_items: int, samples: int, device: torch.device, log
) -> int:
    """--batch-size max: the largest batch (at most an epoch) that trains within the memory budget."""
    budget = int(cfg.train.memory_budget_gb * 2**30) if cfg.train.memory_budget_gb else None
    found = find_batch(
        model,
        lambda m: optimizer_for(cfg, m, cfg.optim.lr)[0],
        train_step,
        n_users,
        n_items,
        samples,
        device,
        lambda: autocast_context(cfg.train.precision, device),
        lambda: grad_scaler(cfg.train.precision, device),
        micro_batch_for(cfg, device, None),
        budget,
        EPOCH_BYTES_PER_SAMPLE * samples,
    )
    tried = ", ".join(f"{b}: {'out of memory' if p is None else f'{p / 2**20:.0f} MB'}" for b, p in found.tried)
    per = f", {found.per_sample_bytes:,.0f} bytes per sample" if found.per_sample_bytes else ""
    where = "GPU memory" if device.type == "cuda" else "peak process memory"
    log(
        f"Largest batch: {found.batch} (of {samples:,} samples per epoch), {where} {found.peak_bytes / 2**30:.2f} GB"
        f"{per}; tried {tried}"
    )
    return found.batch


def find_largest_batch(cfg: Config, log: Callable[[str], None] = print) -> int:
    """`scalerec find-batch`: load the data, build the model, search."""
    log(Threads(cfg.train.threads).said)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        keep_large_blocks_in_heap()
    ds = load_dataset(cfg.data, log)
    torch.manual_seed(cfg.train.seed)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size="max"))  # the model max trains
    model = build_run_model(cfg, ds.n_users, ds.n_items, device)
    samples = len(ds.train_users) * (1 + cfg.train.negatives)
    return largest_batch(cfg, model, ds.n_users, ds.n_items, samples, device, log)


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    resume: Path | None = None,
    adopt: bool = False,
    tune_malloc: bool = True,
) -> dict:
    """Train and evaluate every epoch; returns the summary also written to <run>/summary.json. With `resume` (a
    run folder, whose config.json `cfg` is), the run continues after the last epoch its checkpoint holds. With
    `adopt` (a sweep run again), or under torchrun --max-restarts (a worker group restarted), an unfinished run of
    these same options in --output is continued from its checkpoint, or started over where it has none. Under
    torchrun with several processes, data-parallel (distributed.py): every process trains its share of each batch
    and evaluates (the same weights, the same metrics); the first logs and writes the run folder."""
    log = _quiet_on_broken_pipe(log)
    restarts = distributed.restarts_allowed()
    if restarts and resume is None and not cfg.train.output:
        raise OptionError("torchrun --max-restarts: give --output, the folder a restarted worker group continues from")
    group, device = distributed.setup(resolve_device(cfg.train.device))
    try:
        if group is not None:
            if cfg.train.batch_size == "max":
                raise UserError("--batch-size max: not with several processes; find the batch with one first")
            if cfg.optim.sparse_embeddings:
                raise UserError("--sparse-embeddings: not with several processes, which sum dense gradients")
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, sparse_embeddings=False))
            log = log if group.is_main else lambda s: None
        threads = Threads(cfg.train.threads, watch=device.type == "cpu")
        if device.type == "cpu" and tune_malloc:
            keep_large_blocks_in_heap()  # activations reuse heap pages instead of page-faulting fresh ones
        adopt = (adopt or restarts > 0) and resume is None  # --resume names a run to continue, never a finished one
        held = _on_main(group, lambda: run_folder.claim(cfg, resume, adopt), Claim.shared)
        try:
            return _train(cfg, log, held, device, group, threads, adopt=adopt)
        finally:
            held.release()
    finally:
        distributed.teardown(group)


def _quiet_on_broken_pipe(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, silent where its output is gone (a closed pipe, torchrun stopped before its processes): the run's
    files and summary matter more than its console."""

    def say(text: str) -> None:
        try:
            log(text)
        except BrokenPipeError:
            pass

    return say


def _on_main(group: distributed.Group | None, work: Callable[[], T], shared: Callable[[T], Any] = lambda r: r) -> T:
    """work() on the first process; every other process gets shared(its result), or stops with its error."""
    if group is None:
        return work()
    result, error = None, None
    if group.is_main:
        try:
            result = work()
        except Exception as e:  # said by the first process; the others stop with it
            error = e
    sent = (None, str(error)) if error is not None else (shared(result) if group.is_main else None, None)
    try:
        got, message = group.broadcast(sent)
    except distributed.PeerLost:
        if isinstance(result, Claim):  # a folder claimed for a run that will not start
            result.release()
        raise
    if error is not None:
        raise error
    if message is not None:  # the first process's, said by it
        echoed = UserError(message)
        echoed.said_here = False
        raise echoed
    return result if group.is_main else got


def _checkpoint_of(cfg: Config, held: Claim, adopt: bool) -> dict | None:
    """The checkpoint a resumed run continues from, checked to be this run's (its options, not diverged, epochs
    left) before anything is written; None for a new run."""
    if not held.resume:
        return None
    run_dir = held.run_dir
    if (run_folder.read_summary(run_dir / run_folder.SUMMARY) or {}).get("state") == "diverged":
        raise UserError(f"{run_dir}: diverged; resuming would replay the same steps (train anew, e.g. lower --lr)")
    saved = checkpoint.load(run_dir)
    checkpoint.check_run(saved, cfg, run_dir)
    if len(saved["history"]) >= cfg.train.epochs and not adopt:
        done = "its epoch is" if cfg.train.epochs == 1 else f"all {cfg.train.epochs} epochs are"
        raise UserError(f"{run_dir}: {done} done; nothing to resume")
    return saved


def _train(cfg: Config, log: Callable[[str], None], held: Claim, device, group, threads: Threads, adopt: bool) -> dict:
    main = group is None or group.is_main  # the process that writes the run folder
    run_dir, run_cfg = held.run_dir, cfg  # run_cfg: the options as config.json holds them
    started = time.time()
    saved = _on_main(group, lambda: _checkpoint_of(cfg, held, adopt))  # every check before any write
    if saved is not None:
        cfg = dataclasses.replace(cfg, data=checkpoint.data_config(saved, run_dir))
    ds = load_dataset(cfg.data, log)
    if saved is not None:
        checkpoint.check_data(saved, ds, run_dir)
    fingerprint = checkpoint.fingerprint(ds) if cfg.train.checkpoint and main else None
    log(ds.summary())
    for note in ds.notes:
        log(f"Note: {note}")
    log(threads.said)

    torch.manual_seed(cfg.train.seed)
    o, t = cfg.optim, cfg.train
    model = build_run_model(cfg, ds.n_users, ds.n_items, device)
    if group is not None:
        group.broadcast_weights(model)
    sampler = EpochSampler(
        ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, t.negatives, device, t.seed, t.shuffle
    )
    n = sampler.samples_per_epoch
    bs = t.batch_size
    if bs == "max":
        bs = saved["batch_size"] if saved else largest_batch(cfg, model, ds.n_users, ds.n_items, n, device, log)
    lr = scaled_lr(o.base_lr or o.lr, o.base_batch or bs, bs, o.lr_scaling) if o.lr_scaling != "none" else o.lr
    if not lr <= FLOAT32_MAX:
        raise OptionError(f"the lr scaled to batch {bs} is {lr:g}, beyond float32's range: lower --base-lr")
    optimizer, groups = optimizer_for(cfg, model, lr)
    e = cfg.eval
    evaluation, hr_key = evaluator(ds, model, device, PROTOCOLS[e.eval], e.topk, e.eval_batch_size, log)
    steps = (n + bs - 1) // bs
    warmup_steps = o.warmup_epochs * steps

    def schedule(step: int) -> float:  # a pure function of the global step
        return lr_factor(step, warmup_steps, cfg.train.epochs * steps, o.warmup, o.decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    micro = micro_batch_for(cfg, device, bs)
    ctx, scaler = autocast_context(cfg.train.precision, device), grad_scaler(cfg.train.precision, device)
    total = cfg.train.epochs * steps
    points = sorted({round(i * (total - 1) / 199) for i in range(200)})  # the schedule, for plots and notes
    _log_setup(cfg, log, model, device, bs, micro, n, steps, run_dir, groups, lr, [lr * schedule(s) for s in points])

    best, history = {"epoch": -1, hr_key: -1.0}, []
    if saved is not None and saved["history"] and hr_key not in saved["best"]:
        raise UserError(f"{run_dir / checkpoint.FILE}: 'best' has no {hr_key} (a damaged or foreign checkpoint)")
    if saved is not None:  # last, after everything above has drawn its random numbers, as in the run itself
        _restore(saved, run_dir, model, optimizer, scheduler, scaler, sampler, device)
        history, best = saved["history"], saved["best"]
        log(f"Resuming {run_dir} at epoch {len(history)} of {cfg.train.epochs} (best so far: epoch {best['epoch']})")
    if main:
        held.clean()
    if main and saved is None:
        write_atomic(run_dir / run_folder.CONFIG, run_cfg.to_json() + "\n")
    if main:  # on resume: the checkpoint's epochs, without any line of an epoch that ran after it
        write_metrics(run_dir, history)
    state, error, stop = "finished", None, None  # stop: Ctrl-C, SIGTERM or a failure, raised once the summary says so
    try:
        for epoch in range(len(history), cfg.train.epochs):
            model.train()
            t0 = time.perf_counter()
            users = items = labels = None  # the last epoch's tensors go before the next is drawn: 20 bytes a sample
            users, items, labels = sampler.epoch()
            with tqdm(
                total=n,
                disable=not (main and sys.stderr.isatty()),  # one bar, the first process's
                leave=False,
                unit="sample",
                unit_scale=True,
                mininterval=0.5,
                desc=f"Epoch {epoch}",
            ) as bar:
                losses, skipped = train_epoch(
                    model, optimizer, users, items, labels, bs, bar, scheduler, scaler, ctx, micro, group
                )
            if group is not None:  # each process's shares of the steps' losses, summed
                losses = group.total(losses)
            epoch_loss = epoch_mean(losses, n, bs)  # sync point: the epoch is done
            skipped_steps = int(skipped)
            train_s = time.perf_counter() - t0
            if not math.isfinite(epoch_loss):
                step = int((~torch.isfinite(losses)).nonzero()[0])
                at = epoch * steps + step
                log(
                    f"Diverged: the loss became {float(losses[step])} at epoch {epoch}, step {step} "
                    f"(lr {lr * schedule(at):g}); stopping. Try a lower --lr, a warmup, or --optimizer lars/lamb."
                )
                state, error = "diverged", {"epoch": epoch, "step": step, "lr": lr * schedule(at)}
                break

            t1 = time.perf_counter()
            metrics = evaluation()
            val_s = time.perf_counter() - t1
            _log_epoch(cfg, log, epoch, metrics, epoch_loss, train_s, val_s, n, skipped_steps)
            new_best = {"epoch": epoch, **metrics} if metrics[hr_key] > best[hr_key] else best
            if new_best is not best:
                log(f"New best {hr_key}!")
            row = {
                "epoch": epoch,
                "loss": epoch_loss,
                **metrics,
                "train_s": train_s,
                "eval_s": val_s,
                "samples_per_s": n / train_s,
                "skipped_steps": skipped_steps,
                "batch_size": bs,
                "peak_memory_mb": round(peak_memory_bytes(device) / 2**20),
                "lr": lr * schedule((epoch + 1) * steps - 1),  # the lr of the epoch's last step
                "best_epoch": new_best["epoch"],
            }
            with signals_held():  # the checkpoint, the metrics and the history agree, whatever stops the run
                if main and cfg.train.checkpoint:
                    state_now = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "random": checkpoint.random_state(device, sampler.generator),
                        "batch_size": bs,
                        "history": [*history, row],
                        "best": new_best,
                        "data": checkpoint.absolute(cfg.data),
                        "data_fingerprint": fingerprint,
                        "config": run_cfg.to_dict(),
                    }
                    checkpoint.save(run_dir, state_now)
                history.append(row)
                best = new_best
                if main:
                    write_metrics(run_dir, history)
            if changed := threads.adjust(epoch):
                log(changed)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the epochs so far stay logged, summary.json says it stopped
        state, stop = "interrupted", e
        if group is not None and isinstance(e, Terminated):
            distributed.count_term()
            if group.stopped() is False:  # torchrun stopped this process because another one ended
                stop = distributed.PeerLost(
                    f"process {group.rank}: stopped by torchrun: another process of the run ended"
                )
                state, error = "failed", str(stop)
        if state == "interrupted":
            log(f"Interrupted in epoch {len(history)}; {len(history)} epoch(s) logged in {run_dir}")
    except distributed.PeerLost as e:  # a process of the run lost; or the job stopped, one process ending first
        state, error, stop = "failed", str(e), e
        if group.stopped():
            state, error, stop = "interrupted", None, Terminated()
    except Exception as e:  # a full disk (WriteError), out of memory, ...: the summary says so, then it is raised
        state, error, stop = "failed", (str(e).strip().splitlines() or [type(e).__name__])[0], e

    lost_first = not main and isinstance(stop, distributed.PeerLost)
    takeover = _left_by_first(run_dir, started) if lost_first else None
    if lost_first:  # the process that writes the summary says it; where none can, one process per machine
        stop.said_here = True if takeover is not None else (False if (run_dir / run_folder.CONFIG).is_file() else None)
    if takeover is not None:  # the summary of what the first process committed
        history, best = _committed(run_dir)
    summary = {
        "run_dir": str(run_dir),
        "dataset": ds.name,
        "state": state,
        "diverged_at": error if state == "diverged" else None,
        "lr": lr,
        "best": best if history else None,
        **_totals(history, n),
        "batch_size": bs,
        "steps_per_epoch": steps,
        "lr_schedule": [[step, lr * schedule(step)] for step in points],
        **({"error": error} if state == "failed" else {}),
    }
    if main or takeover is not None:
        try:
            write_atomic(run_dir / run_folder.SUMMARY, json.dumps(summary, indent=2) + "\n")
        except WriteError as e:
            if stop is None:
                raise
            log(f"No summary: {e}")
    if takeover is not None:
        takeover.close()
    if stop is not None:
        raise stop
    if history:
        ndcg = hr_key.replace("HR@", "NDCG@")
        shown = f"{hr_key} = {best[hr_key]:.4f}, {ndcg} = {best[ndcg]:.4f}"
        log(f"Best {shown} at epoch {best['epoch']}; results in {run_dir}")
    return summary


def _totals(history: list[dict], n: int) -> dict[str, Any]:
    """The summary's epochs, seconds and mean rate over the epochs logged."""
    train_s = sum(r["train_s"] for r in history)
    return {
        "epochs": len(history),
        "train_s": train_s,
        "eval_s": sum(r["eval_s"] for r in history),
        "mean_samples_per_s": n * len(history) / train_s if history else None,
    }


def _committed(run_dir: Path) -> tuple[list[dict], dict]:
    """(the epochs, the best epoch) that a run folder's metrics.jsonl holds."""
    history = run_folder.read_metrics(run_dir / run_folder.METRICS)
    if not history:
        return history, {}
    row = next((r for r in history if r["epoch"] == history[-1].get("best_epoch")), history[-1])
    return history, {"epoch": row["epoch"], **{k: v for k, v in row.items() if "@" in k}}


def _left_by_first(run_dir: Path, started: float) -> FolderLock | None:
    """The run folder's lock, where the first process of a data-parallel run died without a word: its lock is
    free, and the folder (this machine sees it) holds no summary written since this run started. The process
    that takes it writes the summary in its place."""
    if not (run_dir / run_folder.CONFIG).is_file():  # another machine's folder
        return None
    try:
        lock = hold_folder(run_dir)
    except (UserError, OSError):  # held: the first process is alive, and writes its own summary
        return None
    if _summary_since(run_dir, started):
        lock.close()
        return None
    return lock


def _summary_since(run_dir: Path, started: float) -> bool:
    summary = run_dir / run_folder.SUMMARY
    return summary.is_file() and summary.stat().st_mtime >= started


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per epoch, written whole (atomically): never a line cut short."""
    write_atomic(run_dir / run_folder.METRICS, "".join(json.dumps(row) + "\n" for row in history))


def _log_setup(cfg: Config, log, model, device, bs, micro, n, steps, run_dir, groups, lr, lrs: list[float]) -> None:
    """The run's model, batch, optimizer and schedule, and notes on what would surprise."""
    o = cfg.optim
    rule = (
        f" ({o.lr_scaling} rule: {o.base_lr or o.lr:g} at batch {o.base_batch or bs})" if o.lr_scaling != "none" else ""
    )
    log(
        f"Model {cfg.model.model}: {sum(p.numel() for p in model.parameters()):,} parameters on {device}; "
        f"batch {bs}{f' in micro-batches of {micro}' if micro and micro < bs else ''}, "
        f"{n:,} samples per epoch ({steps} steps); run folder {run_dir}"
    )
    log(
        f"Optimizer {groups}; lr = {lr:g}{rule}; warmup {o.warmup}"
        f"{f' over {o.warmup_epochs:g} epochs' if o.warmup != 'none' else ''}; decay {o.decay}; "
        f"precision {cfg.train.precision}"
    )
    if bs > n:
        log(f"Note: batch {bs:,} is larger than the epoch's {n:,} samples: each epoch is one step, of the whole epoch")
    if device.type == "cpu" and cfg.train.precision == "fp16":  # measured: 10k against 123k samples/s (2-core EPYC)
        log("Note: fp16 has no fast kernels on the CPU: it runs about 10x slower than fp32; bf16 or fp32 are faster")
    if float(np.float32(max(lrs))) == 0.0:
        log(f"Warning: the lr stays below {max(lrs):.3g} for the whole run, 0 in float32: the weights will not move")
    elif o.warmup != "none" and o.warmup_epochs > cfg.train.epochs:
        log(
            f"Note: the warmup ({o.warmup_epochs:g} epochs) is longer than the run ({cfg.train.epochs}): the lr "
            f"reaches {max(lrs):.3g} at most, not {lr:g}"
        )


def _log_epoch(cfg: Config, log, epoch: int, metrics: dict, loss: float, train_s, val_s, n, skipped: int) -> None:
    shown = ", ".join(
        f"{p}_{m}@{kk} = {metrics[f'{p}_{m}@{kk}']:.4f}"
        for p in PROTOCOLS[cfg.eval.eval]
        for kk in cfg.eval.topk
        for m in ("HR", "NDCG")
    )
    log(
        f"Epoch {epoch}: {shown}, loss = {loss:.4f}, "
        f"train_time = {train_s:.2f} s, val_time = {val_s:.2f} s, throughput = {n / train_s:.0f} samples/s"
        + (f", skipped_steps = {skipped} (fp16 overflow)" if skipped else "")
    )


def _restore(saved: dict, run_dir: Path, model, optimizer, scheduler, scaler, sampler, device) -> None:
    """The checkpoint's weights, optimizer, schedule, loss scale and random streams, each checked to fit."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        checkpoint.set_random_state(saved["random"], device, sampler.generator)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # a damaged or hand-made checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{run_dir / checkpoint.FILE}: its state does not fit this run's model and optimizer ({first})"
        ) from None
