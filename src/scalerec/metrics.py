"""HR@K and NDCG@K by two protocols: pure tensor functions, and ranking batched on the device.

Sampled (the default): each test user's held-out item is ranked among its evaluation negatives. Full: it is
ranked among all items except the user's training items (Krichene and Rendle, KDD 2020: sampled metrics can
reorder models), and Recall@K is reported too (with one held-out item per user it equals HR@K).

In both, rank = the number of candidates scoring at least as high as the positive, so ties count against the
positive: a model that scores every item the same gets rank N and HR@K = 0. A NaN score for the positive ranks it
last (NAN_RANK, never a hit); a NaN candidate never beats it. HR@K is the share of users with rank < K; NDCG@K
is the mean over users of 1/log2(rank + 2) for those hits, 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from scalerec.config import PROTOCOLS
from scalerec.kernels import Encoding
from scalerec.model import tile_pairs

NAN_RANK = 2**31


def positive_rank(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank (0 = first) of each row's positive score `pos` [U] among its negative scores `neg` [U, N]."""
    beats = neg >= pos[:, None]
    if valid is not None:
        beats &= valid
    rank = beats.sum(1)
    return torch.where(torch.isnan(pos), torch.full_like(rank, NAN_RANK), rank)


def hit_rate(rank: torch.Tensor, k: int) -> torch.Tensor:
    return (rank < k).float().mean()


def ndcg(rank: torch.Tensor, k: int) -> torch.Tensor:
    gain = 1.0 / torch.log2(rank.double() + 2.0)
    return torch.where(rank < k, gain, torch.zeros_like(gain)).mean()


def metrics_from_ranks(rank: torch.Tensor, ks: tuple[int, ...], recall: bool = False) -> dict[str, float]:
    """HR@K and NDCG@K for each K (and Recall@K: one held-out item per user, so the share of users who hit)."""
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(hit_rate(rank, k))
        out[f"NDCG@{k}"] = float(ndcg(rank, k))
        if recall:
            out[f"Recall@{k}"] = out[f"HR@{k}"]
    return out


def _rows(table: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """table[index] for an encoding; F.embedding is a much faster row gather than advanced indexing on CPU."""
    if table is None:
        return None
    return F.embedding(index, table) if table.dim() == 2 else table[index]


@torch.no_grad()
def ranks(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    batch_users: int = 16,
) -> torch.Tensor:
    """Rank of each user's positive among its negatives (-1 entries are empty slots), all on the device.

    Every item is encoded once; users are scored in batches of `batch_users` against their 1 + N candidates
    (small batches keep the [batch, candidates, hidden] activations in the CPU's cache).
    """
    was_training = model.training
    model.eval()
    try:
        item_enc = model.encode_items(torch.arange(n_items, device=users.device))
        cand = torch.cat([positives[:, None], negatives], 1)
        valid = cand[:, 1:] >= 0
        cand = cand.clamp(min=0)
        out = torch.empty(len(users), dtype=torch.int64, device=users.device)
        for s in range(0, len(users), batch_users):
            c = cand[s : s + batch_users]
            user_enc = tuple(None if t is None else t[:, None] for t in model.encode_users(users[s : s + batch_users]))
            scores = model.interact(user_enc, tuple(_rows(t, c) for t in item_enc)).float()
            out[s : s + len(c)] = positive_rank(scores[:, 0], scores[:, 1:], valid[s : s + batch_users])
        return out
    finally:
        model.train(was_training)


def users_per_batch(model: nn.Module, device: torch.device, candidates: int) -> int:
    """Sampled evaluation's users per batch (--eval-batch-size's default): 16 on the CPU, whose candidates'
    activations then stay in cache; on a GPU, a scoring tile's pairs (model.tile_pairs) over the candidates."""
    if device.type == "cpu":
        return 16
    return max(16, tile_pairs(model, device) // candidates)


def evaluate(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...] = (10,),
    batch_users: int = 16,
) -> dict[str, float]:
    """HR@K and NDCG@K for every K in `ks` (the float() calls are the host syncs)."""
    return metrics_from_ranks(ranks(model, users, positives, negatives, n_items, batch_users), ks)


# Full ranking scores this many user-item pairs per batch of users at most (64 MB in fp32), whatever the catalogue.
FULL_SCORES_PER_BATCH = 2**24


def seen_index(users: torch.Tensor, items: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets [n_users + 1], items grouped by user): user u's training items are items[offsets[u]:offsets[u+1]]."""
    order = torch.argsort(users, stable=True)
    offsets = torch.zeros(n_users + 1, dtype=torch.int64, device=users.device)
    offsets[1:] = torch.cumsum(torch.bincount(users, minlength=n_users), 0)
    return offsets, items[order]


def seen_pairs(seen: tuple[torch.Tensor, torch.Tensor], users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in `users`, item) of every training item of the given users."""
    offsets, items = seen
    starts, lengths = offsets[users], offsets[users + 1] - offsets[users]
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths  # where each user's run starts in the output
    return rows, items[torch.arange(len(rows), device=users.device) - first[rows] + starts[rows]]


def scored_batches(
    model: nn.Module,
    users: torch.Tensor,
    n_items: int,
    scores_per_batch: int = FULL_SCORES_PER_BATCH,
    item_enc: Encoding | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(the users' slice, their scores against every item [len, n_items], fp32) in batches: the one scoring path
    of full ranking and recommendation. Every item is encoded once (or `item_enc` given: every item's encoding in
    eval mode, kept by a caller that scores again and again); users are scored in batches with the model's
    score_grid (which tiles its own activations), at most `scores_per_batch` scores at a time, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if item_enc is None:
                item_enc = model.encode_items(torch.arange(n_items, device=users.device))
            # at most 4096 users at a time too, so that a tile of pairs holds at least two items of a small catalogue
            step = max(1, min(4096, scores_per_batch // n_items))
            for s in range(0, len(users), step):
                at = slice(s, s + step)
                yield at, model.score_grid(model.encode_users(users[at]), item_enc).float()
    finally:
        model.train(was_training)


@torch.no_grad()
def full_ranks(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    seen: tuple[torch.Tensor, torch.Tensor],
    n_items: int,
    scores_per_batch: int = FULL_SCORES_PER_BATCH,
) -> torch.Tensor:
    """Rank of each user's positive among all items but the user's training items (`seen_index`), on the device."""
    out = torch.empty(len(users), dtype=torch.int64, device=users.device)
    for at, scores in scored_batches(model, users, n_items, scores_per_batch):
        u, pos_items = users[at], positives[at]
        rows = torch.arange(len(u), device=u.device)
        pos = scores[rows, pos_items]
        beats = scores >= pos[:, None]
        beats[seen_pairs(seen, u)] = False
        beats[rows, pos_items] = False  # the positive is not its own competitor
        rank = beats.sum(1)
        out[at] = torch.where(torch.isnan(pos), torch.full_like(rank, NAN_RANK), rank)
    return out


def evaluator(
    ds,
    model: nn.Module,
    device: torch.device,
    protocols: tuple[str, ...],
    topk: tuple[int, ...],
    batch_users: int,
    log: Callable[[str], None] = lambda s: None,
    split: str = "test",
) -> tuple[Callable[[], dict[str, float]], str]:
    """(a function computing each protocol's metrics on the dataset's held-out items, each name prefixed with its
    protocol; the metric that picks the best epoch). The test tensors are moved to the device once. With
    split="valid", the validation items instead, ranked among items the user did not train on (the test item
    among them), each name prefixed with valid_; the test items' full ranking leaves out the validation item."""
    valid = split == "valid"
    prefix = "valid_" if valid else ""
    test_users = torch.tensor(ds.valid_users if valid else ds.test_users, device=device)
    test_items = torch.tensor(ds.valid_items if valid else ds.test_items, device=device)
    test_negatives = torch.tensor(ds.valid_negatives if valid else ds.eval_negatives, device=device)
    candidates = {"sampled": test_negatives.shape[1] + 1, "full": ds.n_items}
    for protocol in protocols:  # a cut-off at or past every candidate: its HR is 1 whatever the model
        if trivial := [kk for kk in topk if kk >= candidates[protocol]]:
            log(
                f"Note: {protocol} evaluation ranks each test item among at most {candidates[protocol]} candidates, "
                f"so HR@K for K = {', '.join(map(str, trivial))} is 1 by construction"
            )
    seen = None
    if "full" in protocols:  # each user's known items (training, and for the test the validation one) left out
        users, items = (torch.tensor(a, device=device) for a in ds.pairs(("train",) if valid else ("train", "valid")))
        seen = seen_index(users, items, ds.n_users)
        del users, items

    def evaluation() -> dict[str, float]:
        out = {}
        if "sampled" in protocols:
            found = evaluate(model, test_users, test_items, test_negatives, ds.n_items, topk, batch_users)
            out.update({f"{prefix}sampled_{name}": v for name, v in found.items()})
        if seen is not None:
            rank = full_ranks(model, test_users, test_items, seen, ds.n_items)
            ranked = metrics_from_ranks(rank, topk, recall=True)
            out.update({f"{prefix}full_{name}": v for name, v in ranked.items()})
        return out

    return evaluation, f"{prefix}{protocols[-1]}_HR@{topk[0]}"


def run_evaluator(ds, model: nn.Module, device: torch.device, e, log: Callable[[str], None] = lambda s: None):
    """(an epoch's evaluation: the test items' metrics, and the validation items' (valid_...) where the data has
    a validation split; the metric that picks the best epoch: validation's unless `e.select_on` is test). `e`: the
    run's EvalConfig."""
    protocols = PROTOCOLS[e.eval]
    batch = e.eval_batch_size or users_per_batch(model, device, ds.eval_negatives.shape[1] + 1)
    test, test_key = evaluator(ds, model, device, protocols, e.topk, batch, log)
    if not len(ds.valid_users):
        return test, test_key
    valid, valid_key = evaluator(ds, model, device, protocols, e.topk, batch, split="valid")
    return (lambda: {**valid(), **test()}), (valid_key if e.select_on == "valid" else test_key)
