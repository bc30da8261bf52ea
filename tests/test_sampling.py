import numpy as np
import torch

from scalerec.sampling import EpochSampler


def make(seed=0, negatives=4, n_items=30, shuffle="samples"):
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(12), 8)
    items = np.concatenate([rng.choice(n_items, 8, replace=False) for _ in range(12)])
    test_items = np.array([next(i for i in range(n_items) if i not in set(items[users == u])) for u in range(12)])
    keys = np.unique(np.concatenate([users * n_items + items, np.arange(12) * n_items + test_items]))
    sampler = EpochSampler(users, items, keys, n_items, negatives, torch.device("cpu"), seed, shuffle)
    return sampler, users, items, test_items, keys


def test_epoch_holds_positives_and_exact_negatives_shuffled():
    sampler, users, items, test_items, keys = make()
    u, i, y = sampler.epoch()
    assert len(u) == len(users) * 5 == sampler.samples_per_epoch
    assert y.sum().item() == len(users)
    pos = sorted(zip(u[y == 1].tolist(), i[y == 1].tolist()))
    assert pos == sorted(zip(users.tolist(), items.tolist()))
    neg_keys = (u[y == 0] * 30 + i[y == 0]).numpy()
    assert not np.isin(neg_keys, keys).any()  # never a train positive nor the held-out item
    assert np.bincount(u[y == 0].numpy()).tolist() == [32] * 12  # 4 negatives per positive
    assert not torch.equal(y, torch.sort(y, descending=True).values)  # shuffled, not positives first


def test_group_shuffle_keeps_each_positive_with_its_own_negatives():
    sampler, users, items, *_ = make(shuffle="groups")
    u, i, y = (t.view(-1, 5) for t in sampler.epoch())
    assert (u == u[:, :1]).all()  # a group's samples share its user
    assert torch.equal(y, torch.tensor([[1.0, 0, 0, 0, 0]]).expand_as(y))
    original = users * 30 + items
    order = (u[:, 0] * 30 + i[:, 0]).numpy()
    assert sorted(order) == sorted(original) and not np.array_equal(order, original)  # positives shuffled


def test_sample_shuffle_mixes_the_groups():
    sampler, *_ = make(shuffle="samples")
    u, _, y = (t.view(-1, 5) for t in sampler.epoch())
    assert not (u == u[:, :1]).all()
    assert y.sum() == len(y) and not (y[:, 0] == 1).all()


def test_an_unknown_shuffle_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="shuffle must be samples or groups"):
        make(shuffle="users")


def test_same_seed_same_epochs_and_fresh_negatives_each_epoch():
    a, *_ = make(seed=3)
    b, *_ = make(seed=3)
    e1a, e1b = a.epoch(), b.epoch()
    assert all(torch.equal(x, y) for x, y in zip(e1a, e1b))
    e2a = a.epoch()
    assert not torch.equal(e1a[1], e2a[1])
    c, *_ = make(seed=4)
    assert not torch.equal(c.epoch()[1], e1a[1])


def test_negatives_cover_every_free_item():
    sampler, users, items, test_items, keys = make(negatives=50)
    u, i, y = sampler.epoch()
    for user in range(12):
        drawn = set(i[(u == user) & (y == 0)].tolist())
        free = set(range(30)) - set(items[users == user].tolist()) - {int(test_items[user])}
        assert drawn == free  # 400 draws over 21 free items: all appear, nothing else does


def test_a_user_who_has_every_item_is_an_error_not_an_endless_loop():
    import pytest

    from scalerec.errors import UserError

    users = np.array([0, 0, 0, 1])
    items = np.array([0, 1, 2, 0])
    keys = np.unique(users * 3 + items)
    with pytest.raises(UserError, match="user 0 has interacted with all 3 items"):
        EpochSampler(users, items, keys, 3, 4, torch.device("cpu"), 0)


def test_the_config_offers_the_orders_the_sampler_knows_default_first():
    import typing

    from scalerec.config import TrainConfig
    from scalerec.sampling import SHUFFLES

    assert typing.get_args(typing.get_type_hints(TrainConfig)["shuffle"]) == SHUFFLES
    assert TrainConfig().shuffle == SHUFFLES[0]


def test_the_epoch_holds_int32_ids_and_draws_its_negatives_in_chunks(monkeypatch):
    import scalerec.sampling

    u, i, y = make()[0].epoch()
    assert u.dtype == i.dtype == torch.int32  # half an int64 epoch's memory
    monkeypatch.setattr(scalerec.sampling, "DRAW_CHUNK", 7)  # 384 negatives in 55 chunks
    sampler, users, _, _, keys = make()
    u, i, y = sampler.epoch()
    negatives = (u[y == 0].long() * 30 + i[y == 0]).numpy()
    assert len(negatives) == 4 * len(users) and not np.isin(negatives, keys).any()  # exact in every chunk
    assert np.bincount(u[y == 0].numpy()).tolist() == [32] * 12
