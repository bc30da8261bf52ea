"""Mixed precision: fp32, bf16 or fp16 -> an autocast context and a GradScaler that is enabled only for fp16.

The training loop never branches on precision: it always runs under `autocast_context(...)` (a no-op for
fp32) and always calls scaler.scale / step / update (pass-throughs when the scaler is disabled). For fp16,
dynamic loss scaling keeps small gradients from underflowing; `scaler.step` unscales the gradients before the
optimizer sees them, so LARS and LAMB compute their trust ratios on true gradients, and it skips a step whose
gradients hold inf or nan (the loop counts those). Weights and optimizer state stay in fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"Invalid precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def set_matmul_precision(choice: str, device: torch.device) -> str:
    """--matmul-precision put in force for a run on `device` (auto: TF32's high on a GPU, highest on the CPU);
    the precision in force, for the log."""
    chosen = ("high" if device.type == "cuda" else "highest") if choice == "auto" else choice
    torch.set_float32_matmul_precision(chosen)
    return chosen
