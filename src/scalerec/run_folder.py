"""The run folder: claimed (locked) before anything in it is read as free or written, and what it holds read
back and checked (config.json, metrics.jsonl, summary.json), each problem one line naming the file and the field.

Never imports torch: `scalerec report` reads run folders with it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalerec.config import Config, build_config, overrides_from_mapping
from scalerec.errors import UserError
from scalerec.files import LOCK, FolderLock, few, hold_folder, is_run_folder, remove_temporaries, write_atomic

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT, BEST, DATA, FAILED = "checkpoint.pt", "best.pt", "data.npz", "failed.json"
TENSORBOARD = "tensorboard"  # --tensorboard's event files (board.py)
SWEEP_FILE = "sweep.json"  # the base options of the sweep a folder holds (sweep.py)
PRETRAIN_STAGES = ("gmf", "mlp")  # --pretrain's stages, each a run folder inside the run's (pretrain.py)
WRITTEN = (CONFIG, METRICS, SUMMARY, CHECKPOINT, BEST, DATA, FAILED)  # what a run writes (each by write_with)


@dataclass
class Claim:
    """A run folder held by this process: `resume` where it holds this run's checkpoint to continue from."""

    run_dir: Path
    lock: FolderLock | None
    resume: bool = False
    created: bool = False  # made by this claim: removed again where the run stopped before writing into it

    def release(self) -> None:
        if self.lock is None:
            return
        if self.created and {p.name for p in self.run_dir.iterdir()} == {LOCK}:
            with contextlib.suppress(OSError):
                (self.run_dir / LOCK).unlink()
                self.run_dir.rmdir()
        self.lock.close()
        self.lock = None

    def clean(self) -> None:
        """Once the run's checks have passed and it is about to write: remove what killed writes left, a sweep's
        record of an earlier failed attempt, and, for a run that starts anew, an earlier attempt's logs."""
        remove_temporaries(self.run_dir, WRITTEN)
        for name in (FAILED,) if self.resume else (METRICS, SUMMARY, CHECKPOINT, BEST, DATA, FAILED):
            (self.run_dir / name).unlink(missing_ok=True)
        if not self.resume and (self.run_dir / CONFIG).is_file():  # an earlier attempt's steps would overlap these
            shutil.rmtree(self.run_dir / TENSORBOARD, ignore_errors=True)

    def shared(self) -> Claim:
        """What the other processes of a data-parallel run know of it: the folder, not the lock."""
        return Claim(self.run_dir, None, self.resume)


def default_run_dir(cfg: Config) -> Path:
    """runs/<time>-<data>-<model>: the dataset, or the --data file (its folder for MovieLens' own file names:
    ml-1m/ratings.dat -> ml-1m; clicks.csv.gz -> clicks)."""
    from scalerec.data.movielens import RATING_FILES

    data = cfg.data.dataset
    if cfg.data.data:
        path = Path(cfg.data.data).resolve()
        data = (path.parent.name if path.name in RATING_FILES else path.name.split(".")[0]) or "data"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{data}-{cfg.model.model}"


def claim(cfg: Config, resume: Path | None = None, adopt: bool = False) -> Claim:
    """Lock the run folder, then check it: `resume` (train --resume) names a run to continue; otherwise the
    folder is --output's, or a new runs/<time>-... Refused: a folder that holds another run's results, or a sweep.
    With `adopt` (a sweep run again, a worker group restarted by torchrun), a folder holding an unfinished run of
    this same config is taken over: continued from its checkpoint, or started over where it has none. Nothing in
    the folder is changed here (clean() does, once the run's own checks have passed)."""
    if resume is not None:
        run_dir = Path(resume)
        held = Claim(run_dir, hold_folder(run_dir), resume=True)
    elif cfg.train.output:
        run_dir = Path(cfg.train.output)
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--output {run_dir}: exists and is not a folder")
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        held = _held(run_dir, created, lambda: _check_free(run_dir, cfg, adopt))
    else:
        run_dir = default_run_dir(cfg)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        for n in range(2, 1000):  # two runs started in the same second get two folders
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                run_dir = run_dir.with_name(f"{default_run_dir(cfg).name}-{n}")
        held = _held(run_dir, True, lambda: _check_free(run_dir, cfg, adopt))
    return held


def _held(run_dir: Path, created: bool, check) -> Claim:
    """The folder's lock, then `check()` -> whether to resume; on a refusal the lock is let go and a folder made
    here is removed again."""
    try:
        held = Claim(run_dir, hold_folder(run_dir), created=created)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    try:
        held.resume = check()
    except BaseException:
        held.release()
        raise
    return held


def _check_free(run_dir: Path, cfg: Config, adopt: bool) -> bool:
    """Whether to resume; UserError where the folder holds what another run made."""
    stages = PRETRAIN_STAGES if cfg.model.pretrain else ()
    if runs := sorted(d.name for d in run_dir.iterdir() if d.is_dir() and is_run_folder(d) and d.name not in stages):
        stages_only = set(runs) <= set(PRETRAIN_STAGES)
        what = "a --pretrain run's folder, holding its stages" if stages_only else "a sweep folder, holding runs"
        raise UserError(f"--output {run_dir}: {what} ({few(runs)}); choose another folder")
    logged = (run_dir / METRICS).is_file() and (run_dir / METRICS).stat().st_size > 0
    # results of an earlier run (a summary alone: stopped before its first epoch ended)
    earlier = logged or (run_dir / CHECKPOINT).is_file() or (run_dir / BEST).is_file()
    if earlier and not (adopt and same_config(run_dir, cfg) and not finished(run_dir)):
        how = (
            "choose another folder"
            if finished(run_dir)
            else f"resume it (--resume {run_dir}), or choose another folder"
        )
        raise UserError(f"--output {run_dir}: holds an earlier run's results; {how}")
    return earlier and (run_dir / CHECKPOINT).is_file()


def finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` ended: all its epochs, or diverged (failed or interrupted runs can go on)."""
    try:
        return (read_summary(run_dir / SUMMARY) or {}).get("state") in ("finished", "diverged")
    except UserError:
        return False


# Options that change the speed (and the rounding) of a run, or what it writes beside its results, not the run:
# --resume takes them. A run resumed on
# another kind of device continues with a reseeded sampler (checkpoint.set_random_state).
SPEED_OPTIONS = ("threads", "cpu_matmul", "grad_sync", "device", "matmul_precision", "eval_batch_size", "tensorboard")


def run_options(config: dict[str, Any]) -> dict[str, Any]:
    """A config's options (a Config's dict, or one as a file holds it: options added to scalerec since count at
    their defaults) less the speed options and --output (a run is where its folder is, however its path is
    written): what makes two runs the same run."""
    left_out = (*SPEED_OPTIONS, "output")
    return {name: {k: v for k, v in section.items() if k not in left_out} for name, section in config.items()}


def same_config(run_dir: Path, cfg: Config, name: str = CONFIG) -> bool:
    """Whether the run in `run_dir` was made with these options (its config.json), speed options aside."""
    try:
        return run_options(read_config(run_dir / name).to_dict()) == run_options(cfg.to_dict())
    except (OSError, UserError):
        return False


def read_config(path: Path) -> Config:
    """A run's config.json, every field checked: UserError naming the file and the field."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: holds {_kind(raw)}, expected a JSON object of option sections")
    try:
        return build_config(overrides_from_mapping(raw, path, sections_only=True))
    except UserError as e:
        text = str(e)
        raise UserError(text if text.startswith(str(path)) else f"{path}: {text}") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, each checked; a last line cut short (no newline at its end: an append that a crash
    stopped) is left out. UserError naming the file, the line and the field."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)  # the file does not end with a newline: the line may be cut short
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}, line {number}: not UTF-8 text (a damaged or foreign file)") from None
        except ValueError:
            if last:
                continue
            raise UserError(f"{path}, line {number}: not a JSON line (expected one object per epoch)") from None
        rows.append(checked_row(row, f"{path}, line {number}"))
    return rows


ROW_NUMBERS = ("loss", "train_s", "eval_s", "samples_per_s", "lr")


def checked_row(row: Any, where: str) -> dict[str, Any]:
    """An epoch's metrics row (a line of metrics.jsonl, or of a checkpoint's history); UserError saying `where`."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: holds {_kind(row)}, expected a JSON object (one epoch's metrics)")
    if not _is_int(row.get("epoch")) or row["epoch"] < 0:
        raise UserError(f"{where}: 'epoch' is {row.get('epoch')!r}, expected an epoch number")
    metrics = [k for k in row if "@" in k]
    if not metrics:
        raise UserError(f"{where}: no metric (such as sampled_HR@10) in epoch {row['epoch']}'s row")
    for key in (*metrics, *ROW_NUMBERS):
        if key in row and not _is_number(row[key]):
            raise UserError(f"{where}: '{key}' is {row[key]!r}, expected a number")
    for key in ("train_s", "eval_s", "samples_per_s"):
        if key not in row:
            raise UserError(f"{where}: no '{key}' in epoch {row['epoch']}'s row")
    return row


# summary.json's fields that readers use, and the check each must pass
SUMMARY_FIELDS = {
    "state": (lambda v: isinstance(v, str), "a string"),
    "epochs": (lambda v: _is_int(v) and v >= 0, "a number of epochs"),
    "batch_size": (lambda v: _is_int(v) and v > 0, "a batch size"),
    "steps_per_epoch": (lambda v: _is_int(v) and v > 0, "a number of steps"),
    "epoch_starts": (lambda v: isinstance(v, list) and len(v) > 1 and all(_is_int(s) for s in v), "a list of steps"),
    "lr": (lambda v: _is_number(v), "a number"),
    "best": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "diverged_at": (
        lambda v: v is None or (isinstance(v, dict) and all(_is_number(v.get(k)) for k in ("epoch", "step", "lr"))),
        "null or an object with epoch, step and lr",
    ),
    "lr_schedule": (
        lambda v: isinstance(v, list) and all(_is_pair(p) for p in v),
        "a list of [step, lr] pairs",
    ),
    "error": (lambda v: isinstance(v, str), "a string"),
}


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json (or a sweep's failed.json), checked; None where there is none."""
    if not path.is_file():
        return None
    summary = _read_json(path)
    if not isinstance(summary, dict):
        raise UserError(f"{path}: holds {_kind(summary)}, expected a JSON object (a run's summary)")
    for key, (ok, expected) in SUMMARY_FIELDS.items():
        if key in summary and not ok(summary[key]):
            raise UserError(f"{path}: '{key}' is {_short(summary[key])}, expected {expected}")
    return summary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a damaged or foreign file)") from None
    except ValueError as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(map(_is_number, v))


def _is_number(v: Any) -> bool:
    """An int or a float (nan and inf allowed: a diverged loss is logged as it was)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null", bool: "true or false"}.get(type(value), _short(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def totals(history: list[dict], n: int) -> dict[str, Any]:
    """The summary's epochs, seconds and mean rate over the epochs logged."""
    train_s = sum(r["train_s"] for r in history)
    return {
        "epochs": len(history),
        "train_s": train_s,
        "eval_s": sum(r["eval_s"] for r in history),
        "mean_samples_per_s": n * len(history) / train_s if history else None,
    }


def committed(run_dir: Path) -> tuple[list[dict], dict]:
    """(the epochs, the best epoch) that a run folder's metrics.jsonl holds."""
    history = read_metrics(run_dir / METRICS)
    if not history:
        return history, {}
    row = next((r for r in history if r["epoch"] == history[-1].get("best_epoch")), history[-1])
    return history, {"epoch": row["epoch"], **{k: v for k, v in row.items() if "@" in k}}


def left_by_first(run_dir: Path, started: float) -> FolderLock | None:
    """The run folder's lock, where the first process of a data-parallel run died without a word: its lock is
    free, and the folder (this machine sees it) holds no summary written since this run started. The process
    that takes it writes the summary in its place."""
    if not (run_dir / CONFIG).is_file():  # another machine's folder
        return None
    try:
        lock = hold_folder(run_dir)
    except (UserError, OSError):  # held: the first process is alive, and writes its own summary
        return None
    if _summary_since(run_dir, started):
        lock.close()
        return None
    return lock


def _summary_since(run_dir: Path, started: float) -> bool:
    summary = run_dir / SUMMARY
    return summary.is_file() and summary.stat().st_mtime >= started


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per epoch, written whole (atomically): never a line cut short."""
    write_atomic(run_dir / METRICS, "".join(json.dumps(row) + "\n" for row in history))
