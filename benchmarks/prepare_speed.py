"""Dataset preparation and cache reload: seconds and peak memory, one JSON line per dataset and phase.

"prepare" is what the first `scalerec train` on a dataset does: read (or generate) the interactions, remap ids,
split leave-one-out, draw the evaluation negatives and write the cache; "reload" is every later run, reading
that cache. Each dataset gets a fresh cache folder. Real files are read from ../shared/data where present. Run:

    .venv/bin/python benchmarks/prepare_speed.py                       # the real files found, and ml-1m shape
    .venv/bin/python benchmarks/prepare_speed.py --shapes ml-20m       # synthetic, ML-20M's shape (20M rows)
    .venv/bin/python benchmarks/prepare_speed.py --csv ml-20m          # the same as a ratings.csv, parsed
    .venv/bin/python benchmarks/prepare_speed.py --csv ml-20m --csv-blocks 10   # 10x: 200M rows, 1.4M users

--csv writes synthetic data of a shape as a MovieLens ratings.csv (ML-20M: 20,000,263 rows, as the real file)
into --csv-dir (kept for later runs) and measures `scalerec train --data ratings.csv`'s preparation of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import SHAPES, data_config, machine, run

from scalerec.config import DataConfig
from scalerec.data.loading import load_dataset
from scalerec.data.synthetic import write_ratings_csv
from scalerec.find_batch import peak_rss_bytes, reset_peak_rss

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {  # name -> (dataset, file or prefix)
    "ml-100k": ("ml-100k", SHARED / "ml-100k" / "u.data"),
    "ml-latest-small": ("ml-100k", SHARED / "ml-latest-small" / "ratings.csv"),
    "ncf-ml-1m": ("ncf", SHARED / "ncf-ml-1m" / "ml-1m"),
}
ROWS = {"ml-20m": 20_000_263}  # the real file's rows; other shapes: what the generator gives


def measure(name: str, data: DataConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data.data_dir = tmp
        for phase in ("prepare", "reload"):
            reset_peak_rss()
            t0 = time.perf_counter()
            ds = load_dataset(data, log=lambda s: None)
            seconds = time.perf_counter() - t0
            cache = sum(f.stat().st_size for f in Path(tmp, "cache").glob("*.npz"))
            line = {"bench": "prepare_speed", **machine(), "dataset": name, "phase": phase}
            line.update(users=ds.n_users, items=ds.n_items, interactions=len(ds.positive_keys()))
            line.update(seconds=round(seconds, 2), peak_memory_mb=round(peak_rss_bytes() / 2**20))
            print(json.dumps({**line, "cache_mb": round(cache / 2**20, 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=["ml-1m"], help="synthetic data shapes")
    p.add_argument("--real", nargs="*", choices=list(REAL), default=list(REAL), help="real files, where present")
    p.add_argument("--csv", nargs="*", choices=list(SHAPES), default=[], help="shapes written as ratings.csv")
    p.add_argument("--csv-blocks", type=int, default=1, help="--csv: this many shapes' users stacked (10: 10x)")
    p.add_argument("--csv-dir", default=str(Path(tempfile.gettempdir()) / "scalerec-bench"))
    args = p.parse_args()
    for name in args.real:
        dataset, path = REAL[name]
        if path.is_file() or Path(f"{path}.train.rating").is_file():
            measure(name, DataConfig(dataset=dataset, data=str(path)))
        else:  # stderr: stdout holds only the JSON lines
            print(f"skipped {name}: {path} is not here", file=sys.stderr)
    for shape in args.shapes:
        measure(f"synthetic {shape}", data_config(None, shape))
    for shape in args.csv:
        path = Path(args.csv_dir) / f"{shape}-x{args.csv_blocks}" / "ratings.csv"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            users, items, mean = SHAPES[shape]
            t0 = time.perf_counter()
            rows = write_ratings_csv(path, users, items, mean + 1, 0, ROWS.get(shape), args.csv_blocks)
            line = {"bench": "prepare_speed", **machine(), "dataset": f"{shape} x{args.csv_blocks} ratings.csv"}
            line.update(phase="write_csv", rows=rows, seconds=round(time.perf_counter() - t0, 1))
            print(json.dumps({**line, "file_mb": round(path.stat().st_size / 2**20)}), flush=True)
        measure(f"{shape} x{args.csv_blocks} ratings.csv", DataConfig(data=str(path)))


if __name__ == "__main__":
    run(main)
