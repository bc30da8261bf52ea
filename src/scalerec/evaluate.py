"""Sampled HR@K and NDCG@K: pure tensor functions, and evaluate(model, ...) batched on the device.

Each test user's held-out item is ranked among its evaluation negatives. rank = the number of valid negatives
scoring at least as high as the positive, so ties count against the positive: a model that scores every item
the same gets rank N and HR@K = 0. A NaN score for the positive ranks it last. HR@K is the share of users with
rank < K; NDCG@K is the mean over users of 1/log2(rank + 2) for those hits, 0 otherwise.
"""

from __future__ import annotations

import torch
from torch import nn


def positive_rank(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank (0 = first) of each row's positive score `pos` [U] among its negative scores `neg` [U, N]."""
    beats = neg >= pos[:, None]
    if valid is not None:
        beats &= valid
    rank = beats.sum(1)
    n = neg.shape[1] if valid is None else valid.sum(1)
    return torch.where(torch.isnan(pos), n, rank)


def hit_rate(rank: torch.Tensor, k: int) -> torch.Tensor:
    return (rank < k).float().mean()


def ndcg(rank: torch.Tensor, k: int) -> torch.Tensor:
    gain = 1.0 / torch.log2(rank.double() + 2.0)
    return torch.where(rank < k, gain, torch.zeros_like(gain)).mean()


def metrics_from_ranks(rank: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(hit_rate(rank, k))
        out[f"NDCG@{k}"] = float(ndcg(rank, k))
    return out


@torch.no_grad()
def ranks(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    batch_users: int = 128,
) -> torch.Tensor:
    """Rank of each user's positive among its negatives (-1 entries are empty slots), all on the device.

    Every item is encoded once; users are scored in batches of `batch_users` against their 1 + N candidates.
    """
    was_training = model.training
    model.eval()
    try:
        device = users.device
        item_enc = model.encode_items(torch.arange(n_items, device=device))
        out = torch.empty(len(users), dtype=torch.int64, device=device)
        for s in range(0, len(users), batch_users):
            u = users[s : s + batch_users]
            cand = torch.cat([positives[s : s + batch_users, None], negatives[s : s + batch_users]], 1)
            valid = cand >= 0
            cand = cand.clamp(min=0)
            user_enc = tuple(t[:, None] if t.numel() else t for t in model.encode_users(u))
            scores = model.interact(user_enc, tuple(t[cand] if t.numel() else t for t in item_enc)).float()
            out[s : s + len(u)] = positive_rank(scores[:, 0], scores[:, 1:], valid[:, 1:])
        return out
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...] = (10,),
    batch_users: int = 128,
) -> dict[str, float]:
    """HR@K and NDCG@K for every K in `ks` (the float() calls are the host syncs)."""
    return metrics_from_ranks(ranks(model, users, positives, negatives, n_items, batch_users), ks)
