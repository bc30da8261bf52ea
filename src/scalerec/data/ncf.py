"""The NCF paper's files (He et al. 2017): NAME.train.rating, NAME.test.rating, NAME.test.negative.

All are tab-separated without a header; ids are already contiguous from 0 and are used as they are, so that
results compare with the paper. The .test.negative file holds `(user,item)` then 99 negative item ids per line.

Known quirk of the upstream ml-1m file: in 156 lines the held-out item also appears among its own 99
negatives. The paper's evaluation code keys scores by item id, so such a repeat is scored once; we do the same
by blanking the repeat (-1, never counted), and say how many were blanked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.data.parsing import read_table
from scalerec.data.prepare import Dataset, sample_eval_negatives
from scalerec.errors import UserError

SUFFIXES = ("train.rating", "test.rating", "test.negative")  # in this order: train, test, test negatives


def files(prefix: str | Path) -> list[Path]:
    """The three files of a prefix, in the order of SUFFIXES."""
    return [Path(f"{prefix}.{s}") for s in SUFFIXES]


RATING_COLUMNS = ["user", "item", "rating", "timestamp"]


def _read_rating(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected the NCF paper's tab-separated {path.name.split('.', 1)[1]})")
    return read_table(path, str(path), "\t", RATING_COLUMNS, {"rating", "timestamp"}, False)


def _read_negatives(path: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(users, positives, negatives[n_rows, 99], file line of each row) from a .test.negative file."""
    text = path.read_bytes().decode("utf-8-sig", "replace")  # a BOM dropped; bad bytes fail as a malformed line
    numbered = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if len(numbered) != n_rows:
        raise UserError(f"{path}: {len(numbered)} lines, expected one per test user ({n_rows})")
    users, positives, negatives = [], [], []
    width = None
    for lineno, line in numbered:
        head, *rest = line.rstrip("\t\r").split("\t")
        try:
            u, i = head.strip("()").split(",")
            users.append(int(u))
            positives.append(int(i))
            negs = [int(x) for x in rest]
        except ValueError:
            raise UserError(
                f"{path}, line {lineno}: expected '(user,item)' then tab-separated integer item ids, got {line[:80]!r}"
            ) from None
        if width is None:
            width = len(negs)
        if len(negs) != width or width == 0:
            raise UserError(f"{path}, line {lineno}: {len(negs)} negatives, expected {width or 'at least 1'}")
        negatives.append(negs)
    lines = [n for n, _ in numbered]
    return np.array(users, np.int64), np.array(positives, np.int64), np.array(negatives, np.int64), lines


def resolve_prefix(data: str | Path) -> Path:
    """PREFIX from what a user may pass: the prefix itself, one of the three files, or the folder holding them."""
    path = Path(data)
    if path.is_dir():
        train = f".{SUFFIXES[0]}"
        found = sorted(path.glob(f"*{train}"))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise UserError(
                f"{path}: {what} *{train} files in this folder; pass --data PREFIX (the path before {train})"
            )
        return Path(str(found[0])[: -len(train)])
    for suffix in SUFFIXES:
        if path.name.endswith(f".{suffix}"):
            return Path(str(path)[: -len(suffix) - 1])
    return path


def is_ncf(data: str | Path) -> bool:
    """Whether `data` names the NCF paper's files: their prefix, one of them, or their folder."""
    try:
        return files(resolve_prefix(data))[0].is_file()
    except UserError:  # a folder without them
        return False


def read_ncf(prefix: str | Path, eval_negatives: int, seed: int) -> Dataset:
    prefix = resolve_prefix(prefix)
    train_path, test_path, neg_path = files(prefix)
    train, test = _read_rating(train_path), _read_rating(test_path)
    tu, ti = train["user"].to_numpy(np.int64), train["item"].to_numpy(np.int64)
    su, si = test["user"].to_numpy(np.int64), test["item"].to_numpy(np.int64)
    for path, arr in ((train_path, tu), (train_path, ti), (test_path, su), (test_path, si)):
        if arr.min() < 0:
            raise UserError(f"{path}: negative id {int(arr.min())}; the NCF files number ids from 0")
    if len(np.unique(su)) != len(su):
        raise UserError(f"{test_path}: a user has more than one test row; leave-one-out expects exactly one")
    n_users = int(max(tu.max(), su.max())) + 1
    n_items = int(max(ti.max(), si.max())) + 1
    notes = []
    if neg_path.is_file():
        nu, npos, negs, lines = _read_negatives(neg_path, len(su))
        if not (np.array_equal(nu, su) and np.array_equal(npos, si)):
            bad = int(np.flatnonzero((nu != su) | (npos != si))[0])
            raise UserError(
                f"{neg_path}, line {lines[bad]}: ({nu[bad]},{npos[bad]}) does not match {test_path} line {bad + 1} "
                f"({su[bad]},{si[bad]})"
            )
        if negs.min() < 0 or negs.max() >= n_items:
            bad_id = int(negs.min()) if negs.min() < 0 else int(negs.max())
            raise UserError(f"{neg_path}: item id {bad_id} outside the items of the rating files (0..{n_items - 1})")
        repeats = negs == si[:, None]
        if repeats.any():
            negs = np.where(repeats, -1, negs)
            notes.append(
                f"{int(repeats.sum())} negatives in {neg_path.name} equal the user's held-out item; scored once, "
                "as the paper's evaluation code does"
            )
        source = f"the NCF paper's files {prefix}.{{train,test}}.rating and its {negs.shape[1]} test negatives"
    else:
        negs = None  # sampled below, once the Dataset can give its positive keys
        source = f"the NCF paper's files {prefix}.{{train,test}}.rating"
        notes.append(
            f"{neg_path.name} not found: {eval_negatives} negatives per user sampled with seed {seed}; "
            "these are not the paper's negatives"
        )
    ds = Dataset(
        name=f"NCF {prefix.name}",
        source=source,
        n_users=n_users,
        n_items=n_items,
        train_users=tu,
        train_items=ti,
        test_users=su,
        test_items=si,
        eval_negatives=negs if negs is not None else np.zeros((0, 0), np.int64),
        notes=notes,
        stats={"rows": len(train) + len(test), "time_unit": None},
    )
    times = np.concatenate([train["timestamp"].to_numpy(), test["timestamp"].to_numpy()])
    ds.stats.update(time_min=times.min().item(), time_max=times.max().item())
    if negs is None:
        ds.eval_negatives = sample_eval_negatives(su, n_items, ds.positive_keys(), eval_negatives, seed)
    return ds
