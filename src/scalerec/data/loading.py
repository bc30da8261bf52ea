"""load_dataset(DataConfig) -> Dataset: the data a config names, read, prepared and cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from scalerec.config import DataConfig
from scalerec.data import download, movielens, ncf, synthetic, table
from scalerec.data.prepare import Dataset, cached, file_identity, from_interactions
from scalerec.errors import UserError

# DataConfig fields that make --data be read as any table (data/table.py)
TABLE_OPTIONS = ("user_col", "item_col", "time_col", "rating_col", "sep")


# The lowest Unix time, in each unit, of the years 1973-2286 (each unit's range spans two orders of magnitude)
UNIX_TIME_FROM = {"seconds": 1e8, "milliseconds": 1e11, "microseconds": 1e14, "nanoseconds": 1e17}


def mixed_time_units(times: np.ndarray) -> str | None:
    """A note where numeric times look like Unix times in more than one unit (seconds and milliseconds, say, as
    when two exports are joined): leave-one-out would hold out each user's largest number, not its latest row."""
    counts = {unit: int(((times >= low) & (times < 100 * low)).sum()) for unit, low in UNIX_TIME_FROM.items()}
    if sum(n > 0 for n in counts.values()) < 2:
        return None
    shown = ", ".join(f"{n:,} like Unix {unit}" for unit, n in counts.items() if n)
    return (
        f"times kept as they are, but they look like Unix times in more than one unit ({shown}): each user's "
        "largest number is held out as its latest; convert the times to one unit"
    )


def load_dataset(cfg: DataConfig, log: Callable[[str], None] = print) -> Dataset:
    """The Dataset that `cfg` names, from the cache when its source file and options are unchanged."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else download.default_data_dir()
    cache_dir = data_dir / "cache"
    options = {"eval_negatives": cfg.eval_negatives, "data_seed": cfg.data_seed}
    valid = cfg.valid is not False  # on unless turned off; the NCF paper's split has none
    core = {"min_user_interactions": cfg.min_user_interactions, "min_item_interactions": cfg.min_item_interactions}
    columns = {k: getattr(cfg, k) for k in TABLE_OPTIONS if getattr(cfg, k) is not None}
    dataset = cfg.dataset
    if dataset == "ml-100k" and cfg.data and not columns and ncf.is_ncf(cfg.data):  # --data PREFIX alone
        dataset = "ncf"
    if dataset == "synthetic" and cfg.data:
        raise UserError(f"--data {cfg.data}: not read with --dataset synthetic, which generates its data")
    if dataset in ("synthetic", "ncf") and (columns or cfg.min_rating is not None):
        raise UserError(
            f"--{next(iter(columns), 'min_rating').replace('_', '-')} applies to a table or ratings file "
            f"given with --data, not to --dataset {dataset}"
        )
    if dataset == "synthetic":
        sizes = (cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_interactions)
        source = f"the synthetic generator (seed {cfg.data_seed}, {sizes[0]} users, {sizes[1]} items)"

        def generate() -> Dataset:
            users, items, ts = synthetic.generate(*sizes, cfg.data_seed)
            negatives, seed = cfg.eval_negatives, cfg.data_seed
            return from_interactions(users, items, ts, "Synthetic", source, negatives, seed, **core, valid=valid)

        # cached too: ML-20M's shape takes a minute to generate and prepare
        identity = {"name": "synthetic", **options, **core, "sizes": sizes, "generator": synthetic.VERSION}
        identity["valid"] = valid
        return cached(cache_dir, identity, generate, log)
    if dataset == "ncf":
        if cfg.valid:
            raise UserError("--valid: the NCF paper's files come split into train and test, with no validation")
        if core != {"min_user_interactions": 2, "min_item_interactions": 1}:
            raise UserError(
                "--min-user-interactions and --min-item-interactions do not apply to the NCF paper's "
                "split, which is used as it is"
            )
        prefix = ncf.resolve_prefix(cfg.data)
        present = [f for f in ncf.files(prefix) if f.is_file()]
        identity = {"name": f"ncf-{prefix.name}", **options, "files": [file_identity(f) for f in present]}
        return cached(cache_dir, identity, lambda: ncf.read_ncf(prefix, cfg.eval_negatives, cfg.data_seed), log)
    path, source, name = _ratings_source(cfg, data_dir, log)
    slug = "ml-100k" if name == "MovieLens-100K" else path.stem
    identity = {"name": slug, **options, **core, "file": file_identity(path), "source": source}
    identity.update(columns=columns, min_rating=cfg.min_rating, valid=valid)
    any_table = bool(columns) or table.is_table_file(path)
    titles = None if any_table else movielens.titles_file(path)  # the cache follows MovieLens' titles file too
    identity["titles"] = file_identity(titles) if titles is not None else not any_table
    return cached(cache_dir, identity, lambda: _from_file(cfg, path, source, name, any_table, core, valid), log)


def _ratings_source(cfg: DataConfig, data_dir: Path, log) -> tuple[Path, str, str]:
    """(the file, where it came from, the data's name): MovieLens-100K downloaded, a local ratings file in one of
    MovieLens' layouts, another release downloaded, or any table."""
    if cfg.data:
        path = movielens.find_ratings_file(cfg.data)
        is_100k = path.name in ("u.data", "ml-100k.inter", "ml-100k.zip")
        name = "MovieLens-100K" if is_100k else path.name
        if cfg.dataset not in ("ml-100k", "ncf", "synthetic"):  # said on purpose (ml-100k is the default)
            if is_100k:
                raise UserError(f"{path}: MovieLens-100K's file, but --dataset {cfg.dataset}")
            name = download.RELEASES[cfg.dataset].title
        return path, str(path), name
    if cfg.dataset == "ml-100k":
        path, source = download.fetch_ml100k(data_dir, log)
        return path, source, "MovieLens-100K"
    path = download.fetch(cfg.dataset, data_dir, log)
    return path, download.source_of(cfg.dataset, path), download.RELEASES[cfg.dataset].title


def _from_file(cfg: DataConfig, path: Path, source: str, name: str, any_table: bool, core: dict, valid) -> Dataset:
    """A ratings file or table read, its positives kept (--min-rating), and prepared (with a validation split
    where `valid`); notes on how it was read."""
    if any_table:
        raw = table.read_table_file(path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col, cfg.sep)
    else:
        raw = movielens.read_ratings_file(path)
    notes, rows = [], len(raw.users)
    if raw.time_format not in (None, "ISO8601"):  # say how an ambiguous 01/02/2020 was read
        f = raw.time_format
        first = ("month first" if f.index("%m") < f.index("%d") else "day first") if "%m" in f and "%d" in f else ""
        notes.append(f"times read as dates in one format, {f}{f' ({first})' if first else ''}")
    if raw.timestamps is not None and raw.time_unit is None and (note := mixed_time_units(raw.timestamps)):
        notes.append(note)
    if cfg.min_rating is not None:
        if raw.ratings is None:
            raise UserError(
                f"{path}: --min-rating {cfg.min_rating:g} needs a rating column (name it with --rating-col)"
            )
        positive = raw.ratings >= np.float64(cfg.min_rating)  # float64: never rounded to float32 ratings
        notes.append(f"{int((~positive).sum()):,} rows rated below {cfg.min_rating:g} dropped (not positives)")
        if not positive.any():
            raise UserError(f"{path}: no row is rated {cfg.min_rating:g} or more (--min-rating)")
        raw.users, raw.items = raw.users[positive], raw.items[positive]
        raw.timestamps = None if raw.timestamps is None else raw.timestamps[positive]
    ds = from_interactions(
        raw.users, raw.items, raw.timestamps, name, source, cfg.eval_negatives, cfg.data_seed, **core,
        time_unit=raw.time_unit, user_names=raw.user_names, item_names=raw.item_names, valid=valid,
    )  # fmt: skip
    ds.notes[:0] = notes
    ds.stats["rows"] = rows
    if not any_table:  # MovieLens' titles, where its titles file lies beside the ratings
        titles, note = movielens.read_titles(path)
        named = np.array([titles.get(str(i), "") for i in ds.item_ids]) if titles else None
        if named is not None and (named != "").mean() < 0.5:  # another release's titles: none rather than wrong
            note = f"item titles not used: {int((named == '').sum()):,} of {len(named):,} items have none in the file"
        elif named is not None:
            ds.item_titles = named
        if note:
            ds.notes.append(note)
    return ds
