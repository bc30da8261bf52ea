"""A run's parts, assembled from its config and data: the device, the model, the optimizer, the schedule, the
batch (the largest that fits, for --batch-size max) and its micro-batches, the loss scaler and the sampler."""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.config import FLOAT32_MAX, Config, parse_batch_schedule
from scalerec.data.loading import load_dataset
from scalerec.epoch import train_step
from scalerec.errors import OptionError, UserError
from scalerec.find_batch import find_batch
from scalerec.kernels import set_cpu_matmul
from scalerec.model import build_model, table_params
from scalerec.optim import build_optimizer, lr_factor, scaled_lr
from scalerec.precision import autocast_context, grad_scaler, set_matmul_precision
from scalerec.sampling import EpochSampler
from scalerec.threads import Threads


@dataclasses.dataclass
class Plan:
    """Each epoch's batch, micro-batch and (scaled) lr, and the global step each epoch starts at: one batch for the
    whole run, or --batch-schedule's phases."""

    batches: list[int]
    micros: list[int | None]
    """Micro-batch size of each epoch, or None for whole batches."""
    lrs: list[float]
    starts: list[int]
    """The first global step of each epoch, then the run's total steps."""

    @staticmethod
    def of(batches: list[int], micros: list[int | None], lrs: list[float], samples: int) -> Plan:
        starts = [0]
        for b in batches:
            starts.append(starts[-1] + (samples + b - 1) // b)
        return Plan(batches, micros, lrs, starts)

    def steps(self, epoch: int) -> int:
        return self.starts[epoch + 1] - self.starts[epoch]

    def epoch_of(self, step: int) -> int:
        return min(max(0, bisect.bisect_right(self.starts, step) - 1), len(self.batches) - 1)

    @property
    def grows(self) -> bool:
        """Whether the batch changes within the run (--batch-schedule with a phase past epoch 0)."""
        return len(set(self.batches)) > 1


@dataclasses.dataclass
class Parts:
    """What the epoch loop runs: built by `assemble`."""

    model: torch.nn.Module
    sampler: EpochSampler
    samples: int
    """Samples per epoch (positives and their negatives)."""
    plan: Plan
    lr: float
    """The peak learning rate (scaled to the batch where asked)."""
    optimizer: torch.optim.Optimizer
    groups: str
    """The optimizer's parameter groups, in words."""
    schedule: Callable[[int], float]
    """The lr factor at each global step: a pure function of the step."""
    scheduler: Any
    scaler: Any
    ctx: Any
    """The autocast context of the run's precision."""
    matmul_precision: str
    """The fp32 matrix products' precision in force (precision.set_matmul_precision)."""

    @property
    def batch(self) -> int:
        """The first epoch's batch (the run's, without --batch-schedule)."""
        return self.plan.batches[0]

    @property
    def steps(self) -> int:
        """The first epoch's steps (every epoch's, without --batch-schedule)."""
        return self.plan.steps(0)

    @property
    def total_steps(self) -> int:
        return self.plan.starts[-1]

    def schedule_points(self) -> list[int]:
        """200 steps spread over the run: the schedule as the log, the summary and the plots show it."""
        return sorted({round(i * (self.total_steps - 1) / 199) for i in range(200)})


def assemble(cfg: Config, ds, device: torch.device, group, batch: int | None, log: Callable[[str], None]) -> Parts:
    """The parts of a run on `ds`, in the order their random numbers are drawn (weights first). `batch`: the batch
    a resumed run found with --batch-size max (None: as the config says)."""
    o, t = cfg.optim, cfg.train
    torch.manual_seed(t.seed)
    model = build_run_model(cfg, ds.n_users, ds.n_items, device)
    if group is not None and (t.grad_sync == "ddp" or (t.grad_sync == "auto" and device.type == "cuda")):
        group.data_parallel(model)  # which also sends rank 0's weights
    elif group is not None:
        group.broadcast_weights(model)
    sampler = EpochSampler(
        ds.train_users, ds.train_items, ds.positive_keys(), ds.n_items, t.negatives, device, t.seed, t.shuffle
    )
    n = sampler.samples_per_epoch
    bs = t.batch_size if batch is None else batch
    if bs == "max":
        bs = largest_batch(cfg, model, ds.n_users, ds.n_items, n, device, log)
    plan = plan_of(cfg, device, bs, n)
    lr = max(plan.lrs)
    optimizer, groups = optimizer_for(cfg, model, lr)
    # the warmup's steps: its whole epochs', and its share of the next's (past the run: at the last epoch's rate)
    whole = min(int(o.warmup_epochs), t.epochs)
    warmup_steps = o.warmup_epochs * plan.steps(0) if not plan.grows else (
        plan.starts[whole] + (o.warmup_epochs - whole) * plan.steps(min(whole, t.epochs - 1))
    )  # fmt: skip

    def schedule(step: int) -> float:  # the phase's lr over the peak, under the warmup and decay
        phase = plan.lrs[plan.epoch_of(step)] / lr
        return phase * lr_factor(step, warmup_steps, plan.starts[-1], o.warmup, o.decay)

    return Parts(
        model, sampler, n, plan, lr, optimizer, groups, schedule,
        torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), grad_scaler(t.precision, device),
        autocast_context(t.precision, device), set_matmul_precision(t.matmul_precision, device),
    )  # fmt: skip


def plan_of(cfg: Config, device: torch.device, batch: int, samples: int) -> Plan:
    """Each epoch's batch (`batch`, or --batch-schedule's), micro-batch and lr (scaled to the batch where asked)."""
    o, t = cfg.optim, cfg.train
    phases = parse_batch_schedule(t.batch_schedule) if t.batch_schedule else [(0, batch)]
    batches = [next(b for e, b in reversed(phases) if e <= epoch) for epoch in range(t.epochs)]
    lrs = []
    for bs in batches:  # scaled from --base-batch, by default the first epoch's batch
        lr = (
            scaled_lr(o.base_lr or o.lr, o.base_batch or batches[0], bs, o.lr_scaling)
            if o.lr_scaling != "none"
            else o.lr
        )
        if not lr <= FLOAT32_MAX:
            raise OptionError(f"the lr scaled to batch {bs} is {lr:g}, beyond float32's range: lower --base-lr")
        lrs.append(lr)
    return Plan.of(batches, [micro_batch_for(cfg, device, bs) for bs in batches], lrs, samples)


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto (cuda where available) as a torch.device; UserError for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def has_tf32(device: torch.device) -> bool:
    """Whether `device` computes fp32 products in TF32 when allowed to: NVIDIA GPUs since Ampere."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def optimizer_for(cfg: Config, model: torch.nn.Module, lr: float) -> tuple[torch.optim.Optimizer, str]:
    o = cfg.optim
    return build_optimizer(
        o.optimizer, model, lr, o.momentum, o.nesterov, o.weight_decay, o.trust_coefficient, o.adapt_embeddings
    )


# Adam updates tables row by row (sparse gradients) where the tables hold at least this many parameters per sample
# of a batch: a dense step costs in proportion to the tables, a sparse one to the batch. The threshold lies between
# the shapes where benchmarks/step_speed.py measured rows faster and those where dense was (benchmarks/RESULTS.md,
# "Embedding updates").
SPARSE_FROM_PARAMS_PER_SAMPLE = 2000


def build_run_model(
    cfg: Config, n_users: int, n_items: int, device: torch.device, variant: str = "scalerec"
) -> torch.nn.Module:
    """The model as the config asks, with sparse table gradients where Adam should update rows (`variant`: see
    model.VARIANTS)."""
    o, m = cfg.optim, cfg.model
    sparse = o.sparse_embeddings
    if sparse and device.type == "cuda":  # coalescing sparse rows syncs with the host; dense fused Adam is cheap there
        raise OptionError(
            "--sparse-embeddings: for the CPU; on a GPU, dense tables with fused Adam are faster (a run trained with "
            "it resumes on the CPU: --device cpu)"
        )
    if sparse is None:
        batch = cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 65536  # max: a large batch
        tables = table_params(m.model, n_users, n_items, m.factors, m.layers)
        # CPU only: measured there; on a GPU dense fused Adam is cheap, and coalescing sparse rows syncs the host
        rule = tables >= SPARSE_FROM_PARAMS_PER_SAMPLE * batch
        sparse = device.type == "cpu" and o.optimizer == "adam" and rule
    model = build_model(m.model, n_users, n_items, m.factors, m.layers, m.dropout, sparse, variant, m.init_std)
    model = model.to(device)
    if device.type == "cpu":  # elsewhere the setting places nothing
        set_cpu_matmul(model, cfg.train.cpu_matmul)
    return model


# On the CPU, batches above this are computed in micro-batches of this size: activations that stay in the cache
# and a peak that does not grow with the batch, at the whole batch's speed (benchmarks/step_speed.py; figures in
# benchmarks/RESULTS.md).
CPU_MICRO_BATCH = 8192


def micro_batch_for(cfg: Config, device: torch.device, batch: int | None) -> int | None:
    """--micro-batch, or by default CPU_MICRO_BATCH on the CPU where the batch is larger (none on a GPU)."""
    if cfg.train.micro_batch is not None:
        return cfg.train.micro_batch
    if device.type == "cpu" and (batch is None or batch > CPU_MICRO_BATCH):
        return CPU_MICRO_BATCH
    return None


# What a run holds beside its steps, per sample of an epoch, which the search's trial steps run without, so that it
# leaves room for them. On the CPU: the epoch's users, items and labels and the heap its draw leaves (negatives,
# their membership test, the shuffle): a little above the 53-55 bytes a sample measured on MovieLens-100K. On a GPU:
# the epoch's int32 users and items and fp32 labels (12 bytes), and 4 more for its draw (the int32 shuffle beside
# them); what the sampler holds for good is allocated before the search and counted in its peaks.
EPOCH_BYTES_PER_SAMPLE = {"cpu": 64, "cuda": 16}


def largest_batch(
    cfg: Config, model: torch.nn.Module, n_users: int, n_items: int, samples: int, device: torch.device, log
) -> int:
    """--batch-size max: the largest batch (at most an epoch) that trains within the memory budget."""
    budget = int(cfg.train.memory_budget_gb * 2**30) if cfg.train.memory_budget_gb else None
    found = find_batch(
        model,
        lambda m: optimizer_for(cfg, m, cfg.optim.lr)[0],
        functools.partial(train_step, l2=cfg.optim.l2),
        n_users,
        n_items,
        samples,
        device,
        lambda: autocast_context(cfg.train.precision, device),
        lambda: grad_scaler(cfg.train.precision, device),
        micro_batch_for(cfg, device, None),
        budget,
        EPOCH_BYTES_PER_SAMPLE[device.type] * samples,
    )
    tried = ", ".join(f"{b}: {'out of memory' if p is None else f'{p / 2**20:.0f} MB'}" for b, p in found.tried)
    per = f", {found.per_sample_bytes:,.0f} bytes per sample" if found.per_sample_bytes else ""
    where = "GPU memory" if device.type == "cuda" else "peak process memory"
    log(
        f"Largest batch: {found.batch} (of {samples:,} samples per epoch), {where} {found.peak_bytes / 2**30:.2f} GB"
        f"{per}; tried {tried}"
    )
    return found.batch


def find_largest_batch(cfg: Config, log: Callable[[str], None] = print, tune_malloc: bool = True) -> int:
    """`scalerec find-batch`: load the data, build the model, search (with malloc tuned as training tunes it, unless
    not `tune_malloc`)."""
    log(Threads(cfg.train.threads).said)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu" and tune_malloc:
        keep_large_blocks_in_heap()
    ds = load_dataset(cfg.data, log)
    set_matmul_precision(cfg.train.matmul_precision, device)
    torch.manual_seed(cfg.train.seed)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size="max"))  # the model max trains
    model = build_run_model(cfg, ds.n_users, ds.n_items, device)
    samples = len(ds.train_users) * (1 + cfg.train.negatives)
    return largest_batch(cfg, model, ds.n_users, ds.n_items, samples, device, log)


def log_setup(cfg: Config, log: Callable[[str], None], p: Parts, device: torch.device, run_dir: Path, group) -> None:
    """The run's model, batch, optimizer and schedule, its processes, and notes on what would surprise."""
    o = cfg.optim
    model, bs, micro, n, steps, groups, lr = p.model, p.batch, p.plan.micros[0], p.samples, p.steps, p.groups, p.lr
    lrs = [lr * p.schedule(s) for s in p.schedule_points()]
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
        f"precision {cfg.train.precision}; fp32 matrix products {p.matmul_precision}"
        + (" (TF32)" if p.matmul_precision != "highest" and has_tf32(device) else "")
    )
    if p.plan.grows:
        log("Batch schedule: " + "; ".join(
            f"epoch {e}: batch {b}, {p.plan.steps(e)} steps, lr {p.plan.lrs[e]:g}"
            for e, b in enumerate(p.plan.batches) if e == 0 or b != p.plan.batches[e - 1]
        ))  # fmt: skip
    if group is not None:
        whole = group.by_ddp(bs, micro)
        log(
            f"Data-parallel over {group.world} processes, each computing 1/{group.world} of every batch; gradients "
            + ("summed by DDP during the backward" if whole else "summed in one all-reduce after the backward")
        )
    if bs > n:
        log(f"Note: batch {bs:,} is larger than the epoch's {n:,} samples: each epoch is one step, of the whole epoch")
    if device.type == "cpu" and cfg.train.precision == "fp16":
        log("Note: fp16 has no fast kernels on the CPU: it runs many times slower than fp32; bf16 or fp32 are faster")
    if float(np.float32(max(lrs))) == 0.0:
        log(f"Warning: the lr stays below {max(lrs):.3g} for the whole run, 0 in float32: the weights will not move")
    elif o.warmup != "none" and o.warmup_epochs > cfg.train.epochs:
        log(
            f"Note: the warmup ({o.warmup_epochs:g} epochs) is longer than the run ({cfg.train.epochs}): the lr "
            f"reaches {max(lrs):.3g} at most, not {lr:g}"
        )
