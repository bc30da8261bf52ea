"""Checkpoints: a run's state after each epoch, for `scalerec train --resume RUN` and `scalerec recommend RUN`.

<run>/checkpoint.pt holds the weights, the optimizer's, schedule's and loss scaler's state, the random streams (the
sampler's generator and torch's), the batch, and the epochs so far (their metrics rows and the best one).
Resuming from it continues the run where it stopped: on the CPU, with the same metrics as a run never stopped
(tests/test_checkpoint.py). It is written under a temporary name and renamed, so a crash while writing leaves
the previous epoch's. torch.save writes a zip whose every member carries a CRC32; load checks them all first,
because torch.load does not, and a flipped byte in a tensor would otherwise load as a different weight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalerec.errors import UserError
from scalerec.files import few, is_run_folder, write_with

FILE = "checkpoint.pt"
VERSION = 1


def save(run_dir: Path, state: dict[str, Any]) -> None:
    write_with(run_dir / FILE, lambda tmp: torch.save({"version": VERSION, **state}, tmp))


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of a run folder, on the CPU; UserError where there is none or it cannot be read."""
    run_dir = Path(run_dir)
    path = run_dir / FILE
    if not path.is_file():
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: {'not a folder' if run_dir.exists() else 'no such folder'} (expected a run)")
        if runs := sorted(d.name for d in run_dir.iterdir() if is_run_folder(d)):
            raise UserError(f"{run_dir}: a sweep folder; give one of its runs ({few(runs)})")
        raise UserError(
            f"{run_dir}: no {FILE} in it (a run saves one after each epoch it finishes, unless trained with "
            "--no-checkpoint)"
        )
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:  # truncated, or not a zip at all
        raise UserError(f"{path}: not a readable scalerec checkpoint ({e})") from None
    if damaged is not None:
        raise UserError(f"{path}: damaged ({damaged} does not match its CRC32); resume from a copy, or train anew")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # a foreign zip: torch raises its own kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: not a readable scalerec checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise UserError(f"{path}: not a scalerec checkpoint of version {VERSION}")
    return state


def random_state(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random streams a run draws from after it started: the sampler's, torch's (dropout), the GPU's."""
    state = {"sampler": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, torch.Tensor], device: torch.device, generator: torch.Generator) -> None:
    generator.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def fingerprint(ds) -> str:
    """A digest of a dataset's split and ids: what resume and recommend check the data against, so that a data
    file changed since the run is refused rather than silently trained on or recommended from."""
    h = hashlib.blake2b(digest_size=16)
    for a in (ds.train_users, ds.train_items, ds.test_users, ds.test_items, ds.user_ids, ds.item_ids):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def absolute(data) -> dict[str, Any]:
    """A DataConfig as a dict whose paths are absolute (the data folder resolved): resume and recommend read
    the same files from any working directory."""
    from scalerec.data.movielens import default_data_dir

    out = dataclasses.asdict(data)
    out["data"] = str(Path(data.data).resolve()) if data.data else None
    out["data_dir"] = str(Path(data.data_dir or default_data_dir()).resolve())
    return out


def check_data(saved: dict[str, Any], ds, run_dir: Path) -> None:
    """UserError where `ds` is not the data the checkpoint's run trained on."""
    if saved.get("data_fingerprint") not in (None, fingerprint(ds)):
        raise UserError(
            f"{run_dir}: the data ({ds.source}) is not what the run trained on: it changed since (other rows, ids "
            "or split); train a new run on it"
        )
