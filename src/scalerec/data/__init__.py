"""Data: readers, preparation into a leave-one-out Dataset, the synthetic generator, and the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scalerec.config import DataConfig
from scalerec.data import movielens, ncf, synthetic
from scalerec.data.prepare import Dataset, cached, file_identity, from_interactions

__all__ = ["Dataset", "load_dataset"]


def load_dataset(cfg: DataConfig, log: Callable[[str], None] = print) -> Dataset:
    """The Dataset that `cfg` names, from the cache when its source file and options are unchanged."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else movielens.default_data_dir()
    cache_dir = data_dir / "cache"
    options = {"eval_negatives": cfg.eval_negatives, "data_seed": cfg.data_seed}
    if cfg.dataset == "synthetic":
        sizes = (cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_interactions)
        source = f"the synthetic generator (seed {cfg.data_seed}, {sizes[0]} users, {sizes[1]} items)"

        def generate() -> Dataset:
            users, items, ts = synthetic.generate(*sizes, cfg.data_seed)
            return from_interactions(users, items, ts, "Synthetic", source, cfg.eval_negatives, cfg.data_seed)

        # cached too: ML-20M's shape takes a minute to generate and prepare
        identity = {"name": "synthetic", **options, "sizes": sizes, "generator": synthetic.VERSION}
        return cached(cache_dir, identity, generate, log)
    if cfg.dataset == "ncf":
        prefix = ncf.resolve_prefix(cfg.data)
        files = [Path(f"{prefix}.{s}") for s in ("train.rating", "test.rating", "test.negative")]
        identity = {"name": f"ncf-{prefix.name}", **options, "files": [file_identity(f) for f in files if f.is_file()]}
        return cached(cache_dir, identity, lambda: ncf.read_ncf(prefix, cfg.eval_negatives, cfg.data_seed), log)
    # MovieLens-100K downloaded, or a local ratings file in one of MovieLens' layouts
    if cfg.data:
        path = movielens.find_ratings_file(cfg.data)
        source = str(path)
        is_100k = path.name in ("u.data", "ml-100k.inter", "ml-100k.zip")
        name = "MovieLens-100K" if is_100k else path.name
    else:
        path, source = movielens.fetch_ml100k(data_dir, log)
        name = "MovieLens-100K"

    def build() -> Dataset:
        raw = movielens.read_ratings_file(path)
        return from_interactions(raw.users, raw.items, raw.timestamps, name, source, cfg.eval_negatives, cfg.data_seed)

    slug = "ml-100k" if name == "MovieLens-100K" else path.stem
    identity = {"name": slug, **options, "file": file_identity(path), "source": source}
    return cached(cache_dir, identity, build, log)
