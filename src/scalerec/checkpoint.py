"""Checkpoints: a run's state after each epoch, for `scalerec train --resume RUN` and `scalerec recommend RUN`.

<run>/checkpoint.pt holds the weights, the optimizer's, schedule's and loss scaler's state, the random streams (the
sampler's generator and torch's), the batch, and the epochs so far (their metrics rows and the best one).
Resuming from it continues the run where it stopped: on the CPU, with the same metrics as a run never stopped
(tests/test_checkpoint.py). It is written under a temporary name and renamed, so a crash while writing leaves
the previous epoch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scalerec.errors import UserError
from scalerec.files import write_with

FILE = "checkpoint.pt"
VERSION = 1


def save(run_dir: Path, state: dict[str, Any]) -> None:
    write_with(run_dir / FILE, lambda tmp: torch.save({"version": VERSION, **state}, tmp))


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of a run folder, on the CPU; UserError where there is none or it cannot be read."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        why = "no such folder" if not Path(run_dir).is_dir() else f"no {FILE} in it"
        raise UserError(f"{run_dir}: {why} (a run saves one after each epoch, unless trained with --no-checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # a truncated or foreign file: torch raises its own kinds
        raise UserError(f"{path}: not a readable scalerec checkpoint ({' '.join(str(e).split())[:200]})") from None
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
