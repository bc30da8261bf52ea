"""Checkpoints: a run's state after each epoch, for `scalerec train --resume RUN`, and its best epoch's model.

<run>/checkpoint.pt holds the weights, the optimizer's, schedule's and loss scaler's state, the random streams (the
sampler's generator and torch's), the batch, and the epochs so far (their metrics rows and the best one), and the
best epoch's weights where that was an earlier epoch. <run>/best.pt holds the best epoch's model alone (its
weights, epoch, metrics, the run's options and its data's fingerprint): what recommend, evaluate, export and
serve use by default. It is written after the checkpoint, so that a run stopped between the two writes it again
from the checkpoint on resume.
Resuming from it continues the run where it stopped: on the CPU, with the same metrics as a run never stopped
(tests/test_checkpoint.py). It is written under a temporary name and renamed, so a crash while writing leaves
the previous epoch's. torch.save writes a zip whose every member carries a CRC32; load checks them all first,
because torch.load does not, and a flipped byte in a tensor would otherwise load as a different weight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalerec.config import DataConfig, build_config, overrides_from_mapping
from scalerec.data.download import default_data_dir
from scalerec.errors import Diverged, UserError
from scalerec.files import few, is_run_folder, write_with
from scalerec.run_folder import CONFIG, PRETRAIN_STAGES, SUMMARY, checked_row, read_summary, run_options

FILE, BEST = "checkpoint.pt", "best.pt"
VERSION = 1
# What every checkpoint holds, and the type of each (and "config", the run's options, where it was written with them)
FIELDS = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "random": dict,
    "batch_size": int,
    "history": list,
    "best": dict,
    "data": dict,
}


def save(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint durably under a temporary name, then rename it (WriteError naming it on failure)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: a full disk surfaces as the OSError, not torch's "unexpected pos"
            torch.save({"version": VERSION, **state}, f)

    write_with(run_dir / FILE, write)


def save_best(run_dir: Path, weights: dict, best: dict, run_cfg, data_fingerprint: str | None) -> None:
    """Write best.pt (as save writes the checkpoint): the best epoch's `weights` (a CPU state_dict), its metrics
    row `best` (with its "epoch"), the run's options and its data's fingerprint."""
    state = {"model": weights, "epoch": best["epoch"], "metrics": best, "config": run_cfg.to_dict()}
    state["data_fingerprint"] = data_fingerprint

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save({"version": VERSION, **state}, f)

    write_with(run_dir / BEST, write)


def weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, copied to the CPU: the best epoch's, kept while later epochs change the model."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_best(run_dir: Path) -> dict[str, Any]:
    """A run folder's best.pt, checked; UserError naming it where it cannot be read or is not one."""
    path = Path(run_dir) / BEST
    state = _read(path, "model")
    for key, kind in (("model", dict), ("epoch", int), ("metrics", dict), ("config", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise UserError(f"{path}: '{key}' is missing or not a {kind.__name__} (a damaged or foreign model file)")
    return state


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of a run folder, on the CPU; UserError where there is none or it cannot be read."""
    run_dir = Path(run_dir)
    path = run_dir / FILE
    if not path.is_file():
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: {'not a folder' if run_dir.exists() else 'no such folder'} (expected a run)")
        if runs := sorted(d.name for d in run_dir.iterdir() if is_run_folder(d)):
            if set(runs) <= set(PRETRAIN_STAGES) and (run_dir / CONFIG).is_file():
                raise UserError(f"{run_dir}: a --pretrain run whose NeuMF has no epoch yet (its stages: {few(runs)})")
            raise UserError(f"{run_dir}: a sweep folder; give one of its runs ({few(runs)})")
        raise UserError(
            f"{run_dir}: no {FILE} in it (a run saves one after each epoch it finishes, unless trained with "
            "--no-checkpoint)"
        )
    state = _read(path)
    for key, kind in FIELDS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            what = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise UserError(f"{path}: '{key}' is {what}, expected a {kind.__name__} (a damaged or foreign checkpoint)")
    for i, row in enumerate(state["history"]):
        checked_row(row, f"{path}: 'history' row {i}")
    if state["history"] and not isinstance(state["best"].get("epoch"), int):
        raise UserError(f"{path}: 'best' names no epoch (a damaged or foreign checkpoint)")
    return state


def _read(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """A file torch.save wrote (`what`: a checkpoint or a model, in messages), every zip member's CRC32 checked
    first; tensors and plain data only."""
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:  # truncated, or not a zip at all
        raise UserError(f"{path}: not a readable scalerec {what} ({e})") from None
    if damaged is not None:
        raise UserError(f"{path}: damaged ({damaged} does not match its CRC32); use a copy, or train anew")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # a foreign zip: torch raises its own kinds
        text = str(e).strip()
        if "Weights only load failed" in text:
            why = "it holds Python objects besides tensors and plain data, which are not loaded: they could run code"
        else:
            why = (text.splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"{path}: not a readable scalerec {what} ({why})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise UserError(f"{path}: not a scalerec {what} of version {VERSION}")
    return state


def check_run(saved: dict[str, Any], cfg, run_dir: Path, name: str = FILE) -> None:
    """UserError where the checkpoint (or best.pt: `name`) is not this run's: made with other options than its
    config.json's (copied from another run), --resume's speed options aside."""
    if "config" not in saved:  # written without its options: the data check stands alone
        return
    path = Path(run_dir) / name
    try:
        theirs = run_options(build_config(overrides_from_mapping(saved["config"], path, sections_only=True)).to_dict())
    except (UserError, AttributeError, TypeError):
        raise UserError(f"{path}: 'config' is not a run's options (a damaged or foreign checkpoint)") from None
    ours = run_options(cfg.to_dict())
    if ours != theirs:
        differ = sorted(k for s in ours for k in ours[s] if (theirs.get(s) or {}).get(k, ...) != ours[s][k])
        raise UserError(
            f"{path}: another run's {'checkpoint' if name == FILE else 'model'} (its options differ from "
            f"{run_dir / 'config.json'}'s: {few(differ) or 'its sections'}); use the run it came from, or train anew"
        )


def random_state(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """The random streams a run draws from after it started: the sampler's (and the device it draws on), torch's
    (dropout), the GPU's."""
    state = {"sampler": generator.get_state(), "sampler_device": generator.device.type, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, Any], device: torch.device, generator: torch.Generator, seed: int, epoch: int):
    """The saved streams put back; a note (else None) where the sampler's was drawn on another kind of device,
    whose generator state this one cannot take (16 bytes on a GPU, 5,056 on the CPU): the sampler is then
    reseeded from (seed, epoch), the same stream whenever that run resumes there."""
    saved_on = state.get("sampler_device")
    if saved_on is None:  # written before the device was recorded: its state's size tells
        same = state["sampler"].numel() == generator.get_state().numel()
    else:
        same = saved_on == generator.device.type
    note = None
    if same:
        generator.set_state(state["sampler"])
    else:
        generator.manual_seed(reseeded(seed, epoch))
        note = (
            f"the checkpoint's negatives and shuffle were drawn on {saved_on or 'another kind of device'}, whose "
            f"random stream {generator.device.type} cannot continue: reseeded from (seed {seed}, epoch {epoch}), so "
            "the epochs from here draw other negatives than the run would have drawn there"
        )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    return note


def reseeded(seed: int, epoch: int) -> int:
    """A seed for the sampler of a run resumed at `epoch` on another kind of device: a pure function of both."""
    digest = hashlib.blake2b(f"scalerec:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63, as manual_seed takes


# An optimizer's settings that belong to the device it runs on, not to the run: load_state_dict would take the
# saved groups' (a CPU run's row-wise Adam has none), leaving a GPU's fused Adam unfused.
DEVICE_SETTINGS = ("fused", "foreach", "capturable")


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`saved` (an optimizer's state_dict, maybe of another device's optimizer for the same parameters: row-wise
    or fused Adam) loaded into `optimizer`, which keeps its own device settings and step counters' kind."""
    own = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, own):
        for k in DEVICE_SETTINGS:
            group.pop(k, None)
        group.update({k: v for k, v in settings.items() if k in DEVICE_SETTINGS or k not in group})
    builtin = type(optimizer).__module__.startswith("torch.optim")
    for group in optimizer.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "step" not in st:
                continue
            if builtin:  # torch's keep a float32 tensor, on the parameters' device where fused or capturable
                where = p.device if on_device else "cpu"
                st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32, device=where)
            elif torch.is_tensor(st["step"]):  # scalerec's count steps in Python
                st["step"] = int(st["step"])


def fingerprint(ds) -> str:
    """A digest of a dataset's split and ids: what resume and recommend check the data against, so that a data
    file changed since the run is refused rather than silently trained on or recommended from."""
    h = hashlib.blake2b(digest_size=16)
    arrays = [ds.train_users, ds.train_items, ds.test_users, ds.test_items, ds.user_ids, ds.item_ids]
    if len(ds.valid_users):  # a split without validation keeps the digest it had before validation existed
        arrays += [ds.valid_users, ds.valid_items]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def absolute(data) -> dict[str, Any]:
    """A DataConfig as a dict whose paths are absolute (the data folder resolved): resume and recommend read
    the same files from any working directory."""
    out = dataclasses.asdict(data)
    out["data"] = str(Path(data.data).resolve()) if data.data else None
    out["data_dir"] = str(Path(data.data_dir or default_data_dir()).resolve())
    return out


def data_config(saved: dict[str, Any], run_dir: Path):
    """The checkpoint's DataConfig: the run's data options with absolute paths (the same files from any folder)."""
    try:
        return DataConfig(**{"valid": False, **saved["data"]})  # made before --valid existed: none
    except (TypeError, ValueError) as e:
        raise UserError(f"{Path(run_dir) / FILE}: 'data' is not a run's data options ({e})") from None


def check_data(saved: dict[str, Any], ds, run_dir: Path) -> None:
    """UserError where `ds` is not the data the checkpoint's run trained on."""
    if saved.get("data_fingerprint") not in (None, fingerprint(ds)):
        raise UserError(
            f"{run_dir}: the data ({ds.source}) is not what the run trained on: it changed since (other rows, ids "
            "or split); train a new run on it"
        )


def restore(saved: dict[str, Any], run_dir: Path, p, device, seed: int) -> str | None:
    """The checkpoint's weights, optimizer, schedule, loss scale and random streams put into the run's parts
    (assembly.Parts), each checked to fit; a note where the sampler was reseeded (set_random_state)."""
    try:
        p.model.load_state_dict(saved["model"])
        load_optimizer(p.optimizer, saved["optimizer"])
        p.scheduler.load_state_dict(saved["scheduler"])
        p.scaler.load_state_dict(saved["scaler"])
        return set_random_state(saved["random"], device, p.sampler.generator, seed, len(saved["history"]))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # a damaged or hand-made checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{run_dir / FILE}: its state does not fit this run's model and optimizer ({first})") from None


def to_resume(cfg, held, adopt: bool) -> dict[str, Any] | None:
    """The checkpoint a resumed run (`held`: its run_folder.Claim) continues from, checked to be this run's (its
    options, not diverged, epochs left) before anything is written; None for a new run."""
    if not held.resume:
        return None
    run_dir = held.run_dir
    if (read_summary(run_dir / SUMMARY) or {}).get("state") == "diverged":
        raise Diverged(f"{run_dir}: diverged; resuming would replay the same steps (train anew, e.g. lower --lr)")
    saved = load(run_dir)
    check_run(saved, cfg, run_dir)
    # a run stopped after its last epoch's checkpoint, before its summary, is resumed to write its files whole
    if (read_summary(run_dir / SUMMARY) or {}).get("state") == "finished" and not adopt:
        why = "its epoch is done" if cfg.train.epochs == 1 else f"all {cfg.train.epochs} epochs are done"
        if len(saved["history"]) < cfg.train.epochs:
            why = f"it stopped early after {len(saved['history'])} epochs (--patience)"
        raise UserError(f"{run_dir}: {why}; nothing to resume")
    return saved


def state(p, device, history: list[dict], best: dict, run_cfg, extra: dict) -> dict[str, Any]:
    """What checkpoint.pt holds after an epoch (FIELDS) of a run whose parts are `p` (assembly.Parts)."""
    return {
        "model": p.model.state_dict(),
        "optimizer": p.optimizer.state_dict(),
        "scheduler": p.scheduler.state_dict(),
        "scaler": p.scaler.state_dict(),
        "random": random_state(device, p.sampler.generator),
        "batch_size": p.batch,
        "history": history,
        "best": best,
        **extra,
        "config": run_cfg.to_dict(),
    }


def restore_run(saved: dict, run_dir: Path, p, device, hr_key: str, seed: int, log) -> tuple[list[dict], dict]:
    """The checkpoint's state put into the run's parts; (its epochs, its best epoch)."""
    if saved["history"] and hr_key not in saved["best"]:
        raise UserError(f"{run_dir / FILE}: 'best' has no {hr_key} (a damaged or foreign checkpoint)")
    if note := restore(saved, run_dir, p, device, seed):
        log(f"Note: {note}")
    return saved["history"], saved["best"]


def restore_best(saved: dict[str, Any], model, run_dir: Path, run_cfg, data_fingerprint: str | None) -> dict | None:
    """A resumed run's best weights (None where its checkpoint, from an older scalerec, lacks them): the
    checkpoint's model where the best epoch was its last, else its "best_model". best.pt is written again where
    the run stopped before writing it."""
    best, history = saved["best"], saved["history"]
    if not history:
        return None
    kept = weights_copy(model) if best["epoch"] == history[-1]["epoch"] else saved.get("best_model")
    if kept is not None and not isinstance(kept, dict):
        raise UserError(f"{Path(run_dir) / FILE}: 'best_model' is not a model's weights (a damaged checkpoint)")
    path = Path(run_dir) / BEST
    try:
        current = load_best(run_dir) if path.is_file() else None
    except UserError:  # damaged: it is written again
        current = None
    if kept is not None and (current is None or current["epoch"] != best["epoch"]):
        save_best(run_dir, kept, best, run_cfg, data_fingerprint)
    return kept
