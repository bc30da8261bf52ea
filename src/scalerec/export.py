"""`scalerec export RUN --format onnx|torch --output DIR`: a run's model as a file that other runtimes load.

It exports the model's per-sample path (PerSample: every lookup and layer per (user, item) pair, as on a GPU),
with none of the CPU step's kernels and no shape that depends on the data, so that the graph takes a batch of any
size. ONNX: DIR/model.onnx, inputs `user` and `item` (int64 indices [batch]), output `score` (float32 logits
[batch]), for onnxruntime without torch. torch: DIR/model.pt2 (torch.export), for torch.export.load. Beside it,
DIR/ids.json maps indices to the input file's ids ({"users": [...], "items": [...]}, in index order). The file is
loaded back and its scores compared with scalerec's on a batch before the export is said done.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scalerec.errors import UserError
from scalerec.files import write_atomic, write_with
from scalerec.recommend import Recommender, load

FORMATS = {"onnx": "model.onnx", "torch": "model.pt2"}
# The largest difference between the exported model's scores and scalerec's that an export may have
TOLERANCE = 1e-4
CHECK_PAIRS = 1024


class PerSample(nn.Module):
    """A trained NeuMF, GMF, MLP or MF scoring (user, item) index pairs [batch] one by one: logits [batch]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "onednn"):  # oneDNN's fused op is CPU-only; the export takes the portable product
            model.onednn = False

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_per_sample"):
            return self.model.forward_per_sample(user, item)
        return self.model.interact(self.model.encode_users(user), self.model.encode_items(item))


def export_run(run_dir: Path, fmt: str, output: Path, epoch: str = "best", log: Callable[[str], None] = print) -> Path:
    """Export the run's model (its best epoch's, or last) to output/FORMATS[fmt] with output/ids.json, each file
    written whole or not at all; UserError where the exported model's scores differ from scalerec's by more than
    TOLERANCE. Returns the model file's path."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: a file (expected a folder to write {FORMATS[fmt]} and ids.json into)")
    check = _onnx_check if fmt == "onnx" else _torch_check
    if fmt == "onnx":
        _needs("onnx", "onnxruntime", "onnxscript")
    rec = load(run_dir, epoch, stacklevel=3)
    users, items = _check_pairs(rec)
    with torch.no_grad():
        expected = rec.model.cpu()(users, items).numpy()  # scalerec's own path: the CPU kernels, as it scores
    module = PerSample(rec.model).eval()
    output.mkdir(parents=True, exist_ok=True)
    path = output / FORMATS[fmt]
    got: dict[str, float] = {}

    def write(tmp: str) -> None:
        (_onnx_write if fmt == "onnx" else _torch_write)(module, users, items, tmp)
        got["diff"] = diff = float(np.abs(check(tmp, users.numpy(), items.numpy()) - expected).max())
        if not diff <= TOLERANCE:
            raise UserError(
                f"{path}: the exported model's scores differ from scalerec's by up to {diff:.3g} on {len(users):,} "
                f"pairs (at most {TOLERANCE:g} expected); not written"
            )

    # ids.json goes first and comes last: where it is, it is the model's beside it, whatever stops the export
    (output / "ids.json").unlink(missing_ok=True)
    write_with(path, write)
    write_atomic(output / "ids.json", json.dumps(ids_of(rec)) + "\n")
    log(
        f"Exported epoch {rec.epoch}'s model (the {rec.which}) of {run_dir} to {path}, its ids to "
        f"{output / 'ids.json'}; its scores on {len(users):,} pairs differ from scalerec's by at most {got['diff']:.2g}"
    )
    return path


def ids_of(rec: Recommender) -> dict[str, Any]:
    """ids.json: the input file's user and item ids in index order (a model's index i is users[i]), and the
    items' titles where the data has them."""
    ids = {"users": np.asarray(rec.users).tolist(), "items": np.asarray(rec.items).tolist()}
    if rec.titles is not None:
        ids["titles"] = rec.titles.tolist()
    return ids


def _check_pairs(rec: Recommender) -> tuple[torch.Tensor, torch.Tensor]:
    """CHECK_PAIRS (user, item) index pairs, the same for a run every time, the first and last ids among them."""
    g = torch.Generator().manual_seed(0)
    users = torch.randint(len(rec.users), (CHECK_PAIRS,), generator=g)
    items = torch.randint(len(rec.items), (CHECK_PAIRS,), generator=g)
    users[:2], items[:2] = torch.tensor([0, len(rec.users) - 1]), torch.tensor([0, len(rec.items) - 1])
    return users, items


def _batch_dims() -> tuple[dict[int, Any], dict[int, Any]]:
    batch = torch.export.Dim("batch")
    return {0: batch}, {0: batch}


def _torch_write(module: nn.Module, users: torch.Tensor, items: torch.Tensor, path: str) -> None:
    program = torch.export.export(module, (users, items), dynamic_shapes=_batch_dims())
    torch.export.save(program, path)


def _torch_check(path: str, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.export.load(path).module()(torch.from_numpy(users), torch.from_numpy(items)).numpy()


def _onnx_write(module: nn.Module, users: torch.Tensor, items: torch.Tensor, path: str) -> None:
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the exporter's notes on its own internals, none about the model
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (users, items),
                input_names=["user", "item"],
                output_names=["score"],
                dynamic_shapes=_batch_dims(),
                dynamo=True,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    program.save(path)


def _onnx_check(path: str, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["score"], {"user": users.astype(np.int64), "item": items.astype(np.int64)})[0]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _needs(*modules: str) -> None:
    """UserError naming the optional packages an export needs where one is missing."""
    if missing := [m for m in modules if not installed(m)]:
        raise UserError(
            f"--format onnx needs {', '.join(missing)}: pip install 'scalerec[export]' (onnx, onnxruntime, onnxscript)"
        )
