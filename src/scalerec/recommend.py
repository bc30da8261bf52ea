"""A trained run as a recommender: `load(run)` and `scalerec recommend RUN [--users U ...] [--k K]`.

The run's config.json names its data and model, checkpoint.pt holds the weights of its last epoch. Every item
is encoded once and each user scored against all of them (model.score_grid, as full-ranking evaluation does);
the items a user interacted with (training and held-out) are left out unless asked for. Users and items are named
by the ids of the input file.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from scalerec import checkpoint
from scalerec.assembly import resolve_device
from scalerec.config import PROTOCOLS, Config
from scalerec.data.loading import load_dataset
from scalerec.data.prepare import Dataset
from scalerec.errors import UserError
from scalerec.files import write_atomic
from scalerec.find_batch import available_bytes
from scalerec.kernels import Encoding, onednn_available, set_cpu_matmul
from scalerec.metrics import FULL_SCORES_PER_BATCH, run_evaluator, scored_batches, seen_index, seen_pairs
from scalerec.model import build_model
from scalerec.run_folder import CONFIG, DATA, read_config

# What one recommendation holds while the CSV is made: its item and score (12 bytes) and its CSV line
RECOMMENDATION_BYTES = 64


@torch.no_grad()
def top_k(
    model: torch.nn.Module,
    users: torch.Tensor,
    n_items: int,
    k: int,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    scores_per_batch: int = FULL_SCORES_PER_BATCH,
    item_enc: Encoding | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(items [U, k], scores [U, k]) of the k highest-scoring items of each user, best first; the user's `seen`
    items (seen_index) left out. Fewer than k unseen items: the rest are -1 with score -inf. `item_enc`: every
    item's encoding, where the caller keeps it (scored_batches)."""
    k_items = min(k, n_items)
    items = torch.full((len(users), k), -1, dtype=torch.int64, device=users.device)
    scores = torch.full((len(users), k), float("-inf"), device=users.device)
    for at, grid in scored_batches(model, users, n_items, scores_per_batch, item_enc):
        if seen is not None:
            grid[seen_pairs(seen, users[at])] = float("-inf")
        best, where = grid.topk(k_items, dim=1)  # sorted, highest first
        scores[at, :k_items] = best
        items[at, :k_items] = torch.where(torch.isinf(best), -1, where)
    return items, scores


class Recommender:
    """A trained run's model with the ids of its data (`load` makes one).

    `model`: the torch module, in eval mode; `users`, `items`: the ids the model knows, as in the input file (a
    user's index in `users` is its row in the model); `config`: the run's options; `epoch`: whose weights these are,
    `which`: "best" (the run's best epoch) or "last". Every item's encoding is made once, at the first
    recommendation, and kept: a model whose weights change afterwards needs a new Recommender.
    """

    def __init__(self, run_dir: Path, config: Config, ds, model: torch.nn.Module, epoch: int, which: str) -> None:
        self.path, self.config, self.dataset, self.model, self.epoch = run_dir, config, ds, model, epoch
        self.which = which
        self.users = ds.user_ids if len(ds.user_ids) else np.arange(ds.n_users)
        self.items = ds.item_ids if len(ds.item_ids) else np.arange(ds.n_items)
        self._index = {str(raw): i for i, raw in enumerate(self.users)}
        self._item_index = {str(raw): i for i, raw in enumerate(self.items)}
        self._device = next(model.parameters()).device

    def __repr__(self) -> str:
        return (
            f"Recommender({str(self.path)!r}, epoch {self.epoch} ({self.which}): {len(self.users):,} users, "
            f"{len(self.items):,} items)"
        )

    @property
    def titles(self) -> np.ndarray | None:
        """Each item's title (by its index, as `items`), where the data has them (MovieLens); else None."""
        titles = self.dataset.item_titles
        return titles if len(titles) == len(self.items) else None

    @functools.cached_property
    def _seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's items, in training and held out (seen_index): built once, for every recommend call."""
        ds = self.dataset
        users, items = (torch.as_tensor(a, device=self._device) for a in ds.pairs())
        return seen_index(users, items, ds.n_users)

    @functools.cached_property
    def _items_encoded(self) -> Encoding:
        """Every item's encoding in eval mode, made once: each recommend call scores users against it."""
        self.model.eval()
        with torch.no_grad():
            return self.model.encode_items(torch.arange(len(self.items), device=self._device))

    def rows_of(self, users: Iterable[Any] | None) -> list[int]:
        """The model's rows of the given user ids (each once, in the order given; every user where None)."""
        if users is None:
            return list(range(len(self.users)))
        users = list(dict.fromkeys(str(u) for u in list_of(users)))
        if unknown := [u for u in users if u not in self._index]:
            raise UserError(
                f"{self.path}: unknown user id(s) {', '.join(unknown[:5])}: not among the run's users (not in "
                f"{self.dataset.source}, or dropped in preparation: fewer than "
                f"{self.config.data.min_user_interactions} interactions)"
            )
        return [self._index[u] for u in users]

    def top(self, rows: list[int], k: int, exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(items, scores) [len(rows), k] of each user's k best items, best first (-1 / -inf past the last)."""
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        k = min(k, len(self.items))  # no more items than there are
        needed = len(rows) * k * RECOMMENDATION_BYTES
        if needed > available_bytes():
            raise UserError(
                f"k = {k} for {len(rows):,} users: {len(rows) * k:,} recommendations take about "
                f"{needed / 2**30:.1f} GB, more than the {available_bytes() / 2**30:.1f} GB available; ask for fewer "
                "users or a smaller k"
            )
        users = torch.tensor(rows, dtype=torch.int64, device=self._device)
        seen = self._seen if exclude_seen else None
        items, scores = top_k(self.model, users, len(self.items), k, seen, item_enc=self._items_encoded)
        return items.cpu(), scores.cpu()

    def recommend(self, users: Iterable[Any] | None = None, k: int = 10, exclude_seen: bool = True):
        """A pandas DataFrame of columns user, rank, item, score: each user's k highest-scoring items (by the input
        file's ids; every user where `users` is None), the items the user interacted with left out unless
        exclude_seen is False. Fewer rows for a user with fewer items left."""
        import pandas as pd

        rows = self.rows_of(users)
        items, scores = self.top(rows, k, exclude_seen)
        found = items >= 0
        user_rows = torch.tensor(rows, dtype=torch.int64)[:, None].expand_as(items)[found].numpy()
        ranks = torch.arange(1, items.shape[1] + 1).expand_as(items)[found].numpy()
        columns = {
            "user": self.users[user_rows],
            "rank": ranks,
            "item": self.items[items[found].numpy()],
            "score": scores[found].numpy(),
        }
        if self.titles is not None:
            columns["title"] = self.titles[items[found].numpy()]
        return pd.DataFrame(columns)

    @torch.no_grad()
    def score(self, users: Iterable[Any], items: Iterable[Any]):
        """The model's score (a logit: higher is more likely) of each (user, item) pair, as a numpy array; users
        and items are ids of equal count, or one of them a single id for all."""
        us, its = (
            np.atleast_1d(np.asarray(list_of(users), dtype=object)),
            np.atleast_1d(np.asarray(list_of(items), dtype=object)),
        )
        if len(us) != len(its) and 1 not in (len(us), len(its)):
            raise UserError(f"score: {len(us)} users and {len(its)} items (expected as many of each, or one of either)")
        u = torch.tensor([self._index.get(str(x), -1) for x in us], dtype=torch.int64)
        i = torch.tensor([self._item_index.get(str(x), -1) for x in its], dtype=torch.int64)
        for name, ids, rows in (("user", us, u), ("item", its, i)):
            if (rows < 0).any():
                raise UserError(
                    f"{self.path}: unknown {name} id {ids[int((rows < 0).nonzero()[0])]} (not among the run's {name}s)"
                )
        u, i = torch.broadcast_tensors(u, i)
        self.model.eval()
        return self.model(u.to(self._device), i.to(self._device)).float().cpu().numpy()

    def evaluate(self, protocol: Literal["sampled", "full", "both"] = "sampled") -> dict[str, float]:
        """HR@K and NDCG@K (and, in full ranking, recall) of the held-out items at the run's cut-offs, each name
        prefixed with its protocol: sampled (among the run's evaluation negatives), full (among every item the user
        did not train on), or both; the test items', and the validation items' (valid_...) where the run has them:
        the figures its training log gave."""
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        e = dataclasses.replace(self.config.eval, eval=protocol)
        evaluation, _ = run_evaluator(self.dataset, self.model, self._device, e)
        return evaluation()


def evaluate_file(rec: Recommender, path: Path, columns: dict[str, str | None]) -> dict[str, Any]:
    """`scalerec evaluate RUN --data FILE`: each row of FILE (user, item; any time is not needed) ranked by full
    ranking among the items its user did not interact with in the run's data, at the run's cut-offs. Rows of
    users or items the model does not know, and of items the user already had, are counted and skipped.
    `columns`: --user-col, --item-col, --sep for a table. Returns the metrics (full_...) and the counts."""
    from scalerec.data import movielens, table
    from scalerec.data.prepare import is_member
    from scalerec.metrics import full_ranks, metrics_from_ranks

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--data {path}: {'not a file' if path.exists() else 'no such file'} (expected user, item rows)"
        )
    if any(columns.values()) or table.is_table_file(path):
        raw = table.read_table_file(path, columns.get("user_col"), columns.get("item_col"), sep=columns.get("sep"))
    else:
        raw = movielens.read_ratings_file(path)
    names = [raw.user_names[raw.users] if raw.user_names is not None else raw.users]
    names.append(raw.item_names[raw.items] if raw.item_names is not None else raw.items)
    users = np.array([rec._index.get(str(u), -1) for u in names[0]], dtype=np.int64)
    items = np.array([rec._item_index.get(str(i), -1) for i in names[1]], dtype=np.int64)
    low = np.zeros(len(users), bool)  # below the run's --min-rating: not positives, as in training
    if rec.config.data.min_rating is not None and raw.ratings is not None:
        low = raw.ratings < np.float64(rec.config.data.min_rating)
    known = (users >= 0) & (items >= 0) & ~low
    seen = np.zeros(len(users), bool)
    seen[known] = is_member(rec.dataset.positive_keys(), users[known] * len(rec.items) + items[known])
    kept = known & ~seen
    counts = {"rows": len(users), "evaluated": int(kept.sum()), "unknown_users": int(((users < 0) & ~low).sum())}
    counts.update(unknown_items=int(((users >= 0) & (items < 0) & ~low).sum()), seen_before=int(seen.sum()))
    counts["below_min_rating"] = int(low.sum())
    if not kept.any():
        raise UserError(f"--data {path}: no row to evaluate ({describe_counts(counts)})")
    u, i = (torch.as_tensor(a[kept], device=rec._device) for a in (users, items))
    rank = full_ranks(rec.model, u, i, rec._seen, len(rec.items))
    found = metrics_from_ranks(rank, rec.config.eval.topk, recall=True)
    return {**{f"full_{name}": v for name, v in found.items()}, **counts}


def describe_counts(counts: dict[str, int]) -> str:
    """The rows of a --data file, and why some were skipped, in words."""
    skipped = [
        f"{counts[key]:,} {why}"
        for key, why in (
            ("unknown_users", "of users the model does not know"),
            ("unknown_items", "of items it does not know"),
            ("seen_before", "of items the user already had in the run's data"),
            ("below_min_rating", "rated below the run's --min-rating"),
        )
        if counts[key]
    ]
    return f"{counts['evaluated']:,} of {counts['rows']:,} rows evaluated" + (
        f"; skipped: {', '.join(skipped)}" if skipped else ""
    )


def list_of(ids: Any) -> list[Any]:
    """Ids as a list: a single id (a string or number) as a list of one."""
    if isinstance(ids, str | int | np.integer):
        return [ids]
    return list(ids)


def load(
    run_dir: Path | str, epoch: Literal["best", "last"] = "best", device: str = "cpu", stacklevel: int = 2
) -> Recommender:
    """The trained model of a run folder with its data's ids and split, each file checked to be the run's.

    "best": best.pt, the best epoch's model; "last": checkpoint.pt, the last epoch's. The run's data.npz holds
    the ids and the split, so neither the data cache nor the source file is needed. A run made before scalerec
    kept them reads its data from the cache, and for "best" its last epoch's weights, with a warning where the
    best epoch was another one (`stacklevel`: whose line the warning names)."""
    if epoch not in ("best", "last"):
        raise UserError(f"epoch must be 'best' or 'last', got {epoch!r}")
    run_dir = Path(run_dir)
    saved = _weights(run_dir, epoch, stacklevel + 1)
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {CONFIG})")
    cfg = read_config(run_dir / CONFIG)
    checkpoint.check_run(saved, cfg, run_dir, saved["file"])
    ds = _run_data(run_dir, saved)
    m = cfg.model
    model = build_model(m.model, ds.n_users, ds.n_items, m.factors, m.layers, m.dropout)
    if cfg.train.cpu_matmul != "onednn" or onednn_available():  # where it is not, BLAS scores as well
        set_cpu_matmul(model, cfg.train.cpu_matmul)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:  # weights of other sizes than the run's options and data make
        raise UserError(
            f"{run_dir / saved['file']}: its weights do not fit the model of {run_dir / CONFIG} "
            f"({str(e).splitlines()[0]})"
        ) from None
    return Recommender(run_dir, cfg, ds, model.to(resolve_device(device)).eval(), saved["epoch"], saved["which"])


def _weights(run_dir: Path, epoch: str, stacklevel: int) -> dict[str, Any]:
    """The weights `load` asks for, with "epoch", "which" (best or last), "file" (whence) and what checks them."""
    if epoch == "best" and (run_dir / checkpoint.BEST).is_file():
        best = checkpoint.load_best(run_dir)
        return {**best, "which": "best", "file": checkpoint.BEST}
    if not (run_dir / checkpoint.FILE).is_file() and (run_dir / checkpoint.BEST).is_file():
        raise UserError(
            f"{run_dir}: no {checkpoint.FILE} (trained with --no-checkpoint): only the best epoch's model is kept "
            "(epoch 'best')"
        )
    saved = checkpoint.load(run_dir)
    if not saved["history"]:
        raise UserError(f"{run_dir / checkpoint.FILE}: holds no epoch (a damaged or foreign checkpoint)")
    last, best = saved["history"][-1]["epoch"], saved["best"].get("epoch")
    if epoch == "best" and best != last:
        warnings.warn(
            f"{run_dir}: no {checkpoint.BEST} (made before scalerec kept the best epoch's model): loaded the last "
            f"epoch's ({last}), not the best one ({best})",
            stacklevel=stacklevel,
        )
    which = "best" if epoch == "best" and best == last else "last"
    return {**saved, "epoch": last, "which": which, "file": checkpoint.FILE}


def _run_data(run_dir: Path, saved: dict[str, Any]):
    """The run's data (its data.npz; for a run made before it, from the data cache), checked to be what the
    weights were trained on."""
    path = run_dir / DATA
    if path.is_file():
        try:
            ds = Dataset.load(path)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: not a readable scalerec run data file ({e})") from None
    elif "data" in saved:
        ds = load_dataset(checkpoint.data_config(saved, run_dir), log=lambda s: None)  # from the data cache
    else:
        raise UserError(f"{run_dir}: no {DATA} (the run's ids and split, which its model needs)")
    if saved.get("data_fingerprint") not in (None, checkpoint.fingerprint(ds)):
        raise UserError(
            f"{run_dir / saved['file']}: not trained on this run's data ({path if path.is_file() else ds.source}: "
            "other rows, ids or split); train a new run on it"
        )
    return ds


def recommend_run(
    run_dir: Path,
    users: list[str] | None,
    k: int,
    include_seen: bool = False,
    output: Path | None = None,
    log: Callable[[str], None] = print,
    epoch: Literal["best", "last"] = "best",
    device: str = "cpu",
) -> str:
    """`scalerec recommend`: CSV text `user,rank,item,score` for the given users (by their ids in the input file;
    default every user) from the run's best (or last) epoch's model scoring on `device`, written to `output`
    (atomically) or returned for printing. `log` says which model, and where the CSV went."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        what = "is a folder" if output.is_dir() else f"its folder {output.parent} does not exist"
        raise UserError(f"--output {output}: {what} (expected a file to write the CSV to)")
    rec = load(run_dir, epoch, device, stacklevel=3)
    rows = rec.rows_of(users)
    items, scores = rec.top(rows, k, exclude_seen=not include_seen)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    titles = rec.titles
    out.writerow(["user", "rank", "item", "score", *(["title"] if titles is not None else [])])
    for row, user in enumerate(rows):
        for rank, (item, score) in enumerate(zip(items[row].tolist(), scores[row].tolist()), start=1):
            if item >= 0:
                title = [titles[item]] if titles is not None else []
                out.writerow([rec.users[user], rank, rec.items[item], f"{score:.6g}", *title])
    text = buf.getvalue()
    said = f"Top {min(k, len(rec.items))} items of {len(rows):,} user{'' if len(rows) == 1 else 's'}"
    said += f" (epoch {rec.epoch}'s model, the {rec.which})"
    if output is not None:
        write_atomic(Path(output), text)
        said += f": {output}"
    log(said)
    return text
