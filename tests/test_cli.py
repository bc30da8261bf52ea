"""The command line, run for real: scalerec.cli.main([...]) in process, and `python -m scalerec` in a
subprocess.

Training runs are tiny (a few hundred samples, one thread); data comes from the synthetic generator or a
u.data written to tmp_path, never from the network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scalerec
from scalerec.cli import main
from tests.helpers import SYNTHETIC, assert_one_line_error, run_main, tiny, write_udata

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path

METRIC_KEYS = {"epoch", "loss", "sampled_HR@10", "sampled_NDCG@10", "samples_per_s", "train_s", "eval_s", "best_epoch"}


def check_run_folder(out: Path, epochs: int) -> tuple[dict, list[dict]]:
    config = json.loads((out / "config.json").read_text())
    assert set(config) == {"data", "model", "optim", "train", "eval"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    for r in rows:
        assert METRIC_KEYS <= set(r), set(r)
        assert 0 < r["loss"] < 10 and np.isfinite(r["loss"])
        assert 0 <= r["sampled_NDCG@10"] <= r["sampled_HR@10"] <= 1
        assert r["samples_per_s"] > 0 and r["train_s"] > 0 and r["eval_s"] >= 0
    hrs = [r["valid_sampled_HR@10"] for r in rows]  # chosen on the validation items
    for n, r in enumerate(rows):  # best so far: the first epoch with the highest HR@10
        assert r["best_epoch"] == int(np.argmax(hrs[: n + 1]))
    return config, rows


# ---------------------------------------------------------------- version, help


def test_version(capsys):
    rc, out, _ = run_main(capsys, ["--version"])
    assert rc == 0
    assert out.strip() == f"scalerec {scalerec.__version__}"


def test_train_help_lists_options(capsys):
    rc, out, _ = run_main(capsys, ["train", "--help"])
    assert rc == 0
    for flag in (
        "--config",
        "--dataset",
        "--data",
        "--data-dir",
        "--eval-negatives",
        "--model",
        "--factors",
        "--layers",
        "--lr",
        "--optimizer",
        "--nesterov",
        "--no-nesterov",
        "--epochs",
        "--batch-size",
        "--negatives",
        "--seed",
        "--device",
        "--output",
        "--topk",
    ):
        assert f"{flag} " in out or f"{flag}\n" in out or f"{flag}," in out, flag
    assert (
        "{ml-100k,ml-1m,ml-10m,ml-20m,ml-25m,ml-latest-small,ml-latest,ncf,synthetic}" in out
        and "{neumf,gmf,mlp,mf}" in out
    )
    assert "(default: 0.002)" in " ".join(out.split())  # the help comes from the config fields


def test_no_command_prints_help(capsys):
    rc, out, _ = run_main(capsys, [])
    assert rc == 2 and "usage: scalerec" in out and "train" in out


# ---------------------------------------------------------------- user errors


def test_missing_data_file(capsys, tmp_path):
    rc, _, err = run_main(capsys, ["train", "--data", tmp_path / "nope.data", *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, "nope.data", "no such file")
    assert not (tmp_path / "run").exists()


def test_empty_data_file(capsys, tmp_path):
    (tmp_path / "u.data").write_text("")
    rc, _, err = run_main(capsys, ["train", "--data", tmp_path / "u.data", *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, str(tmp_path / "u.data"), "empty")


def test_bad_line_reports_line_number(capsys, tmp_path):
    path = write_udata(tmp_path / "u.data", n_users=3)
    path.write_text(path.read_text() + "\n4\t5\t3\n")  # line 26: a blank line, then a line short of fields
    rc, _, err = run_main(capsys, ["train", "--data", path, *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, f"{path}, line 26:", "too few fields")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        pytest.param("4\t5\t3\t880000000\t1\n", "line 25", id="too-many-fields"),
        pytest.param("4\tfive\t3\t880000000\n", "line 25", id="non-numeric-item"),
    ],
)
def test_bad_line_other_faults(capsys, tmp_path, bad, fragment):
    path = write_udata(tmp_path / "u.data", n_users=3)
    path.write_text(path.read_text() + bad)
    rc, _, err = run_main(capsys, ["train", "--data", path, *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, str(path), fragment)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--lr", "-1"], "learning rate"),
        (["--lr", "0"], "learning rate"),
        (["--epochs", "0"], "epochs"),
        (["--layers", "15", "8"], "layers"),
        (["--dropout", "1"], "dropout"),
        (["--nesterov"], "nesterov"),
        (["--eval-negatives", "0"], "eval_negatives"),
        (["--eval-negatives", "95"], "--eval-negatives"),  # more than a synthetic user has free
        (["--dataset", "ncf"], "--data PREFIX"),
        (["--config", "missing.toml"], "missing.toml"),
    ],
)
def test_bad_option_value(capsys, tmp_path, options, fragment):
    argv = ["train", *SYNTHETIC, *tiny(tmp_path / "run"), *options]
    rc, out, err = run_main(capsys, argv)
    assert_one_line_error(rc, err, fragment)
    assert "Epoch" not in out


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--model", "foo"], "argument --model: invalid choice: 'foo'"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_option_syntax(capsys, tmp_path, options, fragment):
    # argparse's own errors: usage, then one "scalerec[ train]: error:" line, exit status 2
    rc, out, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run"), *options])
    assert rc == 2 and out == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.match(r"scalerec( train)?: error: ", last) and fragment in last, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_device_cuda_without_cuda(capsys, tmp_path):
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run"), "--device", "cuda"])
    assert_one_line_error(rc, err, "--device cuda")


# ---------------------------------------------------------------- config files


CONFIGS = {
    "toml": """
epochs = 1
lr = 0.01

[data]
dataset = "synthetic"
synthetic_users = 60
synthetic_items = 50
synthetic_interactions = 5
eval_negatives = 20

[model]
model = "gmf"
factors = 4

[optim]
optimizer = "sgd"
momentum = 0.5
""",
    "yaml": """
epochs: 1
lr: 0.01
data:
  dataset: synthetic
  synthetic-users: 60
  synthetic_items: 50
  synthetic_interactions: 5
  eval_negatives: 20
model:
  model: gmf
  factors: 4
optim:
  optimizer: sgd
  momentum: 0.5
""",
}


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_config_file_sets_options_and_flags_override(capsys, tmp_path, fmt):
    path = tmp_path / f"run.{fmt}"
    path.write_text(CONFIGS[fmt])
    out_dir = tmp_path / "run"
    argv = [
        "train",
        "--config",
        path,
        "--lr",
        "0.05",
        "--factors",
        "6",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--output",
        out_dir,
    ]
    rc, out, err = run_main(capsys, argv)
    assert rc == 0, err
    config, _ = check_run_folder(out_dir, epochs=1)  # epochs from the file
    assert config["data"]["dataset"] == "synthetic" and config["data"]["synthetic_users"] == 60
    assert config["data"]["eval_negatives"] == 20
    assert config["model"]["model"] == "gmf" and config["optim"]["optimizer"] == "sgd"
    assert config["optim"]["momentum"] == 0.5
    assert config["optim"]["lr"] == 0.05 and config["model"]["factors"] == 6  # flags win
    assert config["model"]["layers"] == [256, 256, 128, 64]  # neither: the default
    assert (
        "Data: Synthetic" in out
        and "#user=60" in out
        and "Model gmf" in out
        and "Optimizer sgd" in out
        and "lr = 0.05;" in out
    )


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.toml", "epochs = 1\nlearning_rate = 0.1\n", "unknown option 'learning_rate'"),
        ("c.toml", "[optim]\nepochs = 3\n", "unknown option 'epochs' in section [optim]"),
        ("c.toml", "[training]\nepochs = 3\n", "unknown option 'training'"),
        ("c.yaml", "epochs: 1\nlearning_rate: 0.1\n", "unknown option 'learning_rate'"),
        ("c.yml", "model:\n  model: gmf\n  size: 3\n", "unknown option 'size' in section [model]"),
    ],
)
def test_config_file_unknown_key(capsys, tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    rc, out, err = run_main(capsys, ["train", "--config", path, *SYNTHETIC, *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, str(path), fragment)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.toml", 'model = "foo"\n', "invalid value for model: 'foo'"),
        ("c.toml", "epochs = \n", "not a valid TOML file"),
        ("c.yaml", "- 1\n- 2\n", "expected a table"),
        ("c.toml", "negatives = -1\n", "negatives must be >= 0"),
        ("c.toml", "[optim]\nlr = -0.5\n", "learning rate"),
    ],
)
def test_config_file_bad_content(capsys, tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    rc, _, err = run_main(capsys, ["train", "--config", path, *SYNTHETIC, *tiny(tmp_path / "run")])
    assert_one_line_error(rc, err, fragment)


def test_config_file_yaml_syntax_error(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1\n")
    rc, _, err = run_main(capsys, ["train", "--config", path, *SYNTHETIC, *tiny(tmp_path / "run")])
    assert rc == 2 and "Traceback" not in err  # a bad config file is a bad option
    # PyYAML's multi-line message (it quotes the spot) is folded onto the one error line
    assert err.startswith(f"scalerec: error: {path}: not a valid YAML file: "), err
    assert "line 1, column 9" in err and err.count("\n") == 1


def test_config_file_float_epochs_is_a_user_error(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("epochs = 2.5\n")
    argv = [
        "train",
        "--config",
        path,
        *SYNTHETIC,
        "--layers",
        "8",
        "8",
        "--factors",
        "4",
        "--eval-negatives",
        "20",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--output",
        tmp_path / "run",
    ]
    rc, _, err = run_main(capsys, argv)
    assert_one_line_error(rc, err, "epochs")


def test_yaml_exponent_learning_rate(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\n")
    rc, _, err = run_main(capsys, ["train", "--config", path, *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])
    if rc == 0:
        assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["lr"] == 0.001
    else:
        assert_one_line_error(rc, err, "lr")


# ---------------------------------------------------------------- end to end


def test_train_synthetic_end_to_end(capsys, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(out_dir)])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Data: Synthetic") and "#user=200, #item=100" in lines[0]
    assert any(ln.startswith("Epoch 0: sampled_HR@10 = ") for ln in lines)
    assert any(ln.startswith("Epoch 1: sampled_HR@10 = ") for ln in lines)
    assert not any(ln.startswith("Epoch 2") for ln in lines)
    config, rows = check_run_folder(out_dir, epochs=2)
    assert config["data"]["dataset"] == "synthetic" and config["data"]["synthetic_users"] == 200
    assert config["model"]["layers"] == [16, 16, 8] and config["model"]["factors"] == 8
    assert config["train"]["batch_size"] == 256 and config["train"]["output"] == str(out_dir)
    assert config["eval"]["topk"] == [10]
    epoch0 = next(ln for ln in lines if ln.startswith("Epoch 0:"))
    assert f"sampled_HR@10 = {rows[0]['sampled_HR@10']:.4f}" in epoch0  # the log and the metrics file agree
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["best"]["epoch"] == rows[-1]["best_epoch"]


def test_same_seed_same_metrics(capsys, tmp_path):
    for name in ("a", "b"):
        rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / name, epochs=1)])
        assert rc == 0, err
    a, b = ((tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("a", "b"))
    keep = ("loss", "sampled_HR@10", "sampled_NDCG@10")
    assert [json.loads(x)[k] for x in a for k in keep] == [json.loads(x)[k] for x in b for k in keep]


def test_shuffle_option_reaches_the_sampler(capsys, tmp_path):
    losses = {}
    for shuffle in ("groups", "samples"):
        out_dir = tmp_path / shuffle
        rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(out_dir, epochs=1), "--shuffle", shuffle])
        assert rc == 0, err
        config, rows = check_run_folder(out_dir, epochs=1)
        assert config["train"]["shuffle"] == shuffle
        losses[shuffle] = rows[0]["loss"]
    assert losses["groups"] != losses["samples"]  # another order of the same samples, another trajectory


def test_train_udata_end_to_end(capsys, tmp_path):
    path = write_udata(tmp_path / "u.data")
    out_dir = tmp_path / "run"
    rc, out, err = run_main(capsys, ["train", "--data", path, *tiny(out_dir)])
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first == f"Data: MovieLens-100K from {path}. #user=60, #item=80, #train=360, #test=60, #valid=60"
    assert any(ln.startswith("Epoch 1: sampled_HR@10 = ") for ln in out.splitlines())
    config, _ = check_run_folder(out_dir, epochs=2)
    assert config["data"]["data"] == str(path) and config["data"]["dataset"] == "ml-100k"
    # the prepared data was cached under $SCALEREC_DATA_DIR, not ~/.cache
    assert len(list((tmp_path / "data_dir" / "cache").glob("ml-100k-*.npz"))) == 1


def test_default_run_folder_under_runs(capsys, tmp_path):
    argv = ["train", *SYNTHETIC, *tiny(tmp_path / "x", epochs=1)]
    argv = argv[: argv.index("--output")]
    rc, _, err = run_main(capsys, argv)
    assert rc == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()  # the cwd is tmp_path
    assert run_dir.name.endswith("-synthetic-neumf")
    check_run_folder(run_dir, epochs=1)
    (tmp_path / "ml-x").mkdir()
    write_udata(tmp_path / "ml-x" / "u.data")
    write_udata(tmp_path / "clicks.log.tsv")
    for data, name in ((tmp_path / "ml-x" / "u.data", "-ml-x-neumf"), (tmp_path / "clicks.log.tsv", "-clicks-mf")):
        model = "mf" if "clicks" in name else "neumf"
        argv = ["train", "--data", data, "--model", model, *tiny(tmp_path / "x", epochs=1)]
        argv[argv.index("--eval-negatives") + 1] = "10"
        assert run_main(capsys, argv[: argv.index("--output")])[0] == 0
        assert any(d.name.endswith(name) for d in (tmp_path / "runs").iterdir()), name  # named for its data


# ---------------------------------------------------------------- the real executable


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCALEREC_DATA_DIR": str(cwd / "data_dir"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scalerec", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_version(tmp_path):
    result = run_module(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"scalerec {scalerec.__version__}"


@pytest.mark.slow
def test_subprocess_train_piped_has_no_progress_bar(tmp_path):
    path = write_udata(tmp_path / "u.data")
    out_dir = tmp_path / "run"
    result = run_module(["train", "--data", path, *tiny(out_dir)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Data: MovieLens-100K from {path}.")
    assert "Epoch 1: sampled_HR@10 = " in result.stdout
    check_run_folder(out_dir, epochs=2)
    # stderr is a pipe, not a TTY: no tqdm bar (carriage returns, bar blocks, rates)
    for mark in ("\r", "█", "%|", "sample/s", "it/s"):
        assert mark not in result.stderr, repr(result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_subprocess_user_error_exit_status(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\n")
    result = run_module(["train", "--data", tmp_path / "u.data", *tiny(tmp_path / "run")], tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.returncode, result.stderr, f"{tmp_path / 'u.data'}, line 2:")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")), ids=str)
def test_preset_configs_load_and_start_with_their_command(path):
    from scalerec.cli import config_from_args, make_parser

    command = path.read_text().splitlines()[0].split()
    assert command[:5] == ["#", "scalerec", "train", "--config", f"configs/{path.name}"]
    args = make_parser().parse_args(["train", "--config", str(path), *command[5:]])  # as its command gives it
    assert config_from_args(args).data.dataset == ("ncf" if "ncf" in path.name else "ml-100k")


def test_data_info_prints_sizes_times_split_and_what_was_dropped(capsys, tmp_path):
    path = tmp_path / "log.csv"
    rows = [f"u{u},i{(u * 7 + k) % 40},2024-01-{1 + k:02d}\n" for u in range(30) for k in range(3 + u % 4)]
    path.write_text("user,item,time\n" + "".join(rows) + "loner,i1,2024-02-01\n")
    assert main(["data", "info", str(path), "--eval-negatives", "5"]) == 0
    out = capsys.readouterr().out
    n = len(rows)  # 3 to 6 distinct items for each of 30 users; the loner's one is dropped
    assert f"Users: 30  Items: 40  Interactions: {n}  Density: {n / 1200:.4%}" in out
    assert f"Rows read: {n + 1}" in out
    assert "Time: 2024-01-01 00:00:00 UTC to 2024-01-06 00:00:00 UTC" in out  # the loner's row is gone too
    assert f"{n - 60} training interactions, 30 test users" in out and "5 evaluation negatives" in out
    assert "30 validation users with their second-latest item held out too" in out
    assert "Dropped or adjusted: 1 user with a single interaction dropped" in out


def test_data_info_takes_the_data_as_train_names_it(capsys, tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\n" + "".join(f"u{u},i{(u + k) % 9}\n" for u in range(12) for k in range(3)))
    assert main(["data", "info", "--data", str(path), "--eval-negatives", "5"]) == 0
    assert "Users: 12  Items: 9  Interactions: 36" in capsys.readouterr().out
    assert main(["data", "info", "--dataset", "synthetic", "--synthetic-users", "30", "--eval-negatives", "5"]) == 0
    assert "Users: 30" in capsys.readouterr().out
    assert main(["data", "info"]) == 2
    assert "name the data" in capsys.readouterr().err
    assert main(["data", "info", str(path), "--data", str(path)]) == 2
    assert "not both" in capsys.readouterr().err


def test_data_info_on_a_missing_file_and_a_bad_option(capsys, tmp_path):
    assert main(["data", "info", str(tmp_path / "nope.csv")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["data", "info", "synthetic", "--min-user-interactions", "1"]) == 2  # a bad option, as in train
    assert "min_user_interactions must be at least 2" in capsys.readouterr().err


def test_a_bad_option_value_exits_2_and_a_bad_input_file_1(capsys, tmp_path):
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "a"), "--epochs", "0"])
    assert rc == 2 and "epochs must be at least 1" in err and not (tmp_path / "a").exists()
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\n")
    rc, _, err = run_main(capsys, ["train", "--data", bad, *tiny(tmp_path / "b")])
    assert rc == 1 and "line 1" in err


def test_commands_other_than_train_refuse_many_processes(capsys, tmp_path, monkeypatch):
    """Only train runs data-parallel (tests/test_distributed.py); the others would run whole in every process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, out, err = run_main(capsys, ["find-batch", *SYNTHETIC, "--memory-budget-gb", "2"])
    assert rc == 1 and "WORLD_SIZE is 2" in err and "run find-batch in one process" in err
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process runs as usual
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])[0] == 0


def test_help_texts(capsys):
    rc, out, _ = run_main(capsys, ["--help"])
    assert rc == 0 and "Neural Collaborative Filtering" in out and "dispatch" not in out
    rc, out, _ = run_main(capsys, ["train", "--help"])
    text = " ".join(out.split())  # argparse wraps lines
    assert "(default: 256 256 128 64)" in text and "(default: (" not in text
    assert "(default: --lr). (default: None)" not in text and "(default: --lr)." in text
    rc, out, _ = run_main(capsys, ["find-batch", "--help"])
    assert "--memory-budget-gb" in out and "--precision" in out
    assert not re.search(r"--(output|epochs|topk|eval|warmup)(?![\w-])", out)  # options it has no use for
    assert run_main(capsys, ["find-batch", "--dataset", "synthetic", "--epochs", "3"])[0] == 2
    rc, out, _ = run_main(capsys, ["sweep", "--help"])
    assert "Sweep folder, one run folder in it per run" in " ".join(out.split())


def test_train_refuses_a_sweep_folder(capsys, tmp_path):
    (tmp_path / "sweep" / "1-lr=0.1").mkdir(parents=True)
    (tmp_path / "sweep" / "1-lr=0.1" / "summary.json").write_text("{}")
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "sweep")])
    assert rc == 1 and "a sweep folder, holding runs (1-lr=0.1)" in err


def test_every_cut_off_is_printed_and_a_trivial_one_is_noted(capsys, tmp_path):
    rc, out, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1), "--topk", "5", "21"])
    assert rc == 0
    epoch = next(line for line in out.splitlines() if line.startswith("Epoch 0:"))
    assert all(f"sampled_{m}@{k} = " in epoch for m in ("HR", "NDCG") for k in (5, 21))
    # 20 evaluation negatives: 21 candidates, so HR@21 is 1 whatever the model
    assert "at most 21 candidates, so HR@K for K = 21 is 1 by construction" in out
    assert "sampled_HR@21 = 1.0000" in epoch


def test_an_interrupted_run_says_so_in_its_summary(capsys, tmp_path, monkeypatch):
    import scalerec.epoch as epoch_module

    calls = []
    real = epoch_module.train_epoch

    def interrupted_in_epoch_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_epoch", interrupted_in_epoch_1)
    rc, out, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=3)])
    assert rc == 130 and "scalerec: interrupted" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["epochs"] == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert "Interrupted in epoch 1; 1 epoch(s) logged" in out


def test_data_info_reads_a_movielens_folder(capsys, tmp_path):
    (tmp_path / "ml").mkdir()
    write_udata(tmp_path / "ml" / "u.data")
    rc, out, err = run_main(capsys, ["data", "info", tmp_path / "ml", "--eval-negatives", "5"])
    assert rc == 0, err
    assert "Users: 60" in out and str(tmp_path / "ml" / "u.data") in out


def test_config_files_with_a_bom_or_an_option_given_twice(capsys, tmp_path):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbfepochs = 1\n")
    assert run_main(capsys, ["train", "--config", bom, *SYNTHETIC, *tiny(tmp_path / "a")[2:]])[0] == 0
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 1
    twice = tmp_path / "twice.toml"
    twice.write_text("epochs = 1\n[train]\nepochs = 2\n")
    rc, _, err = run_main(capsys, ["train", "--config", twice, *SYNTHETIC])
    assert rc == 2 and "option 'epochs' given twice" in err


def test_a_run_folder_takes_one_training_process_at_a_time(capsys, tmp_path):
    from scalerec.errors import UserError
    from scalerec.files import hold_folder

    (tmp_path / "run").mkdir()
    held = hold_folder(tmp_path / "run")
    with pytest.raises(UserError, match=r"another scalerec process \(pid \d+ on .*\) is training in this folder"):
        hold_folder(tmp_path / "run")
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])
    assert rc == 1 and "another scalerec process" in err
    held.close()  # the first one ended
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])[0] == 0
    hold_folder(tmp_path / "run").close()  # and the run let go of it


@pytest.mark.parametrize(
    "option, message",
    [
        (["--sep", "::"], "sep must be one ASCII character"),
        (["--min-rating", "nan"], "min_rating must be a finite number"),
    ],
)
def test_a_separator_of_two_characters_and_a_nan_rating_are_bad_options(capsys, tmp_path, option, message):
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\na,b,4\na,c,5\n")
    for command in (["data", "info", str(path)], ["train", "--data", str(path), "--output", str(tmp_path / "r")]):
        assert main([*command, *option]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_sigterm_stops_a_run_as_ctrl_c_does_with_status_143(capsys, tmp_path, monkeypatch):
    import os
    import signal

    import scalerec.epoch as epoch_module

    calls = []
    real = epoch_module.train_epoch

    def terminated_in_epoch_1(*args, **kwargs):  # as Slurm or Docker stops a job
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(epoch_module, "train_epoch", terminated_in_epoch_1)
    rc, out, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=3)])
    assert rc == 143 and "scalerec: terminated (SIGTERM)" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["epochs"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    monkeypatch.setattr(epoch_module, "train_epoch", real)
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 0 and "Resuming" in out, err
