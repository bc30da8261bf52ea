"""Synthetic implicit feedback with a planted preference structure, deterministic for a seed.

Users and items belong to latent clusters; a user picks items with probability proportional to
exp(affinity) * popularity (Zipf-like), so a model that learns the clusters ranks the held-out item well above
chance, and popularity alone does much less well. Per-user counts are skewed like MovieLens (log-normal).
"""

from __future__ import annotations

import numpy as np


def generate(n_users: int, n_items: int, mean_interactions: int, seed: int, n_clusters: int = 16):
    """Return (users, items, timestamps) arrays of distinct user-item pairs, every user with at least 2."""
    rng = np.random.default_rng(seed)
    dim = 16
    centers = rng.normal(size=(n_clusters, dim))
    user_vec = centers[rng.integers(0, n_clusters, n_users)] + 0.3 * rng.normal(size=(n_users, dim))
    item_vec = centers[rng.integers(0, n_clusters, n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    popularity = -0.8 * np.log1p(rng.permutation(n_items))  # log of a Zipf-like weight
    counts = np.exp(rng.normal(0.0, 0.8, n_users))
    counts = np.clip(np.round(counts * mean_interactions / counts.mean()), 2, n_items // 2).astype(np.int64)
    kmax = int(counts.max())
    users, items = [], []
    chunk = max(1, (1 << 24) // n_items)  # bound the users x items score block to ~16M floats
    for start in range(0, n_users, chunk):
        stop = min(n_users, start + chunk)
        logits = 1.5 * user_vec[start:stop] @ item_vec.T / np.sqrt(dim) + popularity
        logits += rng.gumbel(size=logits.shape)  # Gumbel top-k = sampling without replacement
        top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(logits, top, 1), axis=1)
        top = np.take_along_axis(top, order, 1)
        k = counts[start:stop]
        mask = np.arange(kmax) < k[:, None]
        users.append(np.repeat(np.arange(start, stop), k))
        items.append(top[mask])
    users_a, items_a = np.concatenate(users), np.concatenate(items)
    timestamps = rng.permutation(len(users_a)).astype(np.float64)
    return users_a, items_a, timestamps
