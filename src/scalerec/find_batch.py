"""The largest batch that trains: `--batch-size max` and `scalerec find-batch`.

Trial steps run on a copy of the model and a fresh optimizer, on random ids, with the run's precision and
micro-batches, so that the search leaves the run's initialisation and random streams untouched.
- On a GPU: double the batch until a step runs out of memory (caught, the cache emptied) or its peak exceeds
  the budget, then bisect between the last batch that fit and the first that did not.
- On the CPU running out of memory kills the process instead of raising, so the search never gets there: it
  measures the process's peak memory (ru_maxrss) after steps at doubling batches, fits peak = fixed + per-sample
  x batch to the last two, stops before the fit predicts more than the budget, and solves the fit for the budget.
In both cases the batch is at most one epoch's samples and is rounded down to a multiple of 1024 where it
exceeds 1024.
"""

from __future__ import annotations

import contextlib
import copy
import resource
from collections.abc import Callable
from dataclasses import dataclass

import torch

from scalerec.errors import UserError

START = 1024


@dataclass
class Found:
    batch: int
    peak_bytes: int  # measured (GPU) or predicted by the fit (CPU) at that batch
    per_sample_bytes: float | None  # the CPU fit's slope
    tried: list[tuple[int, int | None]]  # (batch, peak bytes or None for out of memory)


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_memory_bytes(device: torch.device) -> int:
    """The run's peak so far: allocated GPU memory, or the process's resident memory on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()


def round_batch(batch: int) -> int:
    return batch if batch <= START else batch // START * START


def search_gpu(fits: Callable[[int], int | None], limit: int) -> Found:
    """`fits(b)` returns the peak bytes of a step at batch b, or None where it ran out of memory or over budget."""
    tried: list[tuple[int, int | None]] = []
    good, bad, b = 0, None, min(START, limit)
    while True:
        peak = fits(b)
        tried.append((b, peak))
        if peak is None:
            bad = b
            break
        good = b
        if b >= limit:
            break
        b = min(2 * b, limit)
    if good == 0:
        raise UserError(f"even a batch of {tried[0][0]} does not fit in the device memory")
    while bad is not None and bad - good > max(1, good // 16):  # bisect to 1/16 of the batch
        mid = round_batch((good + bad) // 2)
        if mid <= good:
            break
        peak = fits(mid)
        tried.append((mid, peak))
        good, bad = (mid, bad) if peak is not None else (good, mid)
    return Found(good, dict(tried)[good] or 0, None, tried)


def search_cpu(step_peak: Callable[[int], int], budget: int, limit: int) -> Found:
    """`step_peak(b)` runs a step at batch b and returns the process's peak memory since it started. The peak
    only grows once a step needs more than any earlier moment of the process (loading the data, say), so the
    slope is fitted only to two points that both raised it; until then the batch keeps doubling."""
    tried: list[tuple[int, int | None]] = []
    peaks: list[int] = []
    fixed, per = 0.0, 0.0
    b = min(START, limit)
    while True:
        peak = step_peak(b)
        if peak > budget:
            raise UserError(
                f"a step at batch {b} raised the process's peak memory to {peak / 2**30:.2f} GB, over the memory "
                f"budget of {budget / 2**30:.2f} GB; raise --memory-budget-gb or use --micro-batch"
            )
        tried.append((b, peak))
        peaks.append(peak)
        if len(peaks) >= 3 and peaks[-3] < peaks[-2] < peaks[-1]:
            (b0, p0), (b1, p1) = tried[-2], tried[-1]
            per = (p1 - p0) / (b1 - b0)
            fixed = p1 - per * b1
        if b >= limit or (per > 0 and fixed + per * min(2 * b, limit) > budget):
            break
        b = min(2 * b, limit)
    if per == 0:  # the peak never grew with the batch: every batch up to the limit fits
        return Found(b, peaks[-1], None, tried)
    best = max(b, round_batch(min(limit, int((budget - fixed) / per))))
    return Found(best, int(fixed + per * best), per, tried)


def find_batch(
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    step: Callable,  # train.train_step
    n_users: int,
    n_items: int,
    limit: int,
    device: torch.device,
    ctx_factory: Callable[[], contextlib.AbstractContextManager],
    scaler_factory: Callable[[], torch.amp.GradScaler],
    micro_batch: int | None,
    budget: int | None,
) -> Found:
    """The largest batch (at most `limit`) at which `step` trains a copy of `model` within the memory budget."""
    trial_model = copy.deepcopy(model)
    optimizer = make_optimizer(trial_model)
    g = torch.Generator().manual_seed(0)

    def run(b: int) -> None:
        users = torch.randint(0, n_users, (b,), generator=g).to(device)
        items = torch.randint(0, n_items, (b,), generator=g).to(device)
        labels = torch.ones(b, device=device)
        step(trial_model, optimizer, scaler_factory(), ctx_factory(), users, items, labels, micro_batch=micro_batch)
        del users, items, labels

    try:
        if device.type == "cuda":

            def fits(b: int) -> int | None:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                try:
                    run(b)
                    torch.cuda.synchronize(device)
                except torch.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                    return None
                peak = torch.cuda.max_memory_allocated(device)
                return peak if budget is None or peak <= budget else None

            return search_gpu(fits, limit)

        def step_peak(b: int) -> int:
            run(b)
            return peak_rss_bytes()

        return search_cpu(step_peak, budget if budget is not None else int(0.8 * available_bytes()), limit)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
