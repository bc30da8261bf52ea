"""The learning-rate schedule as a pure function of the step: a factor in (0, 1] of the peak lr.

Warmup over the first `warmup_steps` steps:
- exponential, exactly as the GHC 2019 notebook: factor = exp(log(0.01) * (warmup_steps - step) / warmup_steps),
  from 1% of the lr at step 0 up to the lr;
- linear: factor = (step + 1) / warmup_steps.
Decay over the steps after warmup, to `total_steps`: none, cosine (to 0), step (x0.1 at 50% and 75% of it),
poly (power 2, to 0).
"""

from __future__ import annotations

import math

WARMUPS = ("none", "exponential", "linear")
DECAYS = ("none", "cosine", "step", "poly")


def lr_factor(step: int, warmup_steps: int, total_steps: int, warmup: str = "none", decay: str = "none") -> float:
    if warmup not in WARMUPS:
        raise ValueError(f"Invalid warmup: {warmup!r} (expected one of {', '.join(WARMUPS)})")
    if decay not in DECAYS:
        raise ValueError(f"Invalid decay: {decay!r} (expected one of {', '.join(DECAYS)})")
    if warmup != "none" and step < warmup_steps:
        if warmup == "exponential":
            return math.exp(math.log(0.01) * (warmup_steps - step) / warmup_steps)
        return min(1.0, (step + 1) / warmup_steps)  # warmup_steps may be fractional
    start = warmup_steps if warmup != "none" else 0
    span = max(1, total_steps - start)
    progress = min(1.0, max(0.0, (step - start) / span))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if decay == "poly":
        return (1.0 - progress) ** 2
    return 1.0
