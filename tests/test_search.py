"""Random search (`sweep --grid FILE --search random`): the draws, the ranges' checks, and the best run's config."""

import math
import statistics

import pytest

from scalerec.cli import main
from scalerec.config import build_config, read_config_file
from scalerec.errors import OptionError
from scalerec.report import best_row, collect
from scalerec.run_folder import CONFIG, read_config
from scalerec.search import Range, parse_range, trials

SPACE = {
    "lr": Range(1e-4, 1e-1, log=True, integer=False),
    "weight_decay": Range(0.0, 0.5, log=False, integer=False),
    "factors": Range(8, 64, log=False, integer=True),
    "optimizer": ["adam", "sgd", "lamb"],
}


def test_the_same_seed_draws_the_same_trials_and_more_trials_extend_them():
    drawn = trials(SPACE, 400, seed=7)
    assert drawn == trials(SPACE, 400, seed=7)
    assert trials(SPACE, 10, seed=7) == drawn[:10]  # a longer search keeps the shorter one's runs
    assert [v for _, v in trials(SPACE, 10, seed=8)] != [v for _, v in drawn[:10]]
    names = [name for name, _ in drawn]
    assert names[0].startswith("1-lr=") and names[-1].startswith("400-") and len(set(names)) == 400


def test_draws_stay_in_their_ranges_on_their_scales():
    values = [v for _, v in trials(SPACE, 2000, seed=0)]
    lrs = [v["lr"] for v in values]
    assert all(1e-4 <= x <= 1e-1 for x in lrs)
    assert all(float(f"{x:.3g}") == x for x in lrs)  # 3 significant digits: the run name gives the value exactly
    # log-uniform: half the draws below the geometric middle (uniform draws would put 3% there)
    below = sum(x < math.sqrt(1e-4 * 1e-1) for x in lrs) / len(lrs)
    assert 0.45 < below < 0.55
    decay = [v["weight_decay"] for v in values]  # log = false: uniform, its mean in the middle
    assert all(0.0 <= x <= 0.5 for x in decay) and abs(statistics.mean(decay) - 0.25) < 0.02
    factors = [v["factors"] for v in values]
    assert all(isinstance(x, int) for x in factors) and set(factors) == set(range(8, 65))
    counts = [sum(v["optimizer"] == o for v in values) for o in SPACE["optimizer"]]
    assert min(counts) > 550  # each choice about a third of the time


@pytest.mark.parametrize(
    "key, table, message",
    [
        ("lr", {"low": 0.1}, "needs low and high"),
        ("lr", {"low": 0.1, "high": 0.01}, "low 0.1 is above high 0.01"),
        ("lr", {"low": 0, "high": 0.01}, "log-scale range needs low above 0"),
        ("lr", {"low": 0.1, "high": 1, "step": 2}, "unknown key 'step'"),
        ("lr", {"low": "a", "high": 1}, "expected floats"),
        ("factors", {"low": 8.5, "high": 64}, "expected ints"),
        ("optimizer", {"low": 1, "high": 2}, "needs a numeric option"),
        ("weight_decay", {"low": 0.0, "high": 1.0, "log": "yes"}, "expected true or false"),
    ],
)
def test_bad_ranges_are_named(key, table, message):
    kind = {"lr": float, "factors": int, "optimizer": str, "weight_decay": float}[key]
    with pytest.raises(OptionError, match=message):
        parse_range("g.toml", key, table, kind)


def test_log_scale_is_the_default_for_rates_and_regularisation_only():
    assert parse_range("g", "lr", {"low": 1e-3, "high": 1.0}, float).log
    assert parse_range("g", "weight_decay", {"low": 1e-6, "high": 1e-2}, float).log
    assert not parse_range("g", "momentum", {"low": 0.5, "high": 0.99}, float).log
    assert not parse_range("g", "lr", {"low": 0.0, "high": 1.0, "log": False}, float).log


TINY = [
    "--dataset", "synthetic", "--synthetic-users", "150", "--synthetic-items", "120", "--synthetic-interactions", "8",
    "--eval-negatives", "50", "--factors", "8", "--layers", "16", "16", "8", "--epochs", "2", "--threads", "1",
]  # fmt: skip


def test_cli_refuses_ranges_without_random_search_and_trials_without_it(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nlr = {low = 0.001, high = 0.1}\n")
    base = ["sweep", "--grid", str(grid), "--output", str(tmp_path / "s"), *TINY]
    assert main(base) == 2
    assert "[grid] lr is a range; ranges are for --search random" in capsys.readouterr().err
    assert main([*base, "--search", "random"]) == 2
    assert "give both" in capsys.readouterr().err
    grid.write_text("[grid]\nmomentum = {low = 0.5, high = 1.5}\n")
    assert main([*base, "--search", "random", "--trials", "2"]) == 2  # each end is checked like a value
    assert "g.toml: invalid configuration: momentum must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(["sweep", "--preset", "notebook", "--trials", "2", *TINY]) == 2
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_random_search_end_to_end_writes_the_best_runs_config(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\nlr = {low = 0.0005, high = 0.05}\nbatch_size = [64, 256]\noptimizer = ["adam", "sgd"]\n')
    folder = tmp_path / "s"
    args = ["sweep", "--grid", str(grid), "--search", "random", "--trials", "3", "--search-seed", "5"]
    args += ["--output", str(folder), "--data-dir", str(tmp_path / "data"), *TINY]
    assert main(args) == 0
    runs = collect(folder)
    drawn = trials(
        {"lr": Range(0.0005, 0.05, True, False), "batch_size": [64, 256], "optimizer": ["adam", "sgd"]}, 3, 5
    )
    assert [r["name"] for r in runs] == [name for name, _ in drawn]
    for run, (_, values) in zip(runs, drawn):
        cfg = read_config(folder / run["name"] / CONFIG)
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.optim.optimizer) == tuple(values.values())
    # the best is chosen on the validation items (synthetic data has them), and its config reads back as it
    best = max(runs, key=lambda r: best_row(r)["valid_sampled_HR@10"])
    report = (folder / "report.md").read_text()
    assert f"Best run: `{best['name']}` (valid_sampled_HR@10 = {best_row(best)['valid_sampled_HR@10']:.4f}" in report
    assert "of 3 finished runs compared on their validation items" in report
    again = build_config(read_config_file(folder / "best.toml"))
    trained = read_config(folder / best["name"] / CONFIG)
    assert again == build_config({**trained.to_dict(), "train": {**trained.to_dict()["train"], "output": None}})
    assert (folder / "best.toml").read_text().startswith(f"# scalerec train --config {folder / 'best.toml'}")
    capsys.readouterr()
    assert main(args) == 0  # the same seed again: the same runs, all finished
    assert capsys.readouterr().out.count("already finished, skipped") == 3
