"""Optimizers and learning-rate rules for large batches: scaling rules, warmup and decay, LARS, LAMB."""

from scalerec.optim.factory import build_optimizer
from scalerec.optim.lamb import LAMB
from scalerec.optim.lars import LARS
from scalerec.optim.rowwise import RowwiseAdam
from scalerec.optim.scaling import scaled_lr
from scalerec.optim.schedule import lr_factor

__all__ = ["LAMB", "LARS", "RowwiseAdam", "build_optimizer", "lr_factor", "scaled_lr"]
