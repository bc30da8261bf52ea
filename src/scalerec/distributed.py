"""Data-parallel training over processes (torchrun): every process trains the same model on its share of each
batch, and the gradients are summed before every step, so that the processes keep identical weights.

Each process draws the same epoch (the same seed), and takes its slice of each batch of `--batch-size` samples
by its global rank (over all machines): the batch is global, so LR scaling rules and warmup read it as in one
process. Its share's mean loss, weighted by the share's size over the batch's, makes the summed gradient the
batch's mean one. The first process (rank 0) claims the run folder, logs and writes it; every process trains and
evaluates. The gradients are summed by PyTorch's DistributedDataParallel, in buckets all-reduced while the
backward still runs (or, for micro-batches and with --grad-sync flat, in one flat all-reduce after it); one
all-reduce every 64 steps for the divergence check, one per epoch for the losses.

A process that dies (killed, out of memory, its machine lost) makes the others' next collective fail at once
(a closed connection) or, where it hangs, after TIMEOUT: they stop with one line (PeerLost), and under
`torchrun --max-restarts N` the restarted worker group continues the run from its folder's checkpoint.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from scalerec.errors import UserError

# How long a collective waits for a process that neither answers nor closes its connection (a hung or stopped
# one). Every process evaluates and the first writes the checkpoint between steps: seconds to a minute or two on
# the largest MovieLens; the rest is margin.
TIMEOUT = datetime.timedelta(minutes=10)
# After SIGTERM, how long a process may take to stop on its own (write its summary) before it is ended where it
# waits: torchrun sends SIGKILL 30 s after its SIGTERM.
TERM_GRACE_S = 10.0
T = TypeVar("T")


class PeerLost(UserError):
    """Another process of the group stopped or cannot be reached: a collective failed. `said_here`: whether this
    process says so (None: as the CLI decides, one process per machine)."""

    said_here: bool | None = None


def _collective(call: Callable[[], T]) -> T:
    """call(), a collective whose failure (a peer gone: gloo's or NCCL's error and traceback) is one PeerLost line."""
    _waiting.set()
    try:
        return call()
    except torch.OutOfMemoryError:  # this process's own failure, said as such by the caller
        raise
    except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo's own "Connection reset by peer"
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        text = text.split("] ", 1)[-1].split(". ", 1)[0]  # gloo: "[path/pair.cc:537] Read error ...: reset by peer."
        rank = f"process {dist.get_rank()}: " if dist.is_initialized() else ""
        _ignore_term()
        raise PeerLost(f"{rank}another process of the run stopped or cannot be reached ({text})") from None
    finally:
        _waiting.clear()


def _ignore_term() -> None:
    """torchrun sends SIGTERM to the other processes when one fails: a process that is stopping already first
    writes its summary and says why."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class Group:
    rank: int
    world: int
    ddp: torch.nn.parallel.DistributedDataParallel | None = None
    """The model wrapped by data_parallel(): its forward arms the backward's gradient all-reduce."""

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
        _collective(lambda: dist.all_reduce(flat))
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def data_parallel(self, model: torch.nn.Module) -> None:
        """Wrap `model` in DistributedDataParallel (self.ddp), which sends it rank 0's weights: a batch whose
        forward runs through self.ddp has its gradients averaged over the processes by its backward."""
        self.ddp = _collective(lambda: torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False))

    def by_ddp(self, batch: int, micro_batch: int | None) -> bool:
        """Whether a step of `batch` samples sums its gradients by DDP: where the group has it and no process's
        share needs micro-batches. The same in every process (the largest share decides), as DDP needs."""
        largest = batch if batch < self.world else -(-batch // self.world)
        return self.ddp is not None and (micro_batch is None or micro_batch >= largest)

    def backward(self, loss: torch.Tensor, weight: float) -> None:
        """The backward of this process's share of a batch (`weight`: its size over the batch's) whose forward ran
        through self.ddp: DDP averages the gradients over the processes, so the loss is scaled by weight * world
        to make the average the batch's mean gradient, as sum_gradients does."""
        _collective(lambda: (loss * (weight * self.world)).backward())

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the processes (a new tensor)."""
        x = x.clone()
        _collective(lambda: dist.all_reduce(x))
        return x

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every process (they are seeded alike; this makes sure)."""
        for t in model.state_dict().values():
            _collective(lambda t=t: dist.broadcast(t, 0))

    def stopped(self, wait_s: float = 5.0) -> bool | None:
        """Whether the whole job was stopped (every process got a SIGTERM: a scheduler's stop, Ctrl-C on torchrun)
        rather than one process lost (torchrun then stops the others too): each process counts its SIGTERM in the
        group's store, and this waits up to wait_s for all of them. None where there is no store to ask."""
        store = _group_store.get("store")
        if store is None:
            return None
        _ignore_term()
        end = time.monotonic() + wait_s
        try:
            while store.add("terminated", 0) < self.world:
                if time.monotonic() > end:
                    return False
                time.sleep(0.05)
        except RuntimeError:  # the store's host is gone with its process
            return None
        return True

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` (any picklable object) on every process."""
        box = [value if self.is_main else None]
        _collective(lambda: dist.broadcast_object_list(box, 0))
        return box[0]  # type: ignore[return-value]


def setup(device: torch.device) -> tuple[Group | None, torch.device]:
    """Under torchrun with more than one process: join the process group (NCCL on GPUs, Gloo on the CPU) and
    return it with this process's device (on GPUs, cuda:LOCAL_RANK); (None, device) in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _collective(lambda: _join(device))
    _watch_for_term()
    return Group(dist.get_rank(), dist.get_world_size()), device


def on_main(
    group: Group | None,
    work: Callable[[], T],
    shared: Callable[[T], Any] = lambda r: r,
    undo: Callable[[T], Any] | None = None,
) -> T:
    """work() on the first process; every other process gets shared(its result), or stops with its error. `undo`:
    what the first process does with its result where the others cannot be told (one of them lost)."""
    if group is None:
        return work()
    result, error = None, None
    if group.is_main:
        try:
            result = work()
        except Exception as e:  # said by the first process; the others stop with it
            error = e
    sent = (None, str(error)) if error is not None else (shared(result) if group.is_main else None, None)
    try:
        got, message = group.broadcast(sent)
    except PeerLost:
        if undo is not None and result is not None:  # e.g. a folder claimed for a run that will not start
            undo(result)
        raise
    if error is not None:
        raise error
    if message is not None:  # the first process's, said by it
        echoed = UserError(message)
        echoed.said_here = False
        raise echoed
    return result if group.is_main else got


def _join(device: torch.device) -> None:
    """init_process_group from torchrun's environment (env://): NCCL bound to this process's GPU (device_id: its
    communicator is made at once, not at the first collective, which could pick another GPU), or Gloo on the CPU.
    torchrun keeps its store when it restarts a worker group, so each group's keys go under a prefix of their own:
    without it the restarted processes would read the dead group's addresses and fail to connect. The prefix is the
    group's generation, counted in the store: every process of every group adds 1 on joining, so the n-th group's
    processes count (n-1)*world+1 .. n*world. (The restart count in the environment would not do: on several
    machines, a launcher whose own workers did not fail restarts them without counting a restart.) A process that
    dies before it counts itself (in its first seconds) leaves the later groups' counts apart: they wait TIMEOUT and
    fail."""
    backend, bound = ("nccl", {"device_id": device}) if device.type == "cuda" else ("gloo", {})
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not torchrun: MASTER_ADDR and the rest set by hand
        dist.init_process_group(backend, timeout=TIMEOUT, **bound)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0  # else torchrun's agent hosts it
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, host, timeout=TIMEOUT)
    generation = (store.add("scalerec/joined", 1) - 1) // world
    prefixed = dist.PrefixStore(f"scalerec/group-{generation}/", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world, timeout=TIMEOUT, **bound)
    _group_store["store"] = dist.PrefixStore("scalerec/", prefixed)


def teardown(group: Group | None) -> None:
    _stop_watching()
    _group_store.clear()
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()


def restarts_allowed() -> int:
    """torchrun's --max-restarts (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


_watch: dict[str, Any] = {}
_waiting = threading.Event()  # set while the main thread waits in a collective
_group_store: dict[str, Any] = {}  # the process group's own keys in torchrun's store


def count_term() -> None:
    """Count this process's SIGTERM in the group's store, once (see Group.stopped)."""
    store = _group_store.get("store")
    if store is None or _group_store.get("counted"):
        return
    _group_store["counted"] = True
    try:
        store.add("terminated", 1)
    except RuntimeError:  # the store's host is gone
        pass


def _watch_for_term() -> None:
    """Python runs a signal's handler only between bytecodes, so a process waiting in a collective on a peer that
    hangs would hold torchrun's SIGTERM until TIMEOUT. The signal also lands on a wakeup pipe; a thread that reads
    it gives the process TERM_GRACE_S to stop as usual (summary written), then ends it if it is still waiting in a
    collective (never in the middle of writing a checkpoint)."""
    if threading.current_thread() is not threading.main_thread() or _watch:
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:
        os.close(read)
        os.close(write)
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            got = os.read(read, 64)
            if signal.SIGTERM not in got:
                continue
            count_term()  # at once, even while the main thread waits in a collective
            if stop.wait(TERM_GRACE_S):
                continue
            while not stop.wait(0.5):
                if _waiting.is_set():
                    print("scalerec: terminated (SIGTERM) while waiting for the other processes", file=sys.stderr)
                    os._exit(143)
        os.close(read)

    _watch.update(read=read, write=write, previous=previous, stop=stop)
    threading.Thread(target=watch, name="scalerec-sigterm", daemon=True).start()


def _stop_watching() -> None:
    if not _watch:
        return
    _watch["stop"].set()
    signal.set_wakeup_fd(_watch["previous"])
    try:
        os.write(_watch["write"], b"\0")  # wakes the thread, which sees the stop
    except BrokenPipeError:  # the thread saw the stop already, and closed its end
        pass
    os.close(_watch["write"])
    _watch.clear()
