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
SGD with momentum. Gradients are read, never modified in place. The call shape of the GHC 2019 notebook's
`lars.LARS(model.parameters(), lr=..., momentum=..., weight_decay=...)` works as is.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


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

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, mom = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["adapt"]:
                    d = g.add(p, alpha=wd) if wd else g.clone()
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    denom = g_norm + wd * p_norm
                    trust = group["eta"] * p_norm / (denom + group["eps"])
                    trust = torch.where((p_norm > 0) & (denom > 0), trust, torch.ones_like(trust))
                    d.mul_(trust * group["lr"])
                else:
                    d = g.mul(group["lr"])
                if mom:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(mom).add_(d)
                    buf = state["momentum_buffer"]
                    d = d.add(buf, alpha=mom) if group["nesterov"] else buf
                p.sub_(d)
        return loss
