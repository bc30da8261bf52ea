"""What `scalerec data info SOURCE` prints about a prepared dataset: sizes, density, time range, the split, and
what preparation dropped and why."""

from __future__ import annotations

import datetime

import numpy as np

from scalerec.data.prepare import Dataset, count


def _when(value: float, unit: str | None) -> str:
    """A timestamp as a UTC date where it reads as one: nanoseconds from dates, or plausible Unix seconds."""
    seconds = value / 1e9 if unit == "ns" else value
    if unit == "ns" or 1e8 <= value <= 4.2e9:  # 1973 to 2103 in seconds: MovieLens' stamps are Unix seconds
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{value:g}"


def describe(ds: Dataset) -> list[str]:
    """Lines of text about a dataset, for people."""
    train, valid, test = len(ds.train_users), len(ds.valid_users), len(ds.test_users)
    interactions = train + valid + test
    users, items = ds.pairs()
    per_user, per_item = np.bincount(users, minlength=ds.n_users), np.bincount(items, minlength=ds.n_items)
    lines = [
        f"Dataset: {ds.name}",
        f"Source: {ds.source}",
        f"Users: {ds.n_users:,}  Items: {ds.n_items:,}  Interactions: {interactions:,}  "
        f"Density: {interactions / max(1, ds.n_users * ds.n_items):.4%}",
        f"Per user: min {per_user.min():,}, median {int(np.median(per_user)):,}, max {per_user.max():,}; "
        f"per item: min {per_item.min():,}, median {int(np.median(per_item)):,}, max {per_item.max():,}"
        + (
            f" ({count(idle, 'item')} left with no interaction, still {'a candidate' if idle == 1 else 'candidates'})"
            if (idle := int((per_item == 0).sum()))
            else ""
        ),
    ]
    stats = ds.stats or {}
    if "rows" in stats:
        lines.append(f"Rows read: {stats['rows']:,}")
    if "time_min" in stats:
        unit = stats.get("time_unit")
        lines.append(f"Time: {_when(stats['time_min'], unit)} to {_when(stats['time_max'], unit)}")
    else:
        lines.append("Time: none in the source")
    negatives = ds.eval_negatives.shape[1] if ds.eval_negatives.ndim == 2 else 0
    lines.append(
        f"Split (leave-one-out): {train:,} training interactions, {test:,} test users with one held-out item "
        f"each, {negatives} evaluation negatives per test user"
        + (f"; {valid:,} validation users with their second-latest item held out too" if valid else "")
    )
    lines += [f"Dropped or adjusted: {note}" for note in ds.notes] or ["Dropped or adjusted: nothing"]
    return lines
