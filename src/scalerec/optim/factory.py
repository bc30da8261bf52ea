"""Optimizer by name, with parameter groups by rule.

For LARS and LAMB, biases (1-d tensors, and MF's per-user and per-item bias tables) go to a group that neither
decays nor adapts: a layer-wise trust ratio of a bias is noise, and decaying it helps nothing. Embedding tables and
weight matrices adapt. SGD and Adam get one group, as in the seed notebook. The group sizes are returned for
the log.
"""

from __future__ import annotations

import torch
from torch import nn

from scalerec.optim.lamb import LAMB
from scalerec.optim.lars import LARS

OPTIMIZERS = ("sgd", "adam", "lars", "lamb")


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, a one-line description of its parameter groups)."""
    if name == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        return opt, f"sgd: all {_count(model.parameters()):,} parameters in one group"
    if name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        return opt, f"adam: all {_count(model.parameters()):,} parameters in one group"
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    fixed_names = {n for n, p in model.named_parameters() if p.dim() <= 1 or "bias" in n}
    adapt = [p for n, p in model.named_parameters() if n not in fixed_names]
    fixed = [p for n, p in model.named_parameters() if n in fixed_names]
    groups = [
        {"params": adapt, "weight_decay": weight_decay, "adapt": True},
        {"params": fixed, "weight_decay": 0.0, "adapt": False},
    ]
    if name == "lars":
        opt = LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov, eta=trust_coefficient)
    else:
        opt = LAMB(groups, lr=lr)
    return opt, (
        f"{name}: {_count(adapt):,} parameters in {len(adapt)} tensors adapt and decay; "
        f"{_count(fixed):,} in {len(fixed)} bias tensors do neither"
    )


def _count(params) -> int:
    return sum(p.numel() for p in params)
