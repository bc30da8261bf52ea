"""Command line: subcommands -> config -> dispatch. No math here, and no defaults of its own: every train
option is generated from a field of the config dataclasses (its docstring is the help)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from scalerec import __version__
from scalerec.config import SECTIONS, build_config, field_docs, read_config_file
from scalerec.errors import UserError


def _add_field(group: argparse._ArgumentGroup, name: str, hint: Any, default: Any, doc: str) -> None:
    flag = "--" + name.replace("_", "-")
    help_text = f"{doc} (default: {default})".replace("%", "%%")  # argparse formats help with %
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        kwargs.update(choices=typing.get_args(hint))
    elif hint is bool:
        kwargs.update(action=argparse.BooleanOptionalAction)
    elif typing.get_origin(hint) is tuple:
        kwargs.update(nargs="+", type=args[0])
    else:
        kwargs.update(type=args[0] if args else hint, metavar=name.upper())
    group.add_argument(flag, **kwargs)


def _train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model and evaluate it every epoch",
        description="Train NeuMF (or gmf, mlp, mf) and print HR@K, NDCG@K and throughput per epoch.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML or YAML file of options; command-line flags override it")
    for section, cls in SECTIONS.items():
        group = p.add_argument_group(f"{section} options")
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            _add_field(group, f.name, hints[f.name], default, docs.get(f.name, ""))
    return p


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalerec", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"scalerec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    data = sub.add_parser("data", help="obtain datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset into the data folder and check its checksum")
    fetch.add_argument("name", choices=["ml-100k"])
    fetch.add_argument("--data-dir", help="data folder (default: $SCALEREC_DATA_DIR or the user cache)")
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    overrides = read_config_file(args.config) if args.config else {s: {} for s in SECTIONS}
    given = vars(args)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in given:
                overrides[section][f.name] = given[f.name]
    return build_config(overrides)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from scalerec.train import train

            if train(config_from_args(args))["state"] == "diverged":
                return 3
        elif args.command == "data":
            from scalerec.data.movielens import default_data_dir, fetch_ml100k

            path, source = fetch_ml100k(Path(args.data_dir) if args.data_dir else default_data_dir())
            print(f"MovieLens-100K: {path} (from {source})")
        else:
            parser.print_help()
            return 2
    except UserError as e:
        print(f"scalerec: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path that cannot be read or written: permissions, a file where a folder is expected
        print(f"scalerec: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scalerec: interrupted", file=sys.stderr)
        return 130
    return 0
