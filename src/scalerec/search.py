"""Random search: `scalerec sweep --grid FILE --search random --trials N [--search-seed S]`.

Each [grid] option is a list of choices (one drawn uniformly per trial) or a range, a table `{low = A, high = B}`:
drawn log-uniformly for learning rates and regularisation (LOG_SCALE) or where the table says `log = true`,
uniformly otherwise, and as an integer for an integer option. Drawn numbers keep 3 significant digits, so that a
run's name gives its values exactly. The same seed draws the same trials in the same order, so a search run again
skips its finished trials, and more trials with the same seed add runs after them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalerec.errors import OptionError

# Options a range draws log-uniformly unless its table says `log = false`: a factor of 10 matters as much at
# 1e-4 as at 1e-1 for these.
LOG_SCALE = ("lr", "base_lr", "pretrain_lr", "weight_decay", "l2")


@dataclass(frozen=True)
class Range:
    """A [grid] range: `low` to `high` inclusive, on a log scale or not, integers or not."""

    low: float
    high: float
    log: bool
    integer: bool

    def draw(self, rng: random.Random) -> int | float:
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        x = rng.uniform(lo, hi)
        x = math.exp(x) if self.log else x
        if self.integer:
            return min(int(self.high), max(int(self.low), round(x)))
        return min(self.high, max(self.low, float(f"{x:.3g}")))


def parse_range(path: str | Path, key: str, table: dict[str, Any], kind: type) -> Range:
    """The range a [grid] table gives for option `key` (whose values are of type `kind`), checked."""
    where = f"{path}: [grid] {key}"
    if kind not in (int, float):
        raise OptionError(f"{where}: a range needs a numeric option; give a list of choices")
    if unknown := set(table) - {"low", "high", "log"}:
        raise OptionError(f"{where}: unknown key {sorted(unknown)[0]!r} in its range (expected low, high and log)")
    if "low" not in table or "high" not in table:
        raise OptionError(f"{where}: a range needs low and high, as in {{low = 0.001, high = 0.1}}")
    low, high, log = table["low"], table["high"], table.get("log", key in LOG_SCALE)
    numbers = (int,) if kind is int else (int, float)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (low, high)):
        raise OptionError(f"{where}: low and high are {low!r} and {high!r}, expected {kind.__name__}s")
    if not isinstance(log, bool):
        raise OptionError(f"{where}: log is {log!r}, expected true or false")
    if not low <= high:
        raise OptionError(f"{where}: low {low!r} is above high {high!r}")
    if log and low <= 0:
        raise OptionError(f"{where}: a log-scale range needs low above 0 (got {low!r}); or set log = false")
    return Range(float(low), float(high), log, kind is int)


def trials(space: dict[str, list[Any] | Range], count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` trials drawn from `space` with `seed`: (run name, {option: value}), numbered from 1."""
    rng = random.Random(seed)
    out = []
    for i in range(1, count + 1):
        values = {k: v.draw(rng) if isinstance(v, Range) else v[rng.randrange(len(v))] for k, v in space.items()}
        name = f"{i}-" + "-".join(f"{k}={_shown(v)}" for k, v in values.items())
        out.append((name.replace("/", "_"), values))
    return out


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
