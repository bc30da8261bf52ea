"""Per-epoch training data on the training device: fresh negatives, a shuffle, and batches as slices.

Ids are held as int32 (the step takes them as int64, a batch at a time): an epoch's users and items take 8 bytes
a sample, not 16 (at 200M interactions and 4 negatives, 8 GB of device memory, not 16), and on a GPU negatives are
drawn in chunks. Negatives are exact: never
an item the user interacted with (train or held-out test, so the test item is never shown to the model in any
form). Membership is a binary search in the sorted keys user * n_items + item, so no dense users x items matrix is
ever built. Rejected draws are redrawn until none is left; that loop syncs with the host once per round, a few
times per epoch, never per batch.

By default every sample is shuffled on its own, as the NCF paper's code does. shuffle="groups" shuffles the
positives instead, each followed by its own negatives (which share its user): every sample is still seen once
per epoch, but a batch of B samples holds at most about B / (1 + negatives) distinct users, and the CPU step
encodes each distinct user once (kernels.encode_rows): fewer table rows per step and a faster step, but less
varied batches and a little less accuracy (figures in docs/performance.md).
"""

from __future__ import annotations

import torch

from scalerec.errors import UserError

SHUFFLES = ("samples", "groups")  # the epoch orders, default first (config.TrainConfig.shuffle)
# Negatives drawn at once on a GPU (EpochSampler.epoch_negatives): at most about 0.5 GB of the draw's own tensors.
DRAW_CHUNK = 2**24


class EpochSampler:
    def __init__(
        self,
        train_users,
        train_items,
        positive_keys,
        n_items: int,
        negatives: int,
        device: torch.device,
        seed: int,
        shuffle: str = "samples",
    ) -> None:
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be samples or groups, got {shuffle!r}")
        self.shuffle = shuffle
        self.users = torch.tensor(train_users, dtype=torch.int32, device=device)
        self.items = torch.tensor(train_items, dtype=torch.int32, device=device)
        self.keys = torch.tensor(positive_keys, dtype=torch.int64, device=device)  # sorted
        self.n_items, self.negatives, self.device = n_items, negatives, device
        per_user = torch.bincount(self.keys // n_items)
        if negatives and bool((per_user >= n_items).any()):  # no item left to draw: rejection would never end
            user = int((per_user >= n_items).nonzero()[0])
            raise UserError(f"user {user} has interacted with all {n_items} items: no train negative can be drawn")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.neg_users = self.users.repeat(negatives)  # the users of an epoch's negatives never change
        self.epoch_users = torch.cat([self.users, self.neg_users])
        self.labels = torch.zeros(len(self.epoch_users), dtype=torch.float32, device=device)
        self.labels[: len(self.users)] = 1.0

    @property
    def samples_per_epoch(self) -> int:
        return len(self.labels)

    def epoch_negatives(self) -> torch.Tensor:
        """The epoch's negatives (int32), on a GPU drawn in chunks of DRAW_CHUNK users: what the draw holds at once
        (its items, their keys and the membership search, 8 bytes each) stays a chunk's, not the epoch's."""
        out = torch.empty(len(self.neg_users), dtype=torch.int32, device=self.device)
        # on the CPU in one draw: the random stream its seeds gave in earlier versions, so their checkpoints resume
        chunk = DRAW_CHUNK if self.device.type == "cuda" else max(1, len(self.neg_users))
        for s in range(0, len(self.neg_users), chunk):
            out[s : s + chunk] = self.negatives_for(self.neg_users[s : s + chunk])
        return out

    def negatives_for(self, users: torch.Tensor) -> torch.Tensor:
        """One uniformly drawn non-interacted item per entry of `users`."""
        items = torch.randint(0, self.n_items, users.shape, device=self.device, generator=self.generator)
        bad = self.is_positive(users, items)
        while bool(bad.any()):  # host sync, a few rounds per epoch
            idx = bad.nonzero().squeeze(1)
            redraw = torch.randint(0, self.n_items, idx.shape, device=self.device, generator=self.generator)
            items[idx] = redraw
            bad[idx] = self.is_positive(users[idx], redraw)
        return items

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        q = users.long() * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=len(self.keys) - 1)
        return self.keys.index_select(0, pos) == q  # index_select: faster than advanced indexing on the CPU

    def epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items, labels) for one epoch: positives and fresh negatives, shuffled by group or by sample."""
        items = torch.cat([self.items, self.epoch_negatives()])
        # int32 on a GPU where it holds every sample: half the memory, and any order will do there; the CPU's stays
        # the stream its seeds gave
        index = torch.int32 if self.device.type == "cuda" and len(items) < 2**31 else torch.int64
        if self.shuffle == "groups":  # sample k of positive p sits at p + k * positives (negatives_for's layout)
            n = len(self.items)
            order = torch.randperm(n, device=self.device, generator=self.generator, dtype=index)
            perm = (order[:, None] + n * torch.arange(1 + self.negatives, device=self.device, dtype=index)).reshape(-1)
        else:
            perm = torch.randperm(len(items), device=self.device, generator=self.generator, dtype=index)
        return tuple(t.index_select(0, perm) for t in (self.epoch_users, items, self.labels))
