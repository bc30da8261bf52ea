"""A grid of training runs, each a normal run folder under one sweep folder, then a report.

A failed run is recorded (failed.json) and the sweep goes on; a diverged run is recorded by train() itself; a
run whose folder already holds summary.json is skipped, so re-running a sweep finishes what is missing. A sweep
stopped by Ctrl-C or SIGTERM writes the report of the runs so far before it stops.
The `notebook` preset replays the GHC 2019 notebook's story at a base batch B:
  1 B, SGD (momentum 0.9)      2 16B, same lr              3 16B, linear rule        4 192B, linear rule
  5 192B, linear + warmup      6 192B, LARS + warmup       7 192B, LAMB + warmup     8 the better of 6 and 7 in bf16
  9 from B to 192B by growing the batch (B, 16B, 192B over the epochs) at the base run's lr, instead of scaling it
Runs 1-8 decay the lr with a cosine after warmup (--decay chooses another; a sweep run again keeps its own); run 9
grows the batch instead.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scalerec.config import build_config, coerce_option, field_owner, load_mapping, option_type
from scalerec.errors import OptionError, UserError
from scalerec.figures import FIGURES
from scalerec.files import LOCK, FolderBusy, few, hold_folder, is_run_folder, remove_temporaries, write_atomic
from scalerec.report import BEST_CONFIG
from scalerec.run_folder import FAILED, SUMMARY, SWEEP_FILE, read_config, read_summary, same_config

Overrides = dict[str, dict[str, Any]]  # {section: {field: value}}
# LARS's lr x eta is the fraction of its norm a layer moves per step. The preset's LARS run keeps the linear rule's
# lr (the notebook's story) and sets eta so that this fraction is 1% at the peak lr: on ML-1M at 192 x 256, eta
# 0.001 (the usual default, a 58% step) sent the loss to 1e22 in one epoch; 1% and 6% both reached HR@10 0.45.
LARS_RELATIVE_STEP = 0.01
# The preset's runs 1-7 decay their lr (cosine, after warmup) unless --decay says otherwise: over 10 epochs on
# MovieLens-100K without it, LARS and LAMB at 192B stopped improving at their peak lr and ended 0.040 and 0.016
# HR@10 below the base run; with it (every run decayed), 0.047 and 0.016 above (docs/large-batches.md).
PRESET_DECAY = "cosine"


def flat(**fields: Any) -> Overrides:
    """{"batch_size": 8} -> {"train": {"batch_size": 8}}: overrides by field name."""
    owner = field_owner()
    out: Overrides = {}
    for name, value in fields.items():
        if name not in owner:
            raise UserError(f"unknown option '{name}' in the sweep grid")
        out.setdefault(owner[name], {})[name] = value
    return out


def growth(base_batch: int, epochs: int) -> str | None:
    """Notebook run 9's batch schedule (Smith et al. 2017: grow the batch where the lr would decay): B, then 16B
    from a third of the epochs and 192B from two thirds; over 2 epochs B then 192B; None for one epoch."""
    if epochs < 2:
        return None
    if epochs == 2:
        return f"0:{base_batch},1:{192 * base_batch}"
    first = max(1, round(epochs / 3))
    return f"0:{base_batch},{first}:{16 * base_batch},{max(first + 1, round(2 * epochs / 3))}:{192 * base_batch}"


def base_lr_of(folder: Path, log: Callable[[str], None] = print) -> float | None:
    """The SGD lr of the notebook sweep already in `folder` (its base run's), said; None where it has none yet: a
    sweep run again goes on with the lr its runs trained with, not another scan's."""
    return base_run_option(folder, "lr", "Base SGD lr", log)


def decay_of(folder: Path, log: Callable[[str], None] = print) -> str | None:
    """The lr decay of the notebook sweep already in `folder` (its base run's), said; None where it has none yet:
    a sweep run again without --decay goes on with the decay its runs trained with."""
    return base_run_option(folder, "decay", "Decay", log)


def base_run_option(folder: Path, name: str, label: str, log: Callable[[str], None]) -> Any:
    """The optimizer option `name` of the 1-base run in `folder`, logged as `label`; None where there is none."""
    config = Path(folder) / "1-base" / "config.json"
    if not config.is_file():
        return None
    value = getattr(read_config(config).optim, name)
    shown = f"{value:g}" if isinstance(value, float) else value
    log(f"{label} {shown}: the sweep's own (its 1-base run's)")
    return value


def notebook_base_batch(samples_per_epoch: int, multiplier: int = 192, steps: int = 100) -> int:
    """The largest power of two B such that multiplier * B still leaves about `steps` steps per epoch."""
    return max(1, 2 ** int(math.log2(max(1, samples_per_epoch / (multiplier * steps)))))


def notebook_runs(
    base_batch: int,
    base_lr: float,
    lamb_lr: float,
    lars_eta: float | None = None,
    epochs: int = 3,
    decay: str = PRESET_DECAY,
) -> list[tuple[str, Overrides]]:
    """Runs 1-7 and 9 of the notebook preset; run 8 is chosen from the results of 6 and 7. LARS's trust
    coefficient is `lars_eta`, or by default the one that makes its peak relative step LARS_RELATIVE_STEP. Runs 1-7
    decay their lr after warmup (`decay`, see PRESET_DECAY). Run 9 grows the batch from B to 192B over the `epochs`
    (`growth`) at the base run's lr, with no decay: growing the batch is what it does instead; a run of one epoch
    has none."""
    big, huge = 16 * base_batch, 192 * base_batch
    sgd = dict(optimizer="sgd", momentum=0.9, decay=decay)
    linear = dict(lr_scaling="linear", base_lr=base_lr, base_batch=base_batch)
    warm = dict(warmup="exponential", warmup_epochs=0.1)
    return [
        ("1-base", flat(batch_size=base_batch, lr=base_lr, **sgd)),
        ("2-16x-same-lr", flat(batch_size=big, lr=base_lr, **sgd)),
        ("3-16x-linear", flat(batch_size=big, **sgd, **linear)),
        ("4-192x-linear", flat(batch_size=huge, **sgd, **linear)),
        ("5-192x-linear-warmup", flat(batch_size=huge, **sgd, **linear, **warm)),
        (
            "6-192x-lars-warmup",
            flat(
                batch_size=huge,
                optimizer="lars",
                momentum=0.9,
                decay=decay,
                trust_coefficient=lars_eta or LARS_RELATIVE_STEP / (192 * base_lr),
                **linear,
                **warm,
            ),
        ),
        (
            "7-192x-lamb-warmup",
            flat(
                batch_size=huge,
                optimizer="lamb",
                lr_scaling="sqrt",
                base_lr=lamb_lr,
                base_batch=base_batch,
                decay=decay,
                **warm,
            ),
        ),
    ] + (
        [("9-grow-to-192x", flat(batch_schedule=grow, lr=base_lr, **{**sgd, "decay": "none"}))]
        if (grow := growth(base_batch, epochs))
        else []
    )


def grid_runs(grid: dict[str, list[Any]]) -> list[tuple[str, Overrides]]:
    """The cartesian product of a {field: [values]} grid, one run per combination, named by its values."""
    keys = list(grid)
    runs = []
    for i, values in enumerate(itertools.product(*(grid[k] for k in keys)), start=1):
        name = f"{i}-" + "-".join(f"{k}={v}" for k, v in zip(keys, values)).replace("/", "_")
        runs.append((name, flat(**dict(zip(keys, values)))))
    return runs


def merge(base: Overrides, extra: Overrides) -> Overrides:
    out = copy.deepcopy(base)
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def read_grid_file(path: str, base: dict[str, dict[str, Any]], ranges: bool = False) -> dict[str, Any]:
    """The [grid] table of a TOML or YAML file: option = [values], each value checked over the base options; with
    `ranges` (a random search), also option = {low = A, high = B} (search.Range)."""
    from scalerec.search import parse_range

    raw = load_mapping(Path(path))
    grid = raw.get("grid", raw)
    if isinstance(grid, dict):
        grid = {str(k).replace("-", "_"): v for k, v in grid.items()}
    if (
        not isinstance(grid, dict)
        or not grid
        or not all(isinstance(v, list) and v or isinstance(v, dict) for v in grid.values())
    ):
        raise OptionError(f"{path}: expected a [grid] table of option = [value, ...] lists")
    owner = field_owner()
    for key, values in grid.items():
        if key not in owner:
            raise OptionError(f"{path}: unknown option '{key}' in [grid]")
        if key == "output":  # every run's folder is <sweep folder>/<run name>
            raise OptionError(f"{path}: output cannot be a [grid] option; --output names the sweep folder")
        if isinstance(values, dict):
            if not ranges:
                raise OptionError(f"{path}: [grid] {key} is a range; ranges are for --search random, else give a list")
            grid[key] = parse_range(path, key, values, option_type(key))
            r = grid[key]
            values = [int(r.low), int(r.high)] if r.integer else [r.low, r.high]  # both ends checked below
        else:
            grid[key] = values = [coerce_option(Path(path), key, v) for v in values]
        for v in values:  # choices and ranges, before any run starts
            try:
                build_config(merge(base, {owner[key]: {key: v}}))
            except UserError as e:
                raise OptionError(f"{path}: {e}") from None
    return grid


def run_one(name: str, overrides: Overrides, sweep_dir: Path, log: Callable[[str], None]) -> dict:
    """Train one run of the sweep into sweep_dir/name, or read the summary of a finished one."""
    from scalerec.training import train  # torch is imported only when a run actually trains

    run_dir = sweep_dir / name
    try:
        config = build_config(merge(overrides, {"train": {"output": str(run_dir)}}))
    except UserError as e:
        return failed(run_dir, name, e, log)
    summary = read_summary(run_dir / SUMMARY)
    if summary is not None and summary.get("state") in ("finished", "diverged"):
        if not same_config(run_dir, config):
            raise UserError(f"{run_dir}: finished with other options than this sweep's; use another --output")
        log(f"== {name}: already finished, skipped")
        return summary
    log(f"== {name}")
    try:  # an interrupted or failed run goes on from its checkpoint (train's own lock held), else starts over
        return train(config, log, adopt=True)
    except Exception as e:  # a failed run is recorded and the sweep goes on
        return failed(run_dir, name, e, log)


def failed(run_dir: Path, name: str, error: Exception, log: Callable[[str], None]) -> dict:
    """The run's failure, recorded in its failed.json (unless another process holds the run's folder)."""
    if not isinstance(error, FolderBusy):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / FAILED, json.dumps({"state": "failed", "error": str(error)}) + "\n")
    log(f"== {name}: failed: {error}")
    return {"state": "failed", "error": str(error)}


def sweep(
    base: Overrides,
    runs: list[tuple[str, Overrides]],
    sweep_dir: Path,
    log: Callable[[str], None] = print,
    preset_final: Callable[[dict[str, dict]], tuple[str, Overrides] | None] | None = None,
) -> Path:
    """Train every run (base options under each run's own), then write the report; returns report.md. The sweep
    folder is locked for the sweep's time: a second sweep into it is refused. UserError after the report where a
    run failed."""
    from scalerec.report import write_report

    names = {name for name, _ in runs} | set(FINAL_NAMES if preset_final is not None else ())
    created = not sweep_dir.exists()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_folder(sweep_dir, "running a sweep")
    try:
        try:
            check_sweep_dir(sweep_dir, base, names)
        except UserError:
            if created:
                (sweep_dir / LOCK).unlink(missing_ok=True)
                sweep_dir.rmdir()
            raise
        remove_temporaries(sweep_dir, (SWEEP_FILE, *SWEEP_OUTPUTS))
        write_atomic(sweep_dir / SWEEP_FILE, build_config(base).to_json() + "\n")
        try:
            results = {name: run_one(name, merge(base, extra), sweep_dir, log) for name, extra in runs}
            if preset_final is not None and (final := preset_final(results)) is not None:
                results[final[0]] = run_one(final[0], merge(base, final[1]), sweep_dir, log)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: report the runs so far, then stop as asked
            try:
                log(f"Stopped; the runs so far: {write_report(sweep_dir)}. The same command trains the rest.")
            except UserError as e:  # a report that cannot be written does not hide why the sweep stopped
                log(f"Stopped; no report of the runs so far ({e}). The same command trains the rest.")
            raise
        report = write_report(sweep_dir)
    finally:
        lock.close()
    if bad := [name for name, r in results.items() if r.get("state") == "failed"]:
        raise UserError(
            f"{len(bad)} of {len(results)} runs failed ({few(bad)}; each run's failed.json or summary.json says why); "
            f"report of the others: {report}"
        )
    return report


SWEEP_OUTPUTS = ("results.csv", "results.md", "report.md", BEST_CONFIG, *FIGURES)


def check_sweep_dir(sweep_dir: Path, base: Overrides, names: set[str]) -> None:
    """Refuse a folder that holds a single run, or runs of a sweep with other base options (sweep.json), or,
    where it has no sweep.json, runs that are not this sweep's."""
    if is_run_folder(sweep_dir):
        raise UserError(f"--output {sweep_dir}: holds a single run, not a sweep; choose another folder")
    if (sweep_dir / SWEEP_FILE).is_file():
        if not same_config(sweep_dir, build_config(base), SWEEP_FILE):
            raise UserError(f"--output {sweep_dir}: a sweep made with other options than these; use another --output")
        return
    other = sorted(d.name for d in sweep_dir.iterdir() if is_run_folder(d)) if sweep_dir.is_dir() else []
    if other := [name for name in other if name not in names]:
        raise UserError(f"--output {sweep_dir}: holds runs of another sweep ({few(other)}); choose another folder")


def bf16_name(name: str) -> str:
    return f"8-{name.split('-', 1)[1]}-bf16"


BF16_CANDIDATES = ("6-192x-lars-warmup", "7-192x-lamb-warmup")
FINAL_NAMES = tuple(bf16_name(name) for name in BF16_CANDIDATES)  # the names notebook run 8 may take


def better_in_bf16(runs: list[tuple[str, Overrides]]) -> Callable[[dict[str, dict]], tuple[str, Overrides] | None]:
    """Notebook run 8: whichever of runs 6 (LARS) and 7 (LAMB) reached the higher HR@10, again in bf16."""
    specs = dict(runs)

    def choose(results: dict[str, dict]) -> tuple[str, Overrides] | None:
        scored = []
        for name in BF16_CANDIDATES:
            best = (results.get(name) or {}).get("best") or {}
            hr = [v for k, v in best.items() if "HR@" in k]  # the first K, as the run ordered them
            if hr:
                scored.append((next((v for k, v in best.items() if k.endswith("HR@10")), hr[0]), name))
        if not scored:
            return None
        name = max(scored)[1]
        return bf16_name(name), merge(specs[name], {"train": {"precision": "bf16"}})

    return choose
