import math

import pytest
import torch

from scalerec.evaluate import NAN_RANK, evaluate, hit_rate, metrics_from_ranks, ndcg, positive_rank, ranks
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
