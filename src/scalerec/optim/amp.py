"""What LARS and LAMB share to take fp16 loss scaling on the device: GradScaler hands an optimizer that declares
`_step_supports_amp_scaling` its scale and overflow flag as tensors (`grad_scale`, `found_inf`) instead of
checking the flag on the host (an `.item()`, a host sync every step) and skipping the call. The optimizer then
unscales the gradients itself and, where the flag is set, puts back the state it changed: no sync, and a skipped
step leaves the weights and the state as they were, as GradScaler's skip does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def unscaled(optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients divided by the loss scale GradScaler set on `optimizer` (new tensors), or as they are."""
    scale = getattr(optimizer, "grad_scale", None)
    return torch._foreach_div(grads, scale.reshape(())) if scale is not None else grads  # 0-dim, as foreach takes


@contextlib.contextmanager
def undone_on_overflow(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> Iterator[None]:
    """Changes the block makes to `tensors` (weights, state) undone where GradScaler found an inf or nan: a copy
    before, and each tensor put back with torch.where after, all on the device."""
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is None or not tensors:
        yield
        return
    before = [t.clone() for t in tensors]
    yield
    overflow = found_inf > 0
    for now, was in zip(tensors, before):
        now.copy_(torch.where(overflow, was, now))
