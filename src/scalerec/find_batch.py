"""The largest batch that trains: `--batch-size max` and `scalerec find-batch`.

Trial steps run on a copy of the model and a fresh optimizer, on random ids, with the run's precision and
micro-batches, inside a forked RNG, so that the search leaves the run's initialisation and random streams alone.
- On a GPU: double the batch until a step runs out of memory (caught, the cache emptied) or its peak exceeds the
  budget (the GPU's memory, or --memory-budget-gb, less the epoch's own tensors), bisect between the last batch that
  fit and the first that did not, and keep a 10% margin for the epoch's own tensors and fragmentation. Where even the
  first batch fails, halve it.
- On the CPU running out of memory kills the process instead of raising, so the search must never get there. It
  measures each step's peak resident memory (Linux: VmHWM, reset before the step; elsewhere the process's peak
  since it started, under which small steps hide) at doubling batches, and doubles only while a forecast of the
  next step stays within the budget: until there is a fit, twice the rise above the memory the process held
  before the search. Once three steps in a row raised the peak, it fits peak = fixed + per-sample x batch and
  solves it for the budget, less the epoch's own tensors (`reserve`) and a 10% margin on the step's share, as on
  a GPU; a step that still lands over the budget falls back to the batch before it.
In both cases the batch is at most one epoch's samples and is rounded down to a multiple of 1024 above 1024.
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from scalerec.allocator import release_free_memory
from scalerec.errors import UserError

START = 1024
MARGIN = 0.9  # of the batch found at the edge: the epoch's tensors and fragmentation, on a GPU and the CPU alike


@dataclass
class Found:
    batch: int
    peak_bytes: int  # measured (GPU) or forecast (CPU) at that batch
    per_sample_bytes: float | None  # the CPU fit's slope, where there is one
    tried: list[tuple[int, int | None]]  # (batch, peak bytes, or None where it ran out of memory)


def available_bytes() -> int:
    """Memory the process may still take: MemAvailable, capped by a cgroup (container) limit where one is set."""
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            limit = f_max.read().strip()
            if limit != "max":
                free = min(free, int(limit) - int(f_cur.read()))
    except (OSError, ValueError):
        pass
    return max(0, free)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Restart the process's peak resident memory (Linux: VmHWM, via /proc/self/clear_refs); False where not
    possible, and the peak stays the peak since the process started. Free memory that malloc keeps in its heap
    (allocator.py) is handed back first, so that the peak from here counts only memory in use."""
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident memory since it started or since reset_peak_rss()."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def peak_memory_bytes(device: torch.device) -> int:
    """The run's peak so far: allocated GPU memory, or the process's resident memory on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()


def round_batch(batch: int) -> int:
    return batch if batch <= START else batch // START * START


def search_gpu(fits: Callable[[int], int | None], limit: int) -> Found:
    """`fits(b)` returns the peak bytes of a step at batch b, or None where it ran out of memory or over budget."""
    tried: list[tuple[int, int | None]] = []

    def trial(b: int) -> int | None:
        peak = fits(b)
        tried.append((b, peak))
        return peak

    b = min(START, limit)
    while trial(b) is None:  # even the first batch fails: halve it
        if b == 1:
            raise UserError("even a batch of 1 does not fit in the device memory (or --memory-budget-gb)")
        b //= 2
    good, bad = b, None
    while bad is None and good < limit:
        b = min(2 * good, limit)
        good, bad = (b, None) if trial(b) is not None else (good, b)
    while bad is not None and bad - good > max(1, good // 16):  # bisect to 1/16 of the batch
        mid = round_batch((good + bad) // 2)
        if mid <= good:
            break
        good, bad = (mid, bad) if trial(mid) is not None else (good, mid)
    peak = dict(tried)[good] or 0
    if bad is not None:  # at the edge: keep a margin for the epoch's tensors and fragmentation
        good = max(1, round_batch(int(good * MARGIN)))
    return Found(good, peak, None, tried)


def search_cpu(step_peak: Callable[[int], int], budget: int, limit: int, start_rss: int) -> Found:
    """`step_peak(b)` runs a step at batch b and returns the process's peak memory since it started; `start_rss`
    is what the process held before the search. Never runs a step that the forecast puts over `budget`."""
    tried: list[tuple[int, int | None]] = []
    fit: tuple[float, float] | None = None  # (fixed, per sample)
    b = min(START, limit)
    if budget <= 0:
        raise UserError(
            f"the memory budget is smaller than the epoch's own tensors ({-budget / 2**30:.2f} GB short before any "
            "step); raise --memory-budget-gb"
        )
    if start_rss > budget:
        raise UserError(
            f"the process already holds {start_rss / 2**30:.2f} GB, over the {budget / 2**30:.2f} GB a step may "
            "use (the memory budget less the epoch's own tensors); raise --memory-budget-gb"
        )
    while True:
        peak = step_peak(b)
        tried.append((b, peak))
        if peak > budget:
            if len(tried) == 1:
                raise UserError(
                    f"a step at batch {b} peaked at {peak / 2**30:.2f} GB, over the {budget / 2**30:.2f} GB a step "
                    "may use (the memory budget less the epoch's own tensors); raise --memory-budget-gb or use "
                    "--micro-batch"
                )
            tried.pop()  # the forecast was too low: fall back to the last batch within the budget
            b, fit = tried[-1][0], None
            break
        peaks = [p for _, p in tried]
        if len(peaks) >= 3 and peaks[-3] < peaks[-2] < peaks[-1]:
            (b0, p0), (b1, p1) = tried[-2], tried[-1]
            per = (p1 - p0) / (b1 - b0)
            fit = (p1 - per * b1, per)
        nxt = min(2 * b, limit)
        forecast = fit[0] + fit[1] * nxt if fit else peak + (peak - start_rss) * (nxt / b - 1)
        if b >= limit or forecast > budget:
            break
        b = nxt
    best = b
    if fit is not None and b < limit:
        best = max(b, round_batch(min(limit, int((budget - fit[0]) / fit[1] * MARGIN))))
    peak = int(fit[0] + fit[1] * best) if fit else dict(tried)[b] or 0
    return Found(best, peak, fit[1] if fit else None, tried)


def find_batch(
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    step: Callable,  # epoch.train_step
    n_users: int,
    n_items: int,
    limit: int,
    device: torch.device,
    ctx_factory: Callable[[], contextlib.AbstractContextManager],
    scaler_factory: Callable[[], torch.amp.GradScaler],
    micro_batch: int | None,
    budget: int | None,
    reserve: int = 0,
) -> Found:
    """The largest batch (at most `limit`) at which `step` trains a copy of `model` within the memory budget (on a
    GPU, by default all of it), less `reserve` bytes (what the run holds beside the step that the search does not:
    the epoch's tensors)."""
    trial_model = copy.deepcopy(model)
    optimizer = make_optimizer(trial_model)
    g = torch.Generator().manual_seed(0)

    def run(b: int) -> None:
        users = torch.randint(0, n_users, (b,), generator=g).to(device)
        items = torch.randint(0, n_items, (b,), generator=g).to(device)
        labels = torch.ones(b, device=device)
        step(trial_model, optimizer, scaler_factory(), ctx_factory(), users, items, labels, micro_batch=micro_batch)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            if device.type == "cuda":

                def fits(b: int) -> int | None:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    try:
                        run(b)
                        torch.cuda.synchronize(device)
                    except torch.cuda.OutOfMemoryError:
                        optimizer.zero_grad(set_to_none=True)
                        torch.cuda.empty_cache()
                        return None
                    peak = torch.cuda.max_memory_allocated(device)
                    return peak if peak <= gpu_budget else None

                torch.cuda.empty_cache()  # what PyTorch caches unused counts as free
                free, _ = torch.cuda.mem_get_info(device)  # the whole GPU: what the process holds and what is free
                gpu_budget = (budget or torch.cuda.memory_allocated(device) + free) - reserve
                return search_gpu(fits, limit)

            release_free_memory()
            start = current_rss_bytes()

            def step_peak(b: int) -> int:
                reset_peak_rss()  # where it works, each trial's own peak; else the process's, which hides small steps
                run(b)
                return peak_rss_bytes()

            cpu_budget = (budget if budget else start + int(0.8 * available_bytes())) - reserve
            return search_cpu(step_peak, cpu_budget, limit, start)
        finally:  # the run's own peak starts here
            if device.type == "cuda":
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            else:
                reset_peak_rss()
