"""Adam that updates only the rows of an embedding table that a batch touched ("lazy" Adam).

Dense Adam reads and writes every row of every table at every step (the parameter, both moments and the
gradient, which the embedding backward also has to zero-fill): at ML-20M shape that is 32M parameters per step,
several times the work of the MLP. With `nn.Embedding(sparse=True)` a table's gradient holds only the rows in the
batch, and this optimizer applies Adam to those rows alone:
    rows, g = coalesce(grad)                        (the touched rows, each row's summed gradient)
    m[rows] = beta1 * m[rows] + (1 - beta1) * g;   v[rows] = beta2 * v[rows] + (1 - beta2) * g^2
    p[rows] -= lr * (m[rows] / (1 - beta1^t)) / (sqrt(v[rows] / (1 - beta2^t)) + eps)
with t the tensor's step count, as torch.optim.SparseAdam and TensorFlow's LazyAdam do. The difference from dense
Adam: the moments of untouched rows neither decay nor move their row, and weight decay (L2, added to the
gradient) reaches only the touched rows. Dense gradients (the MLP) get plain Adam,
so one optimizer holds the whole model, and LR schedules and GradScaler see one set of groups.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from scalerec.optim.lamb import adam_defaults


class RowwiseAdam(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, adam_defaults(lr, betas, eps, weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_size = lr / (1 - beta1**t)
                root_bc2 = (1 - beta2**t) ** 0.5
                if p.grad.is_sparse:
                    rows, g = p.grad._indices()[0], p.grad._values()
                    # rows distinct and ascending (model._EncodeRows) are coalesced already: sorting them again
                    # costs more than this check (autograd drops the tensor's coalesced flag)
                    if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):
                        grad = p.grad.coalesce()
                        rows, g = grad.indices()[0], grad.values()
                    # index_select, not m[rows], and index_add_ without alpha: on the CPU these are several times
                    # faster (index_add_ with alpha takes a per-row path)
                    if wd:
                        g = g.add(p.index_select(0, rows), alpha=wd)
                    m_rows = m.index_select(0, rows).lerp_(g, 1 - beta1)
                    v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    m.index_copy_(0, rows, m_rows)
                    v.index_copy_(0, rows, v_rows)
                    p.index_add_(0, rows, m_rows.mul_(-step_size).div_(v_rows.sqrt_().div_(root_bc2).add_(eps)))
                else:
                    g = p.grad.add(p, alpha=wd) if wd else p.grad
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)
        return loss
