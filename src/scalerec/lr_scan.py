"""The notebook preset's base SGD lr for the data at hand: a short scan at the base batch, as one would do by hand.

Each candidate lr, smallest first, trains a fresh model (the run's model and data, SGD with momentum 0.9 at batch B,
no warmup) on the same first SHARE of one epoch's samples (at most MAX_SAMPLES). The mean loss of its last tenth of
steps ranks it: the largest lr whose loss is within TIE of the lowest wins (it learns as well in the scan's steps,
and goes further in the epochs after them). A candidate whose loss became inf or nan is out, and so are the larger
ones, which are not tried. On MovieLens-100K at B = 16 this found lr 3 diverging within its share, as whole epochs
at 3 had (at step 2,417).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

CANDIDATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SHARE, MAX_SAMPLES = 0.25, 500_000
TIE = 0.01  # relative: losses this close count as equal


def scan(cfg, ds, batch: int, log: Callable[[str], None] = print) -> float:
    """The base SGD lr at `batch` for a run of `cfg` on `ds`, said with the scan's losses."""
    from scalerec.assembly import assemble, resolve_device
    from scalerec.epoch import train_epoch
    from scalerec.threads import Threads

    Threads(cfg.train.threads, watch=False)  # --threads, as the runs will take it
    device = resolve_device(cfg.train.device)
    o = dataclasses.replace(
        cfg.optim, optimizer="sgd", momentum=0.9, lr_scaling="none", warmup="none", decay="none", nesterov=False
    )
    losses: dict[float, float | None] = {}
    for lr in CANDIDATES:
        t = dataclasses.replace(cfg.train, batch_size=batch, batch_schedule=None, epochs=1)
        p = assemble(dataclasses.replace(cfg, optim=dataclasses.replace(o, lr=lr), train=t), ds, device, None, None,
                     lambda s: None)  # fmt: skip
        n = max(batch, min(MAX_SAMPLES, int(SHARE * p.samples)))
        users, items, labels = (x[:n] for x in p.sampler.epoch())
        steps, _ = train_epoch(p.model, p.optimizer, users, items, labels, batch, scaler=p.scaler, ctx=p.ctx,
                               micro_batch=p.plan.micros[0], l2=cfg.optim.l2)  # fmt: skip
        tail = float(steps[-max(1, len(steps) // 10) :].mean())
        losses[lr] = tail if math.isfinite(tail) and bool(steps.isfinite().all()) else None
        if losses[lr] is None:
            break
    chosen = choose(losses)
    shown = ", ".join(f"{lr:g}: {'diverged' if v is None else f'{v:.4f}'}" for lr, v in losses.items())
    log(f"Base SGD lr {chosen:g}, by a scan at batch {batch} over {n:,} samples (final loss per lr: {shown})")
    return chosen


def choose(losses: dict[float, float | None]) -> float:
    """The scan's lr: the largest whose loss is within TIE of the lowest (None: diverged); UserError where every
    candidate diverged."""
    from scalerec.errors import UserError

    trained = [lr for lr in losses if losses[lr] is not None]
    if not trained:
        raise UserError(f"every lr of the scan diverged ({', '.join(f'{lr:g}' for lr in losses)}): give --base-lr")
    lowest = min(losses[lr] for lr in trained)
    return max(lr for lr in trained if losses[lr] <= lowest * (1 + TIE))
