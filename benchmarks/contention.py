"""The Quickstart's epochs alone and beside busy processes: `scalerec train` with its default threads, with
--threads 1, and with --threads N (every usable CPU, PyTorch's own default), alone and beside --busy processes
that each spin on a core, in one run of this script, the order alternated over --repeats. Prints one JSON line
per run (samples/s of each epoch from its metrics.jsonl, the thread counts it logged) and ratio lines of the
medians: beside the busy processes, the default over --threads 1 (and --threads N over --threads 1); alone, the
default over --threads N. Run:

    .venv/bin/python benchmarks/contention.py                          # MovieLens-100K, as the Quickstart
    .venv/bin/python benchmarks/contention.py --data ../shared/data/ml-100k/u.data --repeats 3
    .venv/bin/python benchmarks/contention.py --loads alone --repeats 10   # the quiet machine alone, closer
    .venv/bin/python benchmarks/contention.py --omp-waits              # and OpenMP's passive and spinning waits
    .venv/bin/python benchmarks/contention.py -- --dataset synthetic   # more options for scalerec train
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, run

from scalerec.threads import usable_cpus


def train(args, setting: tuple[list[str], dict[str, str]], out: Path) -> dict:
    options, extra_env = setting
    cmd = [sys.executable, "-m", "scalerec", "train", "--epochs", str(args.epochs), "--output", str(out)]
    cmd += ["--no-checkpoint", *(["--data", args.data] if args.data else []), *options, *args.options]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | extra_env
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    threads = [int(n) for n in re.findall(r"^Threads: (\d+)", done.stdout, re.MULTILINE)]
    return {"samples_per_s": [round(r["samples_per_s"]) for r in rows], "threads_used": threads}


def busy(n: int) -> list[subprocess.Popen]:
    """n processes that each keep a core busy, settled before the run starts."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)
    return spinning


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a ratings file (default: the Quickstart's MovieLens-100K)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the run")
    p.add_argument("--loads", nargs="+", choices=["alone", "busy"], default=["alone", "busy"], help="which to run")
    p.add_argument("--omp-waits", action="store_true", help="also N threads with OpenMP's passive and long-spin waits")
    p.add_argument("options", nargs=argparse.REMAINDER, help="after --: more options for scalerec train")
    args = p.parse_args()
    args.options = [o for o in args.options if o != "--"]
    cpus = usable_cpus()[0]
    every = ["--threads", str(cpus)]
    settings = {"default": ([], {}), "threads_1": (["--threads", "1"], {}), f"threads_{cpus}": (every, {})}
    if args.omp_waits:  # how OpenMP's threads wait at a barrier: passively, or spinning long
        settings[f"threads_{cpus}_passive"] = (every, {"OMP_WAIT_POLICY": "PASSIVE"})
        settings[f"threads_{cpus}_spin"] = (every, {"GOMP_SPINCOUNT": "100000"})
    base = {"bench": "contention", **machine(), "usable_cpus": cpus, "data": args.data or "ml-100k"}
    rates: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for load in args.loads if r % 2 == 0 else args.loads[::-1]:
                k = r % len(settings)
                names = list(settings)[k:] + list(settings)[:k]  # each setting first in turn
                spinning = busy(args.busy) if load == "busy" else []
                try:
                    for name in names:
                        got = train(args, settings[name], Path(tmp) / f"{load}-{name}-{r}")
                        rates.setdefault((load, name), []).extend(got["samples_per_s"])
                        busy_n = args.busy if load == "busy" else 0
                        print(json.dumps({**base, "load": load, "busy_processes": busy_n, "setting": name, **got}))
                finally:
                    for proc in spinning:
                        proc.kill()
                        proc.wait()
    med = {key: statistics.median(v) for key, v in rates.items()}
    every = f"threads_{cpus}"
    if "busy" in args.loads:
        busy_1 = med["busy", "threads_1"]
        ratios = {
            "default_over_threads_1": med["busy", "default"] / busy_1,
            f"{every}_over_threads_1": med["busy", every] / busy_1,
        }
        print(json.dumps({**base, "load": "busy", **{k: round(v, 3) for k, v in ratios.items()}}))
    if "alone" in args.loads:
        ratio = round(med["alone", "default"] / med["alone", every], 3)
        print(json.dumps({**base, "load": "alone", f"default_over_{every}": ratio}))


if __name__ == "__main__":
    run(main)
