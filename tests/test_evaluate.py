import math

import pytest
import torch

from scalerec.metrics import (
    NAN_RANK,
    evaluate,
    full_ranks,
    hit_rate,
    metrics_from_ranks,
    ndcg,
    positive_rank,
    ranks,
    seen_index,
)
from scalerec.model import build_model


def test_rank_counts_negatives_scoring_at_least_the_positive():
    pos = torch.tensor([0.9, 0.5, 0.1])
    neg = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.4, 0.7], [0.5, 0.6, 0.7]])
    assert positive_rank(pos, neg).tolist() == [0, 2, 3]


def test_ties_count_against_the_positive():
    pos = torch.tensor([0.5, 0.5])
    neg = torch.tensor([[0.5, 0.1, 0.1], [0.5, 0.5, 0.5]])
    assert positive_rank(pos, neg).tolist() == [1, 3]


def test_constant_model_scores_zero_hit_rate():
    pos = torch.zeros(50)
    neg = torch.zeros(50, 100)
    rank = positive_rank(pos, neg)
    assert hit_rate(rank, 10).item() == 0.0
    assert ndcg(rank, 10).item() == 0.0


def test_nan_positive_ranks_last_and_invalid_slots_never_count():
    pos = torch.tensor([float("nan"), 0.5])
    neg = torch.tensor([[0.1, 0.2], [0.9, 0.1]])
    valid = torch.tensor([[True, True], [False, True]])
    assert positive_rank(pos, neg, valid).tolist() == [NAN_RANK, 0]


def test_hr_and_ndcg_against_hand_computed_values():
    rank = torch.tensor([0, 1, 9, 10, 50])
    m = metrics_from_ranks(rank, (1, 10))
    assert m["HR@1"] == pytest.approx(1 / 5)
    assert m["NDCG@1"] == pytest.approx(1 / 5)
    assert m["HR@10"] == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert m["NDCG@10"] == pytest.approx(expected)


class Lookup(torch.nn.Module):
    """A model whose score is a fixed table, to check evaluate() end to end."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def encode_users(self, users):
        return (users,)

    def encode_items(self, items):
        return (items,)

    def interact(self, u, i):
        return self.table[u[0], i[0]]


def test_evaluate_ranks_every_user_in_batches():
    torch.manual_seed(0)
    table = torch.rand(7, 30)
    users = torch.arange(7)
    positives = torch.randint(0, 30, (7,))
    negatives = torch.stack([torch.randperm(30)[:12] for _ in range(7)])
    negatives[negatives == positives[:, None]] = -1
    expected = []
    for u in range(7):
        p = table[u, positives[u]]
        negs = [table[u, j] for j in negatives[u].tolist() if j >= 0]
        expected.append(sum(float(s) >= float(p) for s in negs))
    got = ranks(Lookup(table), users, positives, negatives, 30, batch_users=3)
    assert got.tolist() == expected
    m = evaluate(Lookup(table), users, positives, negatives, 30, ks=(5, 10), batch_users=2)
    assert m["HR@5"] == pytest.approx(sum(r < 5 for r in expected) / 7)


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp", "mf"])
def test_batched_candidate_scores_equal_the_forward_pass(name):
    torch.manual_seed(0)
    model = build_model(name, 20, 40, 8, (16, 16, 8), 0.0)
    users = torch.arange(20)
    positives = torch.randint(0, 40, (20,))
    negatives = torch.randint(0, 40, (20, 9))
    with torch.no_grad():
        cand = torch.cat([positives[:, None], negatives], 1)
        scores = model(users[:, None].expand_as(cand).reshape(-1), cand.reshape(-1)).view(20, 10)
    expected = positive_rank(scores[:, 0], scores[:, 1:])
    assert ranks(model, users, positives, negatives, 40, batch_users=6).tolist() == expected.tolist()


class Grid(Lookup):
    """Lookup with the full-ranking interface: every user's row of the table."""

    def score_grid(self, u, i):
        return self.table[u[0]][:, i[0]]


def brute_full_rank(table, users, positives, train_pairs):
    """Rank of each positive among all items but the user's training items and itself, ties against it."""
    out = []
    for u, p in zip(users.tolist(), positives.tolist()):
        seen = {i for uu, i in train_pairs if uu == u}
        others = [j for j in range(table.shape[1]) if j != p and j not in seen]
        out.append(sum(float(table[u, j]) >= float(table[u, p]) for j in others))
    return out


def test_seen_index_groups_each_users_training_items():
    users = torch.tensor([2, 0, 2, 1, 0, 2])
    items = torch.tensor([5, 1, 6, 3, 2, 7])
    offsets, grouped = seen_index(users, items, 4)
    assert offsets.tolist() == [0, 2, 3, 6, 6]
    assert [sorted(grouped[offsets[u] : offsets[u + 1]].tolist()) for u in range(4)] == [[1, 2], [3], [5, 6, 7], []]


def test_full_ranking_leaves_out_training_items_and_counts_ties_against_the_positive():
    torch.manual_seed(0)
    table = torch.randint(0, 6, (9, 25)).float()  # few distinct scores: many ties
    users = torch.tensor([4, 0, 8, 3, 7])  # not in id order
    positives = torch.randint(0, 25, (5,))
    train_pairs = [(u, i) for u in range(9) for i in torch.randperm(25)[:8].tolist()]
    seen = seen_index(torch.tensor([u for u, _ in train_pairs]), torch.tensor([i for _, i in train_pairs]), 9)
    expected = brute_full_rank(table, users, positives, train_pairs)
    for per_batch in (25, 50, 10**6):  # one, two and all users per batch
        assert full_ranks(Grid(table), users, positives, seen, 25, scores_per_batch=per_batch).tolist() == expected
    constant = full_ranks(Grid(torch.zeros(9, 25)), users, positives, seen, 25)
    assert hit_rate(constant, 10) == 0  # every other unseen item ties with the positive, and wins


def test_full_ranking_nan_positive_ranks_last():
    table = torch.rand(2, 6)
    table[1, 3] = float("nan")
    seen = seen_index(torch.tensor([0]), torch.tensor([1]), 2)
    got = full_ranks(Grid(table), torch.tensor([0, 1]), torch.tensor([2, 3]), seen, 6).tolist()
    assert got[1] == NAN_RANK and got[0] == brute_full_rank(table, torch.tensor([0]), torch.tensor([2]), [(0, 1)])[0]


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp", "mf"])
def test_score_grid_is_interact_on_every_pair(name):
    torch.manual_seed(0)
    model = build_model(name, 7, 30, 8, (16, 16, 8), 0.0).eval()
    users, items = torch.arange(7), torch.arange(30)
    with torch.no_grad():
        pairs = model(users.repeat_interleave(30), items.repeat(7)).view(7, 30)
        kw = {"pairs_per_tile": 20} if name != "mf" else {}  # tiles of 2 items for 7 users: 15 tiles
        grid = model.score_grid(model.encode_users(users), model.encode_items(items), **kw)
    torch.testing.assert_close(grid, pairs, rtol=1e-5, atol=1e-6)


def test_full_metrics_report_recall_equal_to_the_hit_rate_with_one_held_out_item():
    m = metrics_from_ranks(torch.tensor([0, 3, 12]), (10,), recall=True)
    assert m["Recall@10"] == m["HR@10"] == pytest.approx(2 / 3)


def test_scoring_tiles_and_sampled_batches_are_sized_per_device():
    from scalerec.metrics import users_per_batch
    from scalerec.model import CPU_TILE_PAIRS, tile_pairs

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device object: no GPU needed to size for one
    narrow, wide = build_model("neumf", 7, 30, 8, (16, 64, 32), 0.0), build_model("neumf", 7, 30, 8, (16, 256, 64), 0.0)
    assert tile_pairs(narrow, cpu) == tile_pairs(wide, cpu) == CPU_TILE_PAIRS  # activations in cache
    assert tile_pairs(narrow, gpu) == 2**22 and tile_pairs(wide, gpu) == 2**20  # 1 GB of first-layer activations
    assert users_per_batch(narrow, cpu, 100) == 16
    assert users_per_batch(narrow, gpu, 100) == 2**22 // 100  # ML-20M's 138k users in 4 batches, not 8,600
    assert tile_pairs(build_model("mf", 7, 30, 8, (16, 8), 0.0), gpu) >= 2**20
