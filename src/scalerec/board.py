"""TensorBoard logs of a run (`--tensorboard`), in <run>/tensorboard: written after each epoch is committed, from
what the epoch already brought to the host (no extra sync during it).

Per step: the loss (the step's mean) and the lr, every step, or every n-th where an epoch has more than STEP_POINTS
steps (a diverged epoch's up to where it stopped). Per epoch: the loss, each metric of metrics.jsonl, samples/s and
the training seconds. A sweep's runs each write their own, so that `tensorboard --logdir SWEEP` shows them side by
side.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch

from scalerec.errors import UserError
from scalerec.run_folder import TENSORBOARD

STEP_POINTS = 2000


def check() -> None:
    """UserError where TensorBoard's writer cannot be imported: said before the run starts, not after an epoch."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'scalerec[tensorboard]'")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as e:  # a tensorboard that this torch cannot use (its version, protobuf's)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--tensorboard: PyTorch's TensorBoard writer cannot be imported ({first})") from None


class Board:
    def __init__(self, run_dir: Path, p) -> None:
        """`p`: the run's parts (assembly.Parts): its steps per epoch and lr schedule."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.p = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD)), p

    def steps(self, epoch: int, losses: torch.Tensor) -> None:
        """An epoch's steps' mean `losses` (a diverged epoch's too, up to where it stopped) and lrs."""
        p, add = self.p, self.writer.add_scalar
        first, stride = p.plan.starts[epoch], -(-p.plan.steps(epoch) // STEP_POINTS)
        for k, loss in enumerate(losses.tolist()[::stride]):
            step = first + k * stride
            add("loss/step", loss, step)
            add("lr/step", p.lr * p.schedule(step), step)
        self.writer.flush()

    def diverged(self, epoch: int, losses: torch.Tensor, step: int) -> None:
        """The steps of a diverged epoch up to `step`; the divergence is the run's result whatever this write does."""
        with contextlib.suppress(OSError):
            self.steps(epoch, losses[: step + 1])

    def epoch(self, row: dict, losses: torch.Tensor) -> None:
        """An epoch's metrics `row` (as metrics.jsonl has it) and its steps' mean `losses`."""
        self.steps(row["epoch"], losses)
        add, epoch = self.writer.add_scalar, row["epoch"]
        add("loss/epoch", row["loss"], epoch)
        for name, value in row.items():
            if "@" in name:
                add(f"metrics/{name}", value, epoch)
        add("throughput/samples_per_s", row["samples_per_s"], epoch)
        add("time/train_s", row["train_s"], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
