"""scalerec: Neural Collaborative Filtering from proof of concept to production scale.

    run = scalerec.train(data="clicks.csv", epochs=5, output="runs/clicks")
    rec = scalerec.load(run)
    rec.recommend(["alice", "bob"], k=10)
    scalerec.evaluate(run, protocol="full")

docs/api.md describes each; the names below are imported on first use, so that `import scalerec` and the command
line start without loading PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "scalerec.api",
    "load": "scalerec.api",
    "evaluate": "scalerec.api",
    "largest_batch": "scalerec.api",
    "write_report": "scalerec.api",
    "Run": "scalerec.api",
    "Recommender": "scalerec.recommend",
    "Config": "scalerec.config",
    "UserError": "scalerec.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scalerec' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
