"""What every benchmark line says about the machine it ran on."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable

import torch

from scalerec.config import DataConfig
from scalerec.errors import UserError

# MovieLens' shapes for synthetic data: users, items, mean interactions per user ("tiny": for smoke runs).
SHAPES = {
    "ml-100k": (943, 1682, 106),
    "ml-1m": (6040, 3706, 165),
    "ml-20m": (138493, 26744, 144),
    "tiny": (300, 200, 20),
}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "accelerator": device}


def data_config(ncf: str | None, shape: str) -> DataConfig:
    """The NCF paper's files at prefix `ncf`, or else synthetic data of a MovieLens shape."""
    if ncf:
        return DataConfig(dataset="ncf", data=ncf)
    users, items, mean = SHAPES[shape]
    return DataConfig(dataset="synthetic", synthetic_users=users, synthetic_items=items, synthetic_interactions=mean)


def run(main: Callable[[], None]) -> None:
    """A benchmark's main, with a user's mistake (a missing data file, say) as one line and exit status 1, as the
    CLI says it."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
