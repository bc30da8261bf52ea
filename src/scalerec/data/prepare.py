"""From raw interactions to a Dataset: implicit feedback, id remap, leave-one-out, evaluation negatives, cache.

Conventions (see DESIGN.md, "Numbers that define correct"):
- every row is a positive (implicit feedback), whatever its rating;
- a user-item pair that occurs more than once is kept once, at its latest time;
- leave-one-out: each user's latest interaction is the test item; among rows with the same latest timestamp
  the one that comes last in the file wins (a stable, documented order);
- users with a single interaction have nothing to train on and are dropped, with a count in the log;
- evaluation negatives: N items per test user, drawn once with a fixed seed, without duplicates, never an
  item the user interacted with (train or test). A slot holding -1 means "no candidate" and never counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scalerec import __version__
from scalerec.errors import UserError
from scalerec.files import TMP, WriteError, one_at_a_time, remove_orphans, write_with, writing_in

CACHE_VERSION = 3  # bump when the processing changes, so old caches are rebuilt (and run folders' data unread)
# A user needs this many interactions for a validation item: one to train on, one to validate, one to test
VALID_MIN = 3


@dataclass
class Dataset:
    """A leave-one-out split with contiguous ids (users 0..n_users-1, items 0..n_items-1)."""

    name: str
    """Human name, e.g. MovieLens-100K."""
    source: str
    """Where the data came from."""
    n_users: int
    n_items: int
    train_users: np.ndarray
    """int64, one per training positive, grouped by user."""
    train_items: np.ndarray
    """int64, aligned with train_users."""
    test_users: np.ndarray
    """int64, the users that have a held-out item."""
    test_items: np.ndarray
    """int64, each test user's held-out item."""
    eval_negatives: np.ndarray
    """int64 (len(test_users), N) candidates scored against the test item; -1 marks an empty slot."""
    valid_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64, the users that have a validation item (empty without a validation split)."""
    valid_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64, each validation user's second-latest item, held out from training as the test item is."""
    valid_negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    """int64 (len(valid_users), N) candidates scored against the validation item."""
    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Raw user id of each contiguous user id (empty when the file's ids are used as they are)."""
    item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Raw item id of each contiguous item id (empty when the file's ids are used as they are)."""
    item_titles: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    """Each contiguous item's title, where the source has them (MovieLens' u.item, movies.dat, movies.csv; "" for
    an item without one); empty otherwise."""
    notes: list[str] = field(default_factory=list)
    """What was dropped or adjusted while preparing, said once in the log."""
    stats: dict = field(default_factory=dict)
    """About the source, for `scalerec data info`: rows read, and the first and last time where there are times
    (time_unit "ns" where they were dates, else None: numbers as in the file)."""

    def summary(self) -> str:
        return (
            f"Data: {self.name} from {self.source}. #user={self.n_users}, #item={self.n_items}, "
            f"#train={len(self.train_users)}, #test={len(self.test_users)}"
            + (f", #valid={len(self.valid_users)}" if len(self.valid_users) else "")
        )

    def pairs(self, splits: tuple[str, ...] = ("train", "valid", "test")) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of the interactions of the given splits, concatenated in that order."""
        users = np.concatenate([getattr(self, f"{split}_users") for split in splits])
        return users, np.concatenate([getattr(self, f"{split}_items") for split in splits])

    def positive_keys(self) -> np.ndarray:
        """Sorted user * n_items + item of every known interaction (train, validation and test)."""
        users, items = self.pairs()
        return sorted_unique(users * self.n_items + items)

    _INDICES = ("train_users", "train_items", "test_users", "test_items", "eval_negatives")
    _INDICES += ("valid_users", "valid_items", "valid_negatives")
    _ARRAYS = (*_INDICES, "user_ids", "item_ids", "item_titles")

    def save(self, path: Path) -> None:
        """Write to `path` atomically: a temporary file in the same folder, then a rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "source": self.source,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "notes": self.notes,
            "stats": self.stats,
            "version": CACHE_VERSION,
        }
        arrays = {k: getattr(self, k) for k in self._ARRAYS}
        for k in self._INDICES:  # contiguous ids: int32 halves the file; load makes them int64 again
            arrays[k] = arrays[k].astype(np.int32) if max(self.n_users, self.n_items) < 2**31 else arrays[k]
        write_with(path, lambda tmp: np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: Path) -> Dataset:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.pop("version", None) != CACHE_VERSION:
                raise ValueError("stale cache version")
            arrays = {k: z[k].astype(np.int64) if k in cls._INDICES else z[k] for k in cls._ARRAYS if k in z.files}
            return cls(**meta, **arrays)  # a file without a validation split has no valid_* arrays


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique(values) by a sort: numpy 2's hash-based unique is several times slower on ML-20M's keys
    (benchmarks/prepare_speed.py)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def is_member(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Boolean mask: which queries occur in sorted_keys (binary search, no dense matrix)."""
    if len(sorted_keys) == 0:
        return np.zeros(queries.shape, bool)
    pos = np.searchsorted(sorted_keys, queries)
    return sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == queries


def sample_eval_negatives(
    users: np.ndarray, n_items: int, positive_keys: np.ndarray, n: int, seed: int, user_ids: np.ndarray | None = None
) -> np.ndarray:
    """For each user, n distinct items it never interacted with, uniformly at random, deterministic for a seed.

    Vectorized rejection: draw a row of candidates per user, drop positives and repeats (keeping first
    occurrences, so the kept ones are a uniform sample without replacement), take the first n; rows that came
    up short are drawn again with more candidates. Users with fewer than 2n free items are drawn exactly.
    `user_ids` (raw id per contiguous id) only names the user in an error.
    """
    rng = np.random.default_rng(seed)
    out = np.full((len(users), n), -1, np.int64)
    counts = np.bincount(positive_keys // n_items, minlength=int(users.max(initial=0)) + 1)[users]
    free = n_items - counts
    if (free < n).any():
        i = int(np.flatnonzero(free < n)[0])
        who = users[i] if user_ids is None or not len(user_ids) else user_ids[users[i]]
        who = repr(str(who)) if isinstance(who, str) else who  # text ids quoted: user 'user 48'
        raise UserError(
            f"user {who} has interacted with {counts[i]} of {n_items} items, leaving {free[i]} "
            f"for {n} evaluation negatives; lower --eval-negatives"
        )
    exact = np.flatnonzero(free < 2 * n)
    for i in exact:  # rare: users who interacted with most of the catalogue
        taken = positive_keys[(positive_keys >= users[i] * n_items) & (positive_keys < (users[i] + 1) * n_items)]
        out[i] = rng.choice(np.setdiff1d(np.arange(n_items), taken - users[i] * n_items), n, replace=False)
    pending = np.setdiff1d(np.arange(len(users)), exact)
    width = n + n // 4 + 16  # enough for most users at once; the ones left short draw again, twice as many
    while len(pending):
        for chunk in np.array_split(pending, max(1, len(pending) * width // (1 << 24))):
            cand = rng.integers(0, n_items, (len(chunk), width))
            keep = ~is_member(positive_keys, users[chunk, None] * n_items + cand)
            order = np.argsort(cand, axis=1, kind="stable")
            ranked = np.take_along_axis(cand, order, 1)
            repeat = np.zeros_like(keep)
            np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], 1)
            keep &= ~repeat
            first = np.argsort(~keep, axis=1, kind="stable")[:, :n]
            ok = keep.sum(1) >= n
            out[chunk[ok]] = np.take_along_axis(cand, first, 1)[ok]
        pending = pending[(out[pending] < 0).any(1)]
        width *= 2
    return out


def _contiguous(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's contiguous id as int32, the raw id of each contiguous id, ascending): numbers or strings."""
    if ids.dtype.kind in "iu" and len(ids) and ids.min() >= 0 and int(ids.max()) < 2 * len(ids) + (1 << 20):
        # dense non-negative ids (MovieLens'): a lookup table indexed by id, no hashing, no int64 codes
        present = np.zeros(int(ids.max()) + 1, bool)
        present[ids] = True
        lookup = np.cumsum(present, dtype=np.int32)
        lookup -= 1
        return lookup[ids], np.flatnonzero(present)
    codes, uniques = pd.factorize(ids, sort=True)
    uniques = np.asarray(uniques)
    if uniques.dtype.kind in "iu":
        uniques = uniques.astype(np.int64)
    elif uniques.dtype.kind != "U":  # strings: a fixed-width array, so that the cache needs no pickle
        uniques = uniques.astype(str)
    return codes.astype(np.int32 if len(uniques) < 2**31 else np.int64), uniques


def count(n: int, noun: str) -> str:
    """ "1 user", "2,000 users"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _by_user_then_time(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """The stable order by (user, time): one argsort of a combined int64 key where the times are integers that
    fit beside the user (MovieLens' seconds, nanoseconds of dates over a few years), else a lexsort."""
    whole = timestamps.dtype.kind in "iu" or (len(users) and np.array_equal(timestamps, np.floor(timestamps)))
    if len(users) and whole:
        low, high = timestamps.min(), timestamps.max()
        span = int(high) - int(low) + 1
        exact = timestamps.dtype.kind in "iu" or span <= 2**53  # float64 differences of whole numbers are exact
        if exact and span * (int(users.max()) + 1) < 2**62:
            key = users.astype(np.int64)  # built in place: a 200M-row file holds one int64 key, not four
            key *= span
            if timestamps.dtype.kind in "iu":
                key += timestamps
                key -= int(low)
            else:
                key += (timestamps.astype(np.float64) - float(low)).astype(np.int64)
            return np.argsort(key, kind="stable")
    return np.lexsort((timestamps, users))


def from_interactions(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray | None,
    name: str,
    source: str,
    eval_negatives: int,
    seed: int,
    min_user_interactions: int = 2,
    min_item_interactions: int = 1,
    time_unit: str | None = None,
    user_names: np.ndarray | None = None,
    item_names: np.ndarray | None = None,
    valid: bool = False,
) -> Dataset:
    """Implicit feedback, contiguous ids, leave-one-out by time, sampled evaluation negatives. With `valid`, each
    user's second-latest interaction is held out as a validation item too (users with fewer than VALID_MIN keep a
    test item only), with negatives of its own.

    Users with fewer than `min_user_interactions` distinct items and items with fewer than
    `min_item_interactions` users are dropped, repeatedly until none is left (a k-core). Without timestamps the
    held-out item of each user is drawn at random with `seed`. With `user_names` (`item_names`), `users` (`items`)
    are positions in those sorted raw ids, as a table of text ids is read."""
    notes = []
    n_rows = len(users)
    u, user_ids = _contiguous(users)
    i, item_ids = _contiguous(items)
    if user_names is not None:
        user_ids = user_names[user_ids]
    if item_names is not None:
        item_ids = item_names[item_ids]
    n_items = len(item_ids)
    untimed = timestamps is None
    stats = {"rows": n_rows, "time_unit": time_unit}
    if untimed:
        notes.append(f"no timestamps: each user's held-out item drawn at random (seed {seed})")
        timestamps = np.zeros(n_rows, np.int32)
    # Sort by user, then time, then file position (a stable sort): the last row of a user is its test item.
    # u and i are int32 (4 bytes a row); products that can pass 2**31 are taken in int64.
    order = _by_user_then_time(u, timestamps)
    u, i, t = u[order], i[order], timestamps[order]
    del order
    u, i, t = _latest_of_each_pair(u, i, t, n_items, notes)
    if untimed:  # the held-out row: a random one of each user's
        shuffled = np.lexsort((np.random.default_rng(seed).random(len(u)), u))
        u, i = u[shuffled], i[shuffled]
    u, i, t, user_ids, item_ids = _k_core(u, i, t, user_ids, item_ids, min_user_interactions, min_item_interactions,
                                          source, notes)  # fmt: skip
    n_items = len(item_ids)
    if not untimed:  # of the interactions kept
        stats.update(time_min=t.min().item(), time_max=t.max().item())
    is_test, is_valid = _held_out(u, len(user_ids), valid, notes)
    held = is_test | is_valid
    ds = Dataset(
        name=name,
        source=source,
        n_users=len(user_ids),
        n_items=n_items,
        train_users=u[~held].astype(np.int64, copy=False),
        train_items=i[~held].astype(np.int64, copy=False),
        test_users=u[is_test].astype(np.int64, copy=False),
        test_items=i[is_test].astype(np.int64, copy=False),
        eval_negatives=np.zeros((0, 0), np.int64),
        valid_users=u[is_valid].astype(np.int64, copy=False),
        valid_items=i[is_valid].astype(np.int64, copy=False),
        user_ids=user_ids,
        item_ids=item_ids,
        notes=notes,
        stats=stats,
    )
    try:
        keys = ds.positive_keys()
        ds.eval_negatives = sample_eval_negatives(ds.test_users, n_items, keys, eval_negatives, seed, user_ids=user_ids)
        if valid:  # a stream of their own: the test negatives stay those of a run without validation
            ds.valid_negatives = sample_eval_negatives(
                ds.valid_users, n_items, keys, eval_negatives, seed + 1, user_ids=user_ids
            )
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return ds


def _held_out(u: np.ndarray, n_users: int, valid: bool, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(is_test, is_valid) masks over rows sorted by user then time: each user's last row, and with `valid` its
    second-to-last where the user has VALID_MIN rows or more (the others counted in `notes`)."""
    counts = np.bincount(u, minlength=n_users)
    last = np.cumsum(counts) - 1
    is_test = np.zeros(len(u), bool)
    is_test[last] = True
    is_valid = np.zeros(len(u), bool)
    if valid:
        is_valid[last[counts >= VALID_MIN] - 1] = True
        if short := int((counts < VALID_MIN).sum()):
            notes.append(f"{count(short, 'user')} with fewer than {VALID_MIN} interactions: a test item, no validation")
    return is_test, is_valid


def _k_core(u, i, t, user_ids, item_ids, min_user: int, min_item: int, source: str, notes: list[str]):
    """(u, i, t, user_ids, item_ids) of the k-core: users with at least `min_user` distinct items and items with at
    least `min_item` users, dropped repeatedly until none is left; users renumbered, items too where min_item > 1.
    A note says what was dropped."""
    min_user_interactions, min_item_interactions, n_items = min_user, min_item, len(item_ids)
    rows = np.ones(len(u), bool)
    while True:  # the k-core: dropping users can leave items short, and the other way round
        user_count = np.bincount(u[rows], minlength=len(user_ids))
        item_count = np.bincount(i[rows], minlength=n_items)
        short = rows & ((user_count[u] < min_user_interactions) | (item_count[i] < min_item_interactions))
        if not short.any():
            break
        rows &= ~short
    if not rows.all():
        user_count = np.bincount(u[rows], minlength=len(user_ids))
        gone_users = int(((user_count == 0) & (np.bincount(u, minlength=len(user_ids)) > 0)).sum())
        default = min_user_interactions == 2 and min_item_interactions <= 1
        if not rows.any():
            if default:
                raise UserError(f"{source}: every user has a single interaction; leave-one-out needs at least two")
            raise UserError(
                f"{source}: no interactions left in the k-core of users with at least {min_user_interactions} and "
                f"items with at least {min_item_interactions}"
            )
        if default:
            notes.append(f"{count(gone_users, 'user')} with a single interaction dropped (nothing left to train on)")
        else:
            left, before = np.bincount(i[rows], minlength=n_items), np.bincount(i, minlength=n_items)
            gone_items = int(((left == 0) & (before > 0)).sum()) if min_item_interactions > 1 else 0
            notes.append(
                f"k-core (users with at least {min_user_interactions} interactions, items with at least "
                f"{min_item_interactions}): dropped {count(gone_users, 'user')}, {count(gone_items, 'item')}, "
                f"{count(int((~rows).sum()), 'row')}"
            )
        kept_users = np.flatnonzero(user_count > 0)
        remap = np.full(len(user_ids), -1, np.int64)
        remap[kept_users] = np.arange(len(kept_users))
        u, i, t, user_ids = remap[u[rows]], i[rows], t[rows], user_ids[kept_users]
        if min_item_interactions > 1:  # the k-core's items only; otherwise every item stays a candidate
            kept_items = np.flatnonzero(np.bincount(i, minlength=n_items) > 0)
            item_remap = np.full(n_items, -1, np.int64)
            item_remap[kept_items] = np.arange(len(kept_items))
            i, item_ids, n_items = item_remap[i], item_ids[kept_items], len(kept_items)
        # Otherwise items seen only by dropped users keep their ids: they stay valid candidates and negatives.
    return u, i, t, user_ids, item_ids


def _latest_of_each_pair(u, i, t, n_items: int, notes: list[str]):
    """Rows sorted by user then time, with each repeated user-item pair kept once: its latest, the last of its run
    once grouped by pair (a stable sort again)."""
    n_rows = len(u)
    key = u.astype(np.int64)
    key *= n_items
    key += i
    by_pair = np.argsort(key, kind="stable")
    key = key[by_pair]
    keep = np.zeros(n_rows, bool)
    keep[by_pair[np.r_[key[1:] != key[:-1], True]]] = True
    del key, by_pair
    if keep.all():
        return u, i, t
    notes.append(f"{count(n_rows - int(keep.sum()), 'repeated user-item row')} kept once, at their latest time")
    return u[keep], i[keep], t[keep]


def cached(cache_dir: Path, identity: dict, build: Callable[[], Dataset], log: Callable[[str], None]) -> Dataset:
    """Load the Dataset cached under a key of `identity` (source file stats and options), or build and cache it."""
    # The package version is part of the key, so a release that prepares data differently never reads old caches.
    stamp = {**identity, "version": CACHE_VERSION, "scalerec": __version__}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"{identity.get('name', 'data')}-{key[:16]}.npz"
    remove_orphans(cache_dir, f"*{TMP}.npz")  # what killed processes left half-written
    if path.is_file() and (ds := _load_cache(path, log)) is not None:
        return ds
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
    # one process prepares the data (the processes of a data-parallel run start together); the others wait for it
    # and read its cache
    with one_at_a_time(cache_dir / f".{path.stem}.lock"):
        if path.is_file() and (ds := _load_cache(path, log, quiet=True)) is not None:
            return ds
        ds = build()
        try:
            with writing_in(cache_dir):
                ds.save(path)
        except WriteError as e:  # names the file
            log(f"Could not write the cache: {e}; continuing without it")
        except OSError as e:
            log(f"Could not write the cache {path} ({e.strerror or e}); continuing without it")
    return ds


def _load_cache(path: Path, log: Callable[[str], None], quiet: bool = False) -> Dataset | None:
    """The cached Dataset, or None where it cannot be read (said unless `quiet`): it is rebuilt, never trusted."""
    try:
        return Dataset.load(path)
    except Exception as e:
        if not quiet:
            log(f"Cache {path} unreadable ({e}); rebuilding")
        return None


def file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
