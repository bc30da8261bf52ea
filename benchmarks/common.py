"""What every benchmark line says about the machine it ran on."""

from __future__ import annotations

import platform

import torch


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "accelerator": device}
