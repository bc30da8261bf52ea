"""The optimizer step alone, this checkout's against another revision's, alternated in one run.

Each measurement runs in its own process with one revision's src/ first on the path (the other revision's taken
out of git with `git archive`), on a NeuMF of a MovieLens shape's tables with fixed random gradients: the
optimizer's step and nothing else, with malloc tuned as `scalerec train` tunes it (--glibc-malloc: not). One JSON
line per measurement. Example:
    python optimizer_step.py --baseline HEAD~3 --optimizers lars lamb --shape ml-1m --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MEASURE = """
import json, sys, time, torch
from scalerec.allocator import keep_large_blocks_in_heap
from scalerec.model import build_model
from scalerec.optim import build_optimizer
users, items, name, steps, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
if sys.argv[6] == "scalerec":
    keep_large_blocks_in_heap()  # as scalerec train does: an optimizer's temporaries reuse heap pages
torch.manual_seed(0)
model = build_model("neumf", users, items, 64, [256, 256, 128, 64], 0.0).to(device)
opt, _ = build_optimizer(name, model, 0.01, momentum=0.9, weight_decay=1e-4 if name != "adam" else 0.0)
for p in model.parameters():
    p.grad = torch.randn_like(p) * 1e-3
def sync():
    if device != "cpu":
        torch.cuda.synchronize()
for _ in range(5):
    opt.step()
sync()
t0 = time.perf_counter()
for _ in range(steps):
    opt.step()
sync()
print(json.dumps({"ms_per_step": 1000 * (time.perf_counter() - t0) / steps, "threads": torch.get_num_threads()}))
"""


def checkout(rev: str, into: Path) -> Path:
    """src/ of revision `rev`, unpacked under `into`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
    with tempfile.TemporaryFile() as f:
        f.write(archive.stdout)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, shape: tuple[int, int], name: str, steps: int, device: str, malloc: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-c", MEASURE, str(shape[0]), str(shape[1]), name, str(steps), device, malloc]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)


def main() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import SHAPES, machine

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="the git revision to compare with (e.g. HEAD~3, a commit)")
    p.add_argument("--optimizers", nargs="+", choices=["sgd", "adam", "lars", "lamb"], default=["lars", "lamb"])
    p.add_argument("--shape", choices=list(SHAPES), default="ml-1m")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--glibc-malloc", action="store_true", help="keep glibc's malloc settings (see allocator.py)")
    args = p.parse_args()
    malloc = "glibc" if args.glibc_malloc else "scalerec"
    with tempfile.TemporaryDirectory() as tmp:
        revisions = {"current": REPO / "src", args.baseline: checkout(args.baseline, Path(tmp))}
        for repeat in range(args.repeats):
            for name in args.optimizers:
                for rev, src in revisions.items() if repeat % 2 == 0 else reversed(revisions.items()):
                    found = measure(src, SHAPES[args.shape][:2], name, args.steps, args.device, malloc)
                    line = {"bench": "optimizer_step", "revision": rev, "optimizer": name, "shape": args.shape}
                    line["malloc"] = malloc
                    print(json.dumps({**line, "repeat": repeat, **machine(), **found}), flush=True)
                    time.sleep(0.1)


if __name__ == "__main__":
    main()
