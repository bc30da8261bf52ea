"""Optimizer by name, with parameter groups by rule.

For LARS and LAMB, weight matrices adapt (a layer-wise trust ratio) and decay. Biases (1-d tensors, and MF's
per-user and per-item bias tables) never decay; under LARS they adapt too, because LARS's lr is a relative step
(lr x eta of a layer's norm) that, applied as a plain SGD step, blows biases up at the lr the linear rule gives a
192x batch; under LAMB a plain Adam step is bounded by the lr, so they step plainly. Embedding tables adapt under
LARS, like every layer in the LARS paper (adapted or plain, the accuracy was the same), and not under LAMB, where
the trust ratio ties each row's step to the norm of the whole table, initialised at N(0, 0.01), and the adapted
tables learnt more slowly (docs/large-batches.md). `adapt_embeddings` overrides this.
SGD and Adam get one group, as in the GHC 2019 notebook. The group sizes are returned for the log.
"""

from __future__ import annotations

import torch
from torch import nn

from scalerec.optim.lamb import LAMB
from scalerec.optim.lars import LARS
from scalerec.optim.rowwise import RowwiseAdam

OPTIMIZERS = ("sgd", "adam", "lars", "lamb")


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    adapt_embeddings: bool | None = None,
) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, a one-line description of its parameter groups)."""
    if name == "sgd":
        # fused on a GPU: one kernel for all tensors, and fp16 loss scaling taken on the device (no host sync)
        fused = next(model.parameters()).device.type == "cuda" or None
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=fused
        )
        return opt, f"sgd: all {_count(model.parameters()):,} parameters in one group"
    sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
    if name == "adam" and sparse:
        opt = RowwiseAdam(model.parameters(), lr=lr, weight_decay=weight_decay)
        return opt, (
            f"adam: all {_count(model.parameters()):,} parameters in one group; the {_count(sparse):,} in "
            f"{len(sparse)} embedding tables updated row by row (the rows each batch touches)"
        )
    if sparse:
        raise ValueError(f"sparse embedding gradients need --optimizer adam, not {name}")
    if name == "adam":
        # fused: one kernel over all tensors instead of several per tensor (benchmarks/step_speed.py)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        return opt, f"adam: all {_count(model.parameters()):,} parameters in one group"
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    if adapt_embeddings is None:
        adapt_embeddings = name == "lars"
    tables = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    biases, matrices, plain_tables = [], [], []
    for n, p in model.named_parameters():
        if p.dim() <= 1 or "bias" in n:  # "bias": MF's per-user and per-item bias tables
            biases.append(p)
        elif n in tables and not adapt_embeddings:
            plain_tables.append(p)
        else:
            matrices.append(p)
    groups = [
        {"params": matrices, "weight_decay": weight_decay, "adapt": True},
        {"params": biases, "weight_decay": 0.0, "adapt": name == "lars"},
        {"params": plain_tables, "weight_decay": 0.0, "adapt": False},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "lars":
        opt = LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov, eta=trust_coefficient)
    else:
        opt = LAMB(groups, lr=lr)
    bias_rule = "adapt but do not decay" if name == "lars" else "neither adapt nor decay"
    tables_rule = "embedding tables adapt" if adapt_embeddings else "embedding tables neither adapt nor decay"
    return opt, (
        f"{name}: {_count(matrices):,} parameters in {len(matrices)} tensors adapt and decay "
        f"({tables_rule}); {_count(biases):,} in {len(biases)} bias tensors {bias_rule}"
    )


def _count(params) -> int:
    return sum(p.numel() for p in params)
