"""Data-parallel training over processes (torchrun): every process trains the same model on its share of each
batch, and the gradients are summed before every step, so that the processes keep identical weights.

Each process draws the same epoch (the same seed), and takes its slice of each batch of `--batch-size` samples:
the batch is global, so LR scaling rules and warmup read it as in one process. Its share's mean loss, weighted
by the share's size over the batch's, makes the summed gradient the batch's mean one. The first process (rank 0)
evaluates, logs and writes the run folder; the others train. One all-reduce of all the gradients per step (one
flat buffer), one every 64 steps for the divergence check, one per epoch for the losses.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Group:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, start: int, end: int) -> tuple[int, int, float]:
        """(first, last, weight): this process's slice of the batch [start, end) and its share of the batch.
        A batch smaller than the number of processes (an epoch's last) is computed whole by each, at 1/world."""
        n = end - start
        if n < self.world:
            return start, end, 1.0 / self.world
        first, last = start + self.rank * n // self.world, start + (self.rank + 1) * n // self.world
        return first, last, (last - first) / n

    def sum_gradients(self, model: torch.nn.Module, weight: float) -> None:
        """Every process's gradients times its weight, summed: the batch's mean gradient, on every process."""
        grads = [p.grad for p in model.parameters() if p.requires_grad]  # all dense: train() sees to it
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight  # one collective for the whole model
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the processes (a new tensor)."""
        x = x.clone()
        dist.all_reduce(x)
        return x

    def wait(self) -> None:
        """Until every process is here."""
        dist.barrier()

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every process (they are seeded alike; this makes sure)."""
        for t in model.state_dict().values():
            dist.broadcast(t, 0)


def setup(device: torch.device) -> tuple[Group | None, torch.device]:
    """Under torchrun with more than one process: join the process group (NCCL on GPUs, Gloo on the CPU) and
    return it with this process's device (on GPUs, cuda:LOCAL_RANK); (None, device) in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))  # rank 0 evaluates meanwhile
    return Group(dist.get_rank(), dist.get_world_size()), device


def teardown(group: Group | None) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()
