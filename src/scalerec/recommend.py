"""Top-K recommendations from a trained run: `scalerec recommend RUN [--users U ...] [--k K]`.

The run's config.json names its data and model, checkpoint.pt holds the weights of its last epoch. Every item
is encoded once and each user scored against all of them (model.score_grid, as full-ranking evaluation does);
the items a user interacted with (training and held-out) are left out unless --include-seen. Users and items are
named by the ids of the input file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import torch

from scalerec import checkpoint
from scalerec.data import load_dataset
from scalerec.errors import UserError
from scalerec.evaluate import FULL_SCORES_PER_BATCH, seen_index, seen_pairs
from scalerec.files import write_atomic
from scalerec.find_batch import available_bytes
from scalerec.model import build_model, onednn_available, set_cpu_matmul
from scalerec.run_folder import CONFIG, read_config

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(items [U, k], scores [U, k]) of the k highest-scoring items of each user, best first; the user's `seen`
    items (seen_index) left out. Fewer than k unseen items: the rest are -1 with score -inf."""
    model.eval()
    item_enc = model.encode_items(torch.arange(n_items, device=users.device))
    k_items = min(k, n_items)
    items = torch.full((len(users), k), -1, dtype=torch.int64, device=users.device)
    scores = torch.full((len(users), k), float("-inf"), device=users.device)
    step = max(1, min(4096, scores_per_batch // n_items))
    for s in range(0, len(users), step):
        u = users[s : s + step]
        grid = model.score_grid(model.encode_users(u), item_enc).float()
        if seen is not None:
            grid[seen_pairs(seen, u)] = float("-inf")
        best, at = grid.topk(k_items, dim=1)  # sorted, highest first
        scores[s : s + len(u), :k_items] = best
        items[s : s + len(u), :k_items] = torch.where(torch.isinf(best), -1, at)
    return items, scores


def recommend_run(
    run_dir: Path,
    users: list[str] | None,
    k: int,
    include_seen: bool = False,
    output: Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """CSV text `user,rank,item,score` for the given users (by their ids in the input file; default every user),
    written to `output` (atomically) or returned for printing."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        what = "is a folder" if output.is_dir() else f"its folder {output.parent} does not exist"
        raise UserError(f"--output {output}: {what} (expected a file to write the CSV to)")
    saved = checkpoint.load(run_dir)
    if not (Path(run_dir) / CONFIG).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {CONFIG})")
    cfg = read_config(Path(run_dir) / CONFIG)
    checkpoint.check_run(saved, cfg, Path(run_dir))
    cfg = dataclasses.replace(cfg, data=checkpoint.data_config(saved, run_dir))
    ds = load_dataset(cfg.data, log=lambda s: None)  # from the cache the run made
    checkpoint.check_data(saved, ds, run_dir)
    k = min(k, ds.n_items)  # no more items than there are
    m = cfg.model
    model = build_model(m.model, ds.n_users, ds.n_items, m.factors, m.layers, m.dropout)
    if cfg.train.cpu_matmul != "onednn" or onednn_available():  # where it is not, BLAS scores as well
        set_cpu_matmul(model, cfg.train.cpu_matmul)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:  # weights of other sizes than the run's options and data make
        raise UserError(
            f"{run_dir / checkpoint.FILE}: its weights do not fit the model of {run_dir / CONFIG} "
            f"({str(e).splitlines()[0]})"
        ) from None
    raw_users = ds.user_ids if len(ds.user_ids) else torch.arange(ds.n_users).numpy()
    raw_items = ds.item_ids if len(ds.item_ids) else torch.arange(ds.n_items).numpy()
    index = {str(raw): i for i, raw in enumerate(raw_users)}
    if users is None:
        chosen = list(range(ds.n_users))
    else:
        users = list(dict.fromkeys(users))  # each once, in the order given
        unknown = [u for u in users if u not in index]
        if unknown:
            raise UserError(
                f"{run_dir}: unknown user id(s) {', '.join(unknown[:5])}: not among the run's users (not in "
                f"{ds.source}, or dropped in preparation: fewer than {cfg.data.min_user_interactions} interactions)"
            )
        chosen = [index[u] for u in users]
    needed = len(chosen) * k * RECOMMENDATION_BYTES
    if needed > available_bytes():
        raise UserError(
            f"--k {k} for {len(chosen):,} users: {len(chosen) * k:,} recommendations take about {needed / 2**30:.1f} "
            f"GB, more than the {available_bytes() / 2**30:.1f} GB available; ask for fewer users or a smaller --k"
        )
    seen = None
    if not include_seen:
        pairs_u = torch.cat([torch.as_tensor(ds.train_users), torch.as_tensor(ds.test_users)])
        pairs_i = torch.cat([torch.as_tensor(ds.train_items), torch.as_tensor(ds.test_items)])
        seen = seen_index(pairs_u, pairs_i, ds.n_users)
    items, scores = top_k(model, torch.tensor(chosen, dtype=torch.int64), ds.n_items, k, seen)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["user", "rank", "item", "score"])
    for row, user in enumerate(chosen):
        for rank, (item, score) in enumerate(zip(items[row].tolist(), scores[row].tolist()), start=1):
            if item >= 0:
                out.writerow([raw_users[user], rank, raw_items[item], f"{score:.6g}"])
    text = buf.getvalue()
    if output is not None:
        write_atomic(Path(output), text)
        log(f"Top {k} items of {len(chosen):,} users (epoch {saved['history'][-1]['epoch']}'s model): {output}")
    return text
