"""LAMB: layer-wise adaptive moments (You et al. 2019, arXiv 1904.00962), Algorithm 2 with bias correction.

For each parameter tensor p with gradient g at step t:
    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
    u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + wd * p
    trust = ||p|| / ||u||   (1 where either norm is 0)
    p -= lr * trust * u
Groups with adapt=False (the biases and other 1-d tensors, see factory.py) use trust = 1 and no weight decay:
plain Adam. Gradients are read, never modified in place.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def adam_defaults(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict:
    """The checked hyperparameters of an Adam-type optimizer (LAMB, RowwiseAdam), as param-group defaults."""
    if not lr > 0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"Invalid betas: {betas}")
    if not eps >= 0:
        raise ValueError(f"Invalid epsilon: {eps}")
    if not weight_decay >= 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay}")
    return dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class LAMB(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        adapt: bool = True,
    ) -> None:
        super().__init__(params, dict(adam_defaults(lr, betas, eps, weight_decay), adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["adapt"]:
                    if group["weight_decay"]:
                        u.add_(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                    trust = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
                    u.mul_(trust)
                p.add_(u, alpha=-group["lr"])
        return loss
