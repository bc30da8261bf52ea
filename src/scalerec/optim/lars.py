"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017, arXiv 1708.03888).

For each parameter tensor p with gradient g, weight decay wd, trust coefficient eta and learning rate lr
(Algorithm 1 of the paper, the lr inside the momentum buffer):
    d      = g + wd * p
    trust  = eta * ||p|| / (||g|| + wd * ||p|| + eps)   (1 where ||p|| or the denominator is 0)
A tensor whose norm is 0 (a zero-initialised bias) therefore takes one plain step lr * g, as common LARS
implementations do, and adapts from then on; under a warmup that first step is at the warmup's lowest lr.
    buf    = momentum * buf + lr * trust * d
    p     -= buf                                         (nesterov: p -= lr * trust * d + momentum * buf)
Groups with adapt=False (by rule the biases, see factory.py) skip the trust ratio and the weight decay: plain
SGD with momentum. Gradients are read, never modified in place. Each operation runs over all of a group's tensors
at once (torch._foreach_*: a few kernels a step on a GPU, not several per tensor), and fp16 loss scaling is taken
on the device (amp.py). The call shape of the GHC 2019 notebook's
`lars.LARS(model.parameters(), lr=..., momentum=..., weight_decay=...)` works as is.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from scalerec.optim.amp import undone_on_overflow, unscaled


class LARS(Optimizer):
    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
        adapt: bool = True,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if not eta > 0:
            raise ValueError(f"Invalid trust coefficient eta: {eta}")
        if not eps >= 0:
            raise ValueError(f"Invalid epsilon: {eps}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, nesterov=nesterov, adapt=adapt
        )
        super().__init__(params, defaults)

    _step_supports_amp_scaling = True  # fp16: GradScaler's scale and overflow flag taken on the device (amp.py)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            if group["momentum"]:  # zeros: the first step's momentum * 0 + d is d, as the paper's buffer starts
                for p in params:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                bufs = [self.state[p]["momentum_buffer"] for p in params]
            with undone_on_overflow(self, params + bufs):
                self._step_group(group, params, unscaled(self, [p.grad for p in params]), bufs)
        return loss

    @staticmethod
    def _step_group(group: dict, params: list, grads: list, bufs: list) -> None:
        """One step of a group, each operation over all its tensors at once (torch._foreach_*)."""
        wd, mom, lr = group["weight_decay"], group["momentum"], group["lr"]
        if group["adapt"]:
            d = torch._foreach_add(grads, params, alpha=wd) if wd else torch._foreach_mul(grads, 1.0)
            p_norm, g_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads))
            denom = g_norm + wd * p_norm
            trust = group["eta"] * p_norm / (denom + group["eps"])
            trust = torch.where((p_norm > 0) & (denom > 0), trust, torch.ones_like(trust))
            torch._foreach_mul_(d, (trust * lr).unbind())
        else:
            d = torch._foreach_mul(grads, lr)
        if mom:
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, d)
            if group["nesterov"]:
                torch._foreach_add_(d, bufs, alpha=mom)
            else:
                d = bufs
        torch._foreach_sub_(params, d)
