"""LR scaling rules: the learning rate for a batch, given the one that worked at a base batch.

linear: lr * batch / base_batch (Goyal et al. 2017, "Accurate, Large Minibatch SGD", arXiv 1706.02677);
sqrt: lr * sqrt(batch / base_batch) (Krizhevsky 2014; Hoffer et al. 2017); none: lr unchanged.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt")


def scaled_lr(base_lr: float, base_batch: int, batch: int, rule: str) -> float:
    if rule not in RULES:
        raise ValueError(f"Invalid LR scaling rule: {rule!r} (expected one of {', '.join(RULES)})")
    if base_batch < 1 or batch < 1:
        raise ValueError(f"Invalid batch sizes: base {base_batch}, batch {batch} (must be >= 1)")
    k = batch / base_batch
    return base_lr * {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[rule]
