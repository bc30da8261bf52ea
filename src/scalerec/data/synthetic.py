"""Synthetic implicit feedback with a planted preference structure, deterministic for a seed, at any scale.

Users and items belong to latent clusters. A user draws its items without repeats: most from its own cluster,
the rest from the whole catalogue, in both cases in proportion to a log-normal item popularity, so a model that
learns the clusters ranks the held-out item well above chance, and popularity alone does much less well.
Both skews are fitted to the NCF paper's ML-1M training file (the generator at ML-1M's shape in brackets): a
user's count is a floor plus a gamma-distributed part, with 10/50/90% quantiles of 26/95/399 (24/96/392) and
a minimum of 19 (20); the top 1/10/50% of items hold 8.7/44/92% of the interactions (9.2/45/91%). A batch of
4096 samples of an epoch holds 2,345 distinct users there (2,375): they set the cost of the CPU step's first
MLP layer.
The work is O(interactions log interactions), never users x items: ML-20M's shape (138,493 users, 26,744 items,
~20M interactions) takes about a minute.
"""

from __future__ import annotations

import numpy as np

VERSION = 3  # part of the cache key: bump it when the same seed would give other data
IN_CLUSTER = 0.8  # the share of a user's draws from its own cluster
COUNT_FLOOR = 0.12  # every user's count starts at this share of the mean (MovieLens keeps users with 20 or more)
COUNT_SHAPE = 0.6  # the rest is gamma-distributed with this shape (below 1: many users near the floor)
POPULARITY_SIGMA = 2.0  # log-normal spread of the items' popularity


def generate(n_users: int, n_items: int, mean_interactions: int, seed: int, n_clusters: int = 16):
    """Return (users, items, timestamps) arrays of distinct user-item pairs, every user with at least 2."""
    rng = np.random.default_rng(seed)
    n_clusters = min(n_clusters, n_items)
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)  # every cluster holds items
    user_cluster = rng.integers(0, n_clusters, n_users)
    popularity = np.exp(rng.normal(0.0, POPULARITY_SIGMA, n_items))
    floor = max(2, round(mean_interactions * COUNT_FLOOR))
    counts = rng.gamma(COUNT_SHAPE, 1.0, n_users)
    counts = floor + np.round(counts * (mean_interactions - floor) / counts.mean())
    counts = np.clip(counts, 2, n_items // 2).astype(np.int64)

    # Inverse-CDF sampling: the catalogue sorted by cluster, each cluster's popularity summing to 1, so cluster
    # c spans (c, c + 1] of the cumulative sum; and the whole catalogue's popularity summing to 1.
    by_cluster = np.argsort(item_cluster, kind="stable")
    share = popularity[by_cluster] / np.bincount(item_cluster, weights=popularity)[item_cluster[by_cluster]]
    in_cluster_cdf = np.cumsum(share)
    catalogue_cdf = np.cumsum(popularity) / popularity.sum()

    accepted = []  # arrays of user * n_items + item
    missing, extra = counts.copy(), 1.5
    while (pending := np.flatnonzero(missing)).size:
        # Draw more than each pending user still needs (some repeat an item), keep the first new ones. A user
        # who needs much of its cluster repeats more and more often: each round draws twice as many extra.
        draws = np.repeat(pending, (missing[pending] * extra).astype(np.int64) + 2)
        extra *= 2
        x = rng.random(len(draws))
        own = rng.random(len(draws)) < IN_CLUSTER
        at = np.searchsorted(in_cluster_cdf, user_cluster[draws] + x).clip(max=n_items - 1)
        items = np.where(own, by_cluster[at], np.searchsorted(catalogue_cdf, x).clip(max=n_items - 1))
        new = draws * n_items + items
        owned = np.concatenate(accepted) if accepted else np.empty(0, dtype=np.int64)
        fresh = ~np.isin(new, owned[missing[owned // n_items] > 0])  # not what a pending user already has
        new, first = np.unique(new[fresh], return_index=True)  # sorted by user, then item
        order = np.argsort(np.flatnonzero(fresh)[first], kind="stable")  # back to draw order...
        order = order[np.argsort(new[order] // n_items, kind="stable")]  # ...within each user
        user = new[order] // n_items
        rank = np.arange(len(order)) - np.searchsorted(user, user)  # position among the user's new items
        take = new[order][rank < missing[user]]
        accepted.append(take)
        missing -= np.bincount(take // n_items, minlength=n_users)
    # Every item is someone's, as in MovieLens' releases (else preparation would drop it and shrink the shape):
    # the few that no draw reached go to random users.
    unseen = np.flatnonzero(np.bincount(np.concatenate(accepted) % n_items, minlength=n_items) == 0)
    accepted.append(rng.integers(0, n_users, len(unseen)) * n_items + unseen)
    keys = np.sort(np.concatenate(accepted))
    users, items = keys // n_items, keys % n_items
    timestamps = rng.permutation(len(keys)).astype(np.float64)
    return users, items, timestamps


def write_ratings_csv(
    path, n_users: int, n_items: int, mean_interactions: int, seed: int, rows: int | None = None, blocks: int = 1
) -> int:
    """Write synthetic interactions as a MovieLens ratings.csv (userId,movieId,rating,timestamp; sorted by user,
    ids from 1), so that preparation is measured on the real parsing path. `blocks` stacks that many generated
    datasets of `n_users` users each (other seeds), which keeps memory per block; `rows` keeps that many rows of
    the first block, drawn at random. Written to a temporary name, then renamed. Returns the rows written."""
    import os
    from pathlib import Path

    import pandas as pd

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    with open(tmp, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for block in range(blocks):
            users, items, order = generate(n_users, n_items, mean_interactions, seed + block)
            rng = np.random.default_rng(seed + block)
            if rows is not None and block == 0 and rows < len(users):  # a random `rows` of them, in order
                kept = np.sort(rng.choice(len(users), rows, replace=False))
                users, items, order = users[kept], items[kept], order[kept]
            frame = pd.DataFrame(
                {
                    "userId": users + 1 + block * n_users,
                    "movieId": items + 1,
                    "rating": rng.integers(1, 11, len(users)) / 2,  # 0.5 to 5 stars, as in ML-20M
                    "timestamp": 789_652_009 + order.astype(np.int64) * 20,  # from 1995-01-09, in seconds
                }
            )
            frame.to_csv(f, header=False, index=False, chunksize=1_000_000)
            written += len(frame)
    os.replace(tmp, path)
    return written
