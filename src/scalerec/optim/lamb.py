"""LAMB: layer-wise adaptive moments (You et al. 2019, arXiv 1904.00962), Algorithm 2 with bias correction.

For each parameter tensor p with gradient g at step t:
    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
    u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + wd * p
    trust = ||p|| / ||u||   (1 where either norm is 0)
    p -= lr * trust * u
Groups with adapt=False (the biases and other 1-d tensors, see factory.py) use trust = 1 and no weight decay:
plain Adam. Gradients are read, never modified in place. Each operation runs over all of a group's tensors at
once (torch._foreach_*), and fp16 loss scaling is taken on the device (amp.py).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from scalerec.optim.amp import undone_on_overflow, unscaled


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

    _step_supports_amp_scaling = True  # fp16: GradScaler's scale and overflow flag taken on the device (amp.py)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        on_device = getattr(self, "found_inf", None) is not None  # fp16: steps counted on the device too
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                if on_device and not torch.is_tensor(state["step"]):  # float64: the bias corrections as in Python
                    state["step"] = torch.tensor(float(state["step"]), dtype=torch.float64, device=p.device)
            m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            steps = [s["step"] for s in states if torch.is_tensor(s["step"])]
            with undone_on_overflow(self, params + m + v + steps):
                for s in states:
                    s["step"] += 1
                self._step_group(group, params, unscaled(self, [p.grad for p in params]), m, v, states)
        return loss

    @staticmethod
    def _step_group(group: dict, params: list, grads: list, m: list, v: list, states: list) -> None:
        """One step of a group, each operation over all its tensors at once (torch._foreach_*)."""
        beta1, beta2 = group["betas"]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        bias1 = [1 - beta1 ** s["step"] for s in states]  # floats, or the device's tensors under fp16
        bias2 = [1 - beta2 ** s["step"] for s in states]
        u = torch._foreach_div(m, bias1)
        root = torch._foreach_div(v, bias2)
        torch._foreach_sqrt_(root)
        torch._foreach_add_(root, group["eps"])
        torch._foreach_div_(u, root)
        if group["adapt"]:
            if group["weight_decay"]:
                torch._foreach_add_(u, params, alpha=group["weight_decay"])
            p_norm, u_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(u))
            trust = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
            torch._foreach_mul_(u, trust.unbind())
        torch._foreach_add_(params, u, alpha=-group["lr"])
