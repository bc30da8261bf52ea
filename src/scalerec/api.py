"""The Python API: `scalerec.train`, `scalerec.load`, `scalerec.evaluate`, and `scalerec.Run`.

The command line is a layer over the same functions. Each call leaves the caller's process as it found it:
PyTorch's thread count and random state are restored, and malloc's settings are changed only where asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from scalerec.config import (
    SECTIONS,
    Config,
    build_config,
    coerce_option,
    field_owner,
    load_mapping,
    overrides_from_mapping,
)
from scalerec.errors import OptionError, UserError
from scalerec.recommend import Recommender
from scalerec.recommend import load as _load_run


@dataclasses.dataclass
class Run:
    """A run folder as Python sees it: `path`, `config` (its options), `metrics` (one dict per epoch, as in
    metrics.jsonl), `summary` (summary.json; None while the run has none)."""

    path: Path
    config: Config
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose metric picks the best model (None before the first epoch ends)."""
        best = (self.summary or {}).get("best")
        return best["epoch"] if best else None

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run in a folder that `scalerec train` wrote."""
        from scalerec import run_folder

        path = Path(path)
        if not (path / run_folder.CONFIG).is_file():
            raise UserError(f"{path}: not a run folder (no {run_folder.CONFIG})")
        return cls(
            path,
            run_folder.read_config(path / run_folder.CONFIG),
            run_folder.read_metrics(path / run_folder.METRICS),
            run_folder.read_summary(path / run_folder.SUMMARY),
        )

    def load(self, epoch: Literal["best", "last"] = "best", device: str = "cpu") -> Recommender:
        """The run's trained model as a Recommender (see scalerec.load)."""
        return _load(self, epoch, device, stacklevel=4)


def config_of(config: Config | dict[str, Any] | str | Path | None = None, **options: Any) -> Config:
    """A Config from a Config, a {section: {option: value}} or flat {option: value} dict, or a TOML/YAML file,
    with `options` (the command line's, with underscores) over it. A bad option raises OptionError."""
    if isinstance(config, Config):
        overrides = overrides_from_mapping(config.to_dict(), Path("<config>"), sections_only=True)
    elif isinstance(config, dict):
        overrides = overrides_from_mapping(config, Path("<config>"))
    elif isinstance(config, str | Path):
        overrides = overrides_from_mapping(load_mapping(Path(config)), Path(config))
    elif config is None:
        overrides = {}
    else:
        raise OptionError(f"config: expected a Config, a dict or a file's path, got a {type(config).__name__}")
    owner = field_owner()
    for name, value in options.items():
        if name not in owner:
            raise OptionError(f"unknown option {name!r} (the command line's options, with underscores)")
        value = str(value) if isinstance(value, Path) else value
        hint = typing.get_type_hints(SECTIONS[owner[name]])[name]
        if typing.get_origin(hint) is tuple and not isinstance(value, list | tuple):
            value = [value]  # a list option given one value (topk=10), as --topk 10 gives it
        value = coerce_option(Path("<options>"), name, value)
        overrides.setdefault(owner[name], {})[name] = value
    return build_config(overrides)


def train(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    resume: Run | str | Path | None = None,
    log: Callable[[str], None] | None = print,
    tune_malloc: bool = False,
    **options: Any,
) -> Run:
    """Train a model as `scalerec train` does and return its Run.

    `config`: a Config, a dict, or a TOML/YAML file's path; `options`: the command line's with underscores
    (`data="clicks.csv"`, `batch_size=4096`, `output="runs/x"`), over it. `resume`: a stopped run to continue
    after its last checkpointed epoch, with its own options (only its speed options
    `threads`, `cpu_matmul`, `grad_sync`, `device`, `matmul_precision`, `eval_batch_size` and `tensorboard` may
    be given).
    `log`: where each line goes (None: nowhere). `tune_malloc`: keep large blocks in malloc's heap, as the command
    line does (faster on the CPU, and for the rest of the process). Ctrl-C stops the run (its epochs so far are
    kept) and is raised."""
    from scalerec import training

    if resume is not None:
        cfg, resume = _resumed(resume, config, options), Path(resume.path if isinstance(resume, Run) else resume)
    else:
        cfg = config_of(config, **options)
    with _process_kept(cfg.train.device):
        summary = training.train(cfg, log or (lambda s: None), resume=resume, tune_malloc=tune_malloc)
    return Run.open(summary["run_dir"])


def largest_batch(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    log: Callable[[str], None] | None = print,
    **options: Any,
) -> int:
    """The largest batch that trains a run of these options within the memory budget (on a GPU its memory, on the
    CPU 80% of what is available, or `memory_budget_gb`), as `scalerec find-batch` and `batch_size="max"` find it:
    a short search of trial steps that leaves the process as it was (malloc untuned, as `train` leaves it)."""
    from scalerec.assembly import find_largest_batch

    cfg = config_of(config, **options)
    with _process_kept(cfg.train.device):
        return find_largest_batch(cfg, log or (lambda s: None), tune_malloc=False)


def write_report(folder: Run | str | Path) -> Path:
    """The report of a run or of a folder of runs (a sweep's, or any runs trained into one folder), as `scalerec
    report` writes it: results.csv and .md, the figures as PNGs, and report.md, whose path it returns."""
    from scalerec import report

    return report.write_report(folder.path if isinstance(folder, Run) else Path(folder))


def _resumed(run: Run | str | Path, config: Any, options: dict[str, Any]) -> Config:
    """The options of a run to resume: its own, with the speed options given."""
    from scalerec.run_folder import SPEED_OPTIONS

    if config is not None or (other := [name for name in options if name not in SPEED_OPTIONS]):
        given = "config" if config is not None else ", ".join(other)
        raise OptionError(f"resume continues a run with its own options; not with {given}")
    cfg = Run.open(run.path if isinstance(run, Run) else run).config
    speed = config_of(None, **options).train
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{k: getattr(speed, k) for k in options}))


def load(run: Run | str | Path, epoch: Literal["best", "last"] = "best", device: str = "cpu") -> Recommender:
    """A run's trained model, checked against the run's options and data, with the ids of its data: see
    Recommender.recommend, .score and .evaluate. "best": the best epoch's model (best.pt), "last": the last
    epoch's (checkpoint.pt); `.epoch` and `.which` say which it is. The run folder holds everything it needs."""
    return _load(run, epoch, device, stacklevel=4)


def _load(run: Run | str | Path, epoch: str, device: str, stacklevel: int) -> Recommender:
    with _process_kept(device):  # the model is built with random weights before its own are loaded
        return _load_run(run.path if isinstance(run, Run) else run, epoch, device, stacklevel)  # type: ignore[arg-type]


def evaluate(
    run: Run | str | Path,
    protocol: Literal["sampled", "full", "both"] = "sampled",
    epoch: Literal["best", "last"] = "best",
    device: str = "cpu",
) -> dict[str, float]:
    """The metrics of a run's trained model on its held-out items: HR@K and NDCG@K at the run's cut-offs (and
    recall in full ranking), each name prefixed with its protocol."""
    from scalerec.config import PROTOCOLS

    if protocol not in PROTOCOLS:  # before the data and the model are loaded
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return _load(run, epoch, device, stacklevel=4).evaluate(protocol)


@contextlib.contextmanager
def _process_kept(device: str) -> Iterator[None]:
    """PyTorch's thread count, fp32 matmul precision and random streams as they are now, again after the block,
    whatever happens in it."""
    import torch

    threads, matmul = torch.get_num_threads(), torch.get_float32_matmul_precision()
    # every GPU's stream too: torch.manual_seed reseeds them all (where CUDA has not started, it stays unseeded)
    cuda = torch.cuda.is_available() and (torch.cuda.is_initialized() or device != "cpu")
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul)
