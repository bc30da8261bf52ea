"""train(config) -> summary: the run from its checks to its summary, one loop that reads top to bottom.

Per epoch: fresh negatives and a shuffle on the device, then batches as slices of device tensors (epoch.py). The
epoch's loss is summed on the device; the only host syncs are at the end of the epoch (loss, metrics) and inside
the sampler's rejection rounds. Each epoch is committed whole: its checkpoint, its line of metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from scalerec import board, checkpoint, distributed, pretrain, run_folder
from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.assembly import Parts, assemble, log_setup, resolve_device
from scalerec.config import Config
from scalerec.data.loading import load_dataset
from scalerec.epoch import run_epoch
from scalerec.errors import OptionError, Terminated, UserError
from scalerec.files import WriteError, signals_held, write_atomic
from scalerec.metrics import run_evaluator
from scalerec.run_folder import Claim
from scalerec.threads import Threads

# With fp16 loss scaling, a first step skipped for overflow makes LambdaLR warn that the scheduler stepped
# before the optimizer; that is expected (the schedule counts steps taken, skipped or not).
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    resume: Path | None = None,
    adopt: bool = False,
    tune_malloc: bool = True,
    pretrained: bool = False,
) -> dict:
    """Train and evaluate every epoch; returns the summary also written to <run>/summary.json. With `resume` (a
    run folder, whose config.json `cfg` is), the run continues after the last epoch its checkpoint holds. With
    `adopt` (a sweep run again), or under torchrun --max-restarts (a worker group restarted), an unfinished run of
    these same options in --output is continued from its checkpoint, or started over where it has none. Under
    torchrun with several processes, data-parallel (distributed.py): every process trains its share of each batch
    and evaluates (the same weights, the same metrics); the first logs and writes the run folder. With --pretrain,
    its stages first (pretrain.py), then NeuMF itself (`pretrained`)."""
    log = _quiet_on_broken_pipe(log)
    if cfg.model.pretrain and not pretrained:
        from scalerec.pretrain import train_with_pretraining

        return train_with_pretraining(cfg, log, resume, tune_malloc)
    restarts = distributed.restarts_allowed()
    if restarts and resume is None and not cfg.train.output:
        raise OptionError("torchrun --max-restarts: give --output, the folder a restarted worker group continues from")
    if cfg.train.tensorboard:
        board.check()
    group, device = distributed.setup(resolve_device(cfg.train.device))
    matmul = torch.get_float32_matmul_precision()  # the run sets its own (--matmul-precision); the caller's after
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
        held = distributed.on_main(group, lambda: run_folder.claim(cfg, resume, adopt), Claim.shared, Claim.release)
        try:
            return _train(cfg, log, held, device, group, threads, adopt=adopt)
        finally:
            held.release()
    finally:
        distributed.teardown(group)
        torch.set_float32_matmul_precision(matmul)


def _quiet_on_broken_pipe(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, silent where its output is gone (a closed pipe, torchrun stopped before its processes): the run's
    files and summary matter more than its console."""

    def say(text: str) -> None:
        try:
            log(text)
        except BrokenPipeError:
            pass

    return say


def _train(cfg: Config, log: Callable[[str], None], held: Claim, device, group, threads: Threads, adopt: bool) -> dict:
    """The run: its checks, data and parts, then the epochs, each committed whole; then its summary."""
    main = group is None or group.is_main  # the process that writes the run folder
    run_dir, run_cfg, started = held.run_dir, cfg, time.time()  # run_cfg: the options as config.json holds them
    saved = distributed.on_main(group, lambda: checkpoint.to_resume(cfg, held, adopt))  # every check before any write
    if saved is not None:
        cfg = dataclasses.replace(cfg, data=checkpoint.data_config(saved, run_dir))
    ds = load_dataset(cfg.data, log)  # one process prepares uncached data, the others wait and read it (cached)
    if saved is not None:
        checkpoint.check_data(saved, ds, run_dir)
    fingerprint = checkpoint.fingerprint(ds) if main else None
    for line in [ds.summary(), *(f"Note: {note}" for note in ds.notes), threads.said]:
        log(line)

    found = saved["batch_size"] if saved and cfg.train.batch_size == "max" else None  # the batch max found
    p = assemble(cfg, ds, device, group, found, log)
    evaluation, hr_key = run_evaluator(ds, p.model, device, cfg.eval, log)
    log_setup(cfg, log, p, device, run_dir, group)
    best, history, kept = {"epoch": -1, hr_key: -1.0}, [], None  # kept: the best epoch's weights
    if saved is None:  # --init-from, --pretrain: weights only, no random number drawn
        pretrain.start(p.model, pretrain.sources(cfg, run_dir), ds, log)
    else:  # last, after everything above has drawn its random numbers, as in the run itself
        history, best = checkpoint.restore_run(saved, run_dir, p, device, hr_key, cfg.train.seed, log)
        log(f"Resuming {run_dir} at epoch {len(history)} of {cfg.train.epochs} (best so far: epoch {best['epoch']})")
    if main:
        held.clean()
        if saved is None:
            write_atomic(run_dir / run_folder.CONFIG, run_cfg.to_json() + "\n")
        if not (run_dir / run_folder.DATA).is_file():  # the ids and split the model needs, whatever the cache holds
            ds.save(run_dir / run_folder.DATA)
        run_folder.write_metrics(run_dir, history)  # on resume: the checkpoint's epochs, and no later line
        if saved is not None:
            kept = checkpoint.restore_best(saved, p.model, run_dir, run_cfg, fingerprint)
    extra = {"data": checkpoint.absolute(cfg.data), "data_fingerprint": fingerprint}
    events = board.Board(run_dir, p) if main and cfg.train.tensorboard else None  # TensorBoard's

    state, error, stop = "finished", None, None  # stop: Ctrl-C, SIGTERM or a failure, raised once the summary says so
    try:
        for epoch in range(len(history), cfg.train.epochs):
            if cfg.train.patience and epoch - 1 - best["epoch"] >= cfg.train.patience:  # a resumed run that had stopped
                break
            row, losses = run_epoch(cfg, p, epoch, group, evaluation, log)
            if "diverged" in row:
                state, error = "diverged", row["diverged"]
                if events is not None:  # the steps that led there
                    events.diverged(epoch, losses, row["diverged"]["step"])
                break
            new_best = _best_after(row, best, hr_key, log)
            row["best_epoch"] = new_best["epoch"]
            kept = checkpoint.weights_copy(p.model) if main and new_best is not best else kept
            with signals_held():  # the checkpoint, best.pt, the metrics and the history agree, whatever stops the run
                if main and cfg.train.checkpoint:
                    earlier = {"best_model": kept} if kept is not None and new_best["epoch"] != epoch else {}
                    now = checkpoint.state(p, device, [*history, row], new_best, run_cfg, {**extra, **earlier})
                    checkpoint.save(run_dir, now)
                if main and new_best is not best:
                    checkpoint.save_best(run_dir, kept, new_best, run_cfg, fingerprint)
                history.append(row)
                best = new_best
                if main:
                    run_folder.write_metrics(run_dir, history)
                if events is not None:
                    events.epoch(row, losses)
            if changed := threads.adjust(epoch):
                log(changed)
            if cfg.train.patience and epoch - best["epoch"] >= cfg.train.patience and epoch + 1 < cfg.train.epochs:
                log(f"Stopping early: no better {hr_key} in {cfg.train.patience} epochs (--patience)")
                break
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the epochs so far stay logged, summary.json says it stopped
        state, error, stop = _stopped(e, group)
        if state == "interrupted":
            log(f"Interrupted in epoch {len(history)}; {len(history)} epoch(s) logged in {run_dir}")
    except distributed.PeerLost as e:  # a process of the run lost; or the job stopped, one process ending first
        state, error, stop = ("interrupted", None, Terminated()) if group.stopped() else ("failed", str(e), e)
    except Exception as e:  # a full disk (WriteError), out of memory, ...: the summary says so, then it is raised
        state, error, stop = "failed", (str(e).strip().splitlines() or [type(e).__name__])[0], e
    if events is not None:
        events.close()
    outcome = {"state": state, "error": error, "stop": stop, "started": started, "main": main}
    return _finish(cfg, log, run_dir, ds, p, history, best, hr_key, outcome)


def _best_after(row: dict, best: dict, hr_key: str, log: Callable[[str], None]) -> dict:
    """The best epoch after an epoch's metrics `row`: its own metrics where its `hr_key` beats `best`'s (said)."""
    if row[hr_key] > best[hr_key]:
        log(f"New best {hr_key}!")
        return {"epoch": row["epoch"], **{k: v for k, v in row.items() if "@" in k}}
    return best


def _stopped(e: KeyboardInterrupt, group) -> tuple[str, str | None, BaseException]:
    """(state, error, what to raise) after Ctrl-C or SIGTERM: interrupted; under torchrun, failed where it stopped
    this process because another one ended."""
    if group is not None and isinstance(e, Terminated):
        distributed.count_term()
        if group.stopped() is False:
            lost = distributed.PeerLost(f"process {group.rank}: stopped by torchrun: another process of the run ended")
            return "failed", str(lost), lost
    return "interrupted", None, e


def _finish(cfg: Config, log, run_dir: Path, ds, p: Parts, history: list, best: dict, hr_key: str, end: dict) -> dict:
    """The run's summary, written to summary.json (by the first process, or one that takes over from it where it
    died); then what stopped the run is raised, or the summary returned."""
    state, error, stop = end["state"], end["error"], end["stop"]
    lost_first = not end["main"] and isinstance(stop, distributed.PeerLost)
    takeover = run_folder.left_by_first(run_dir, end["started"]) if lost_first else None
    if lost_first:  # the process that writes the summary says it; where none can, one process per machine
        stop.said_here = True if takeover is not None else (False if (run_dir / run_folder.CONFIG).is_file() else None)
    if takeover is not None:  # the summary of what the first process committed
        history, best = run_folder.committed(run_dir)
    summary = {
        "run_dir": str(run_dir),
        "dataset": ds.name,
        "state": state,
        "diverged_at": error if state == "diverged" else None,
        "lr": p.lr,
        "best": best if history else None,
        **run_folder.totals(history, p.samples),
        "batch_size": p.batch,
        "steps_per_epoch": p.steps,
        **({"epoch_starts": p.plan.starts} if p.plan.grows else {}),  # --batch-schedule's steps
        "lr_schedule": [[step, p.lr * p.schedule(step)] for step in p.schedule_points()],
        **({"error": error} if state == "failed" else {}),
    }
    if end["main"] or takeover is not None:
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
        test = hr_key.removeprefix("valid_")  # the test metrics at the epoch chosen (on validation, or on them)
        ndcg = test.replace("HR@", "NDCG@")
        chosen = f" (chosen on {hr_key} = {best[hr_key]:.4f})" if hr_key != test else ""
        shown = f"{test} = {best[test]:.4f}, {ndcg} = {best[ndcg]:.4f}"
        log(f"Best epoch {best['epoch']}{chosen}: test {shown}; results in {run_dir}")
    return summary
