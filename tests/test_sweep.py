import json
import subprocess
import sys

import pytest

from scalerec.cli import main
from scalerec.errors import UserError
from scalerec.optim import scaled_lr
from scalerec.report import collect, table
from scalerec.sweep import LARS_RELATIVE_STEP, flat, grid_runs, notebook_base_batch, notebook_runs, sweep

TINY = {
    "data": {
        "dataset": "synthetic",
        "synthetic_users": 150,
        "synthetic_items": 120,
        "synthetic_interactions": 8,
        "eval_negatives": 50,
    },
    "model": {"factors": 8, "layers": (16, 16, 8)},
    "train": {"epochs": 2, "threads": 1},
}


def tiny_base(tmp_path):
    return {**TINY, "data": {**TINY["data"], "data_dir": str(tmp_path / "data")}}


def test_notebook_preset_runs_follow_the_story():
    assert notebook_base_batch(4_970_845) == 256  # ml-1m: 192 * 256 leaves ~100 steps per epoch
    assert notebook_base_batch(99_300_000) == 4096  # ml-20m: the notebook's own base batch
    runs = dict(notebook_runs(256, 0.005, 0.002))
    assert list(runs) == [
        "1-base",
        "2-16x-same-lr",
        "3-16x-linear",
        "4-192x-linear",
        "5-192x-linear-warmup",
        "6-192x-lars-warmup",
        "7-192x-lamb-warmup",
        "9-grow-to-192x",
    ]
    grow = runs["9-grow-to-192x"]
    assert grow["train"]["batch_schedule"] == "0:256,1:4096,2:49152" and grow["optim"]["lr"] == 0.005  # 3 epochs
    # Runs 1-7 decay their lr (a cosine by default, else as asked); run 9 grows the batch instead.
    assert [r["optim"]["decay"] for r in runs.values()] == ["cosine"] * 7 + ["none"]
    steps = dict(notebook_runs(256, 0.005, 0.002, decay="step"))
    assert [r["optim"]["decay"] for r in steps.values()] == ["step"] * 7 + ["none"]
    assert dict(notebook_runs(256, 0.005, 0.002, epochs=9))["9-grow-to-192x"]["train"]["batch_schedule"] == (
        "0:256,3:4096,6:49152"
    )
    assert dict(notebook_runs(256, 0.005, 0.002, epochs=2))["9-grow-to-192x"]["train"]["batch_schedule"] == (
        "0:256,1:49152"
    )
    assert "9-grow-to-192x" not in dict(notebook_runs(256, 0.005, 0.002, epochs=1))  # one epoch: nothing to grow
    assert runs["2-16x-same-lr"]["train"]["batch_size"] == 4096 and runs["2-16x-same-lr"]["optim"]["lr"] == 0.005
    assert runs["4-192x-linear"]["optim"]["lr_scaling"] == "linear"
    assert runs["5-192x-linear-warmup"]["optim"]["warmup"] == "exponential"
    assert runs["6-192x-lars-warmup"]["optim"]["optimizer"] == "lars"
    assert runs["6-192x-lars-warmup"]["train"]["batch_size"] == 192 * 256
    # LARS keeps the linear rule's lr; its trust coefficient makes the peak relative step LARS_RELATIVE_STEP...
    lars = runs["6-192x-lars-warmup"]["optim"]
    assert scaled_lr(lars["base_lr"], lars["base_batch"], 192 * 256, "linear") * lars["trust_coefficient"] == (
        pytest.approx(LARS_RELATIVE_STEP)
    )
    # ...unless the user gave one.
    assert (
        dict(notebook_runs(256, 0.005, 0.002, lars_eta=0.003))["6-192x-lars-warmup"]["optim"]["trust_coefficient"]
        == 0.003
    )


@pytest.mark.parametrize(
    "given, before, expected",
    [
        ([], None, "cosine"),
        (["--decay", "none"], None, "none"),
        (["--decay", "step"], "none", "step"),
        ([], "poly", "poly"),
    ],
    ids=["default", "given", "given-over-the-folders", "the-folders-own"],
)
def test_the_notebook_preset_decays_as_given_else_as_its_folder_did_else_by_a_cosine(
    tmp_path, monkeypatch, capsys, given, before, expected
):
    from scalerec import lr_scan
    from scalerec import sweep as sweep_module
    from scalerec.config import Config

    folder = tmp_path / "nb"
    if before is not None:  # a notebook sweep already in the folder, its base run trained with `before`
        (folder / "1-base").mkdir(parents=True)
        cfg = Config()
        cfg.optim.lr, cfg.optim.decay = 0.03, before
        (folder / "1-base" / "config.json").write_text(cfg.to_json())
    trained, bases = {}, []
    monkeypatch.setattr(lr_scan, "scan", lambda *a, **k: 0.1)
    monkeypatch.setattr(
        sweep_module, "sweep", lambda base, runs, *a: bases.append(base) or trained.update(runs) or folder / "report.md"
    )
    data = ["--dataset", "synthetic", "--synthetic-users", "150", "--synthetic-items", "120", "--eval-negatives", "50"]
    assert (
        main(["sweep", "--preset", "notebook", *data, "--data-dir", str(tmp_path), "--output", str(folder), *given])
        == 0
    )
    decays = {name: run["optim"]["decay"] for name, run in trained.items()}
    assert decays.pop("9-grow-to-192x") == "none" and set(decays.values()) == {expected}
    assert len(decays) == 7
    assert "decay" not in bases[0]["optim"]  # each run's own: sweep.json compares the other options
    assert (f"Decay {before}: the sweep's own" in capsys.readouterr().out) == (before is not None and not given)


@pytest.mark.slow
def test_grid_sweep_end_to_end_with_a_failed_and_a_diverged_run(tmp_path):
    runs = grid_runs({"batch_size": [128, 1024], "optimizer": ["sgd", "lamb"]})
    runs.append(("5-diverges", flat(optimizer="sgd", lr=1e9)))
    runs.append(("6-fails", flat(eval_negatives=10_000)))  # more negatives than items: a user error
    with pytest.raises(UserError, match=r"^1 of 6 runs failed \(6-fails; .*report of the others: .*report.md$"):
        sweep(tiny_base(tmp_path), runs, tmp_path / "sweep", lambda s: None)  # the report first, then the error
    report = tmp_path / "sweep" / "report.md"
    rows = {r["run"]: r for r in table(collect(tmp_path / "sweep"))}
    assert len(rows) == 6
    assert rows["5-diverges"]["state"].startswith("diverged (epoch 0, step ") and rows["6-fails"]["state"] == "failed"
    assert rows["1-batch_size=128-optimizer=sgd"]["state"] == "finished"
    assert rows["1-batch_size=128-optimizer=sgd"]["s_to_base_HR"] != ""  # the base run reaches its own best
    csv_lines = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("run,batch,optimizer")
    for png in ("hr_per_epoch.png", "best_hr_vs_batch.png", "lr_schedule.png"):
        assert (tmp_path / "sweep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report.read_text()
    # re-running skips what finished or diverged
    again = []
    sweep(tiny_base(tmp_path), runs[:5], tmp_path / "sweep", again.append)
    assert sum("already finished, skipped" in x for x in again) == 5
    assert not any(x.startswith("Epoch") for x in again)


@pytest.mark.slow
def test_report_rebuilds_from_logs_alone_without_torch(tmp_path):
    sweep(tiny_base(tmp_path), grid_runs({"batch_size": [256]}), tmp_path / "s", lambda s: None)
    for name in ("results.csv", "results.md", "report.md", "hr_per_epoch.png"):
        (tmp_path / "s" / name).unlink()
    code = (
        "import sys; from scalerec.cli import main; rc = main(['report', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'report imported torch'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s" / "report.md").is_file() and (tmp_path / "s" / "hr_per_epoch.png").is_file()
    summary = json.loads((tmp_path / "s" / "1-batch_size=256" / "summary.json").read_text())
    assert summary["lr_schedule"][0][0] == 0


def test_sweep_cli_errors(tmp_path, capsys):
    # option errors exit 2, as argparse's own; a folder that holds no run is a user error, 1
    assert main(["sweep", "--dataset", "synthetic", "--output", str(tmp_path / "s")]) == 2
    assert "sweep needs --preset notebook or --grid FILE" in capsys.readouterr().err
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\noptimizer = ["sgd", "rmsprop"]\n')
    assert main(["sweep", "--grid", str(grid), "--output", str(tmp_path / "s")]) == 2
    assert "invalid value for optimizer: 'rmsprop'" in capsys.readouterr().err
    grid.write_text("[grid]\nbatch = [1, 2]\n")
    assert main(["sweep", "--grid", str(grid)]) == 2
    assert "unknown option 'batch' in [grid]" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["epochs = [1.5]", "lr = 0.1"])
def test_grid_values_are_checked(tmp_path, capsys, bad):
    grid = tmp_path / "g.toml"
    grid.write_text(f"[grid]\n{bad}\n")
    assert main(["sweep", "--grid", str(grid), "--output", str(tmp_path / "s")]) == 2
    assert "scalerec: error:" in capsys.readouterr().err


def test_report_tolerates_other_k_cut_lines_and_foreign_folders(tmp_path):
    base = tiny_base(tmp_path)
    base["eval"] = {"topk": (5,)}
    sweep(base, grid_runs({"batch_size": [256, 512]}), tmp_path / "s", lambda s: None)
    metrics = tmp_path / "s" / "2-batch_size=512" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "HR@')  # an interrupted run's last line
    (tmp_path / "s" / "other").mkdir()
    (tmp_path / "s" / "other" / "config.json").write_text('{"lr": 1}')  # not a scalerec run
    rows = table(collect(tmp_path / "s"))
    assert [r["run"] for r in rows] == ["1-batch_size=256", "2-batch_size=512"]
    assert rows[0]["K"] == "5" and rows[0]["best_HR"] != "" and rows[1]["epochs"] == 2
    assert oct((tmp_path / "s" / "results.csv").stat().st_mode & 0o777) != oct(0o600)  # not private


@pytest.mark.slow
def test_grid_is_checked_over_the_base_options_and_resume_refuses_changed_options(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nnesterov = [true, false]\nbatch-size = [512]\n")
    args = [
        "sweep",
        "--grid",
        str(grid),
        "--optimizer",
        "sgd",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "100",
        "--synthetic-items",
        "300",
        "--epochs",
        "1",
        "--output",
        str(tmp_path / "s"),
        "--data-dir",
        str(tmp_path / "d"),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert main([*args, "--epochs", "2"]) == 1
    assert "a sweep made with other options than these" in capsys.readouterr().err
    # A run finished by an older scalerec, before an option existed, holds that option at its default: skipped.
    saved = next((tmp_path / "s").glob("1-*/config.json"))
    old = json.loads(saved.read_text())
    del old["train"]["micro_batch"], old["optim"]["sparse_embeddings"]
    saved.write_text(json.dumps(old))
    assert main(args) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 2


def test_report_reads_full_ranking_runs_and_runs_from_before_the_protocol_names(tmp_path):
    base = tiny_base(tmp_path)
    base["eval"] = {"eval": "both"}
    sweep(base, grid_runs({"batch_size": [256]}), tmp_path / "s", lambda s: None)
    (row,) = table(collect(tmp_path / "s"))
    metrics = [json.loads(x) for x in (tmp_path / "s" / "1-batch_size=256" / "metrics.jsonl").read_text().splitlines()]
    chosen = max(metrics, key=lambda m: m["valid_full_HR@10"])  # the epoch training chose, on validation
    assert row["eval"] == "full" and row["best_HR"] == f"{chosen['full_HR@10']:.4f}"
    assert row["best_epoch"] == chosen["epoch"] == metrics[-1]["best_epoch"]
    # an older run: HR@10 without a protocol, no eval option in its config
    old = tmp_path / "s" / "1-batch_size=256"
    config = json.loads((old / "config.json").read_text())
    del config["eval"]["eval"]
    (old / "config.json").write_text(json.dumps(config))
    renamed = [{k.removeprefix("sampled_"): v for k, v in m.items() if not k.startswith("full_")} for m in metrics]
    (old / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in renamed))
    (row,) = table(collect(tmp_path / "s"))
    assert row["eval"] == "sampled" and row["best_HR"] == f"{max(m['HR@10'] for m in renamed):.4f}"


@pytest.mark.slow
def test_a_sweep_refuses_a_run_folder_and_another_sweeps_folder(tmp_path):
    base = tiny_base(tmp_path)
    base["train"] = {**base["train"], "epochs": 1}
    single = tmp_path / "run"
    single.mkdir()
    (single / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="holds a single run, not a sweep"):
        sweep(base, grid_runs({"batch_size": [256]}), single, lambda s: None)
    sweep(base, grid_runs({"batch_size": [256]}), tmp_path / "s", lambda s: None)
    assert (tmp_path / "s" / "sweep.json").is_file()
    # the same base with another grid: the runs sit side by side; other base options: refused
    sweep(base, grid_runs({"batch_size": [512]}), tmp_path / "s", lambda s: None)
    other = {**base, "data": {**base["data"], "synthetic_users": 170}}
    with pytest.raises(UserError, match="a sweep made with other options than these"):
        sweep(other, grid_runs({"lr": [0.01]}), tmp_path / "s", lambda s: None)
    (tmp_path / "s" / "sweep.json").unlink()  # a folder from before sweep.json: its runs' names decide
    with pytest.raises(UserError, match=r"holds runs of another sweep \(1-batch_size=256, 1-batch_size=512\)"):
        sweep(base, grid_runs({"lr": [0.01]}), tmp_path / "s", lambda s: None)


def test_output_cannot_be_a_grid_option(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\noutput = ["a", "b"]\n')
    assert main(["sweep", "--grid", str(grid), "--dataset", "synthetic", "--output", str(tmp_path / "s")]) == 2
    assert "output cannot be a [grid] option" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_sweep_run_is_trained_again(tmp_path):
    base = tiny_base(tmp_path)
    base["train"] = {**base["train"], "epochs": 1}
    runs = grid_runs({"batch_size": [256]})
    sweep(base, runs, tmp_path / "s", lambda s: None)
    summary = tmp_path / "s" / "1-batch_size=256" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "state": "interrupted"}))
    said = []
    sweep(base, runs, tmp_path / "s", said.append)
    assert "== 1-batch_size=256" in said and json.loads(summary.read_text())["state"] == "finished"


def test_a_sweep_stopped_by_ctrl_c_reports_the_runs_so_far(tmp_path, monkeypatch):
    import scalerec.training

    base = tiny_base(tmp_path)
    base["train"] = {**base["train"], "epochs": 1}
    train, calls = scalerec.training.train, []

    def stopped_at_the_second(config, log, **options):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(config, log, **options)

    monkeypatch.setattr(scalerec.training, "train", stopped_at_the_second)
    said = []
    with pytest.raises(KeyboardInterrupt):
        sweep(base, grid_runs({"batch_size": [256, 512]}), tmp_path / "s", said.append)
    assert any(line.startswith("Stopped; the runs so far:") for line in said)
    results = (tmp_path / "s" / "results.md").read_text()
    assert "1-batch_size=256" in results and "2-batch_size=512" not in results


@pytest.mark.slow
def test_report_of_an_unfinished_run(tmp_path, recwarn):
    base = tiny_base(tmp_path)
    sweep(base, grid_runs({"batch_size": [256]}), tmp_path / "s", lambda s: None)
    run = tmp_path / "s" / "1-batch_size=256"
    (run / "summary.json").unlink()  # as a run stopped by a crash leaves it
    from scalerec.report import write_report

    report = write_report(run).read_text()
    assert "`1-batch_size=256` (no run finished: the unfinished run with the smallest batch)" in report
    (row,) = table(collect(run))
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["state"] == "unfinished" and row["lr"] == f"{max(lrs):.4g}"
    assert not [w for w in recwarn if "legend" in str(w.message)]
    with pytest.raises(UserError, match="a file"):
        collect(run / "config.json")


@pytest.mark.slow
def test_the_report_says_when_a_smaller_batch_run_that_would_be_the_base_diverged(tmp_path):
    runs = [("1-small", flat(batch_size=64, optimizer="sgd", lr=1e9)), ("2-large", flat(batch_size=256))]
    report = sweep(tiny_base(tmp_path), runs, tmp_path / "sweep", lambda s: None).read_text()
    base = "Base run: `2-large` (the finished run with the smallest batch; of a smaller batch, `1-small` (diverged)"
    assert base in report


def test_the_lr_scan_keeps_the_lowest_loss_and_stops_at_the_first_divergence(tmp_path, monkeypatch):
    from scalerec import lr_scan
    from scalerec.config import build_config
    from scalerec.data.loading import load_dataset

    assert lr_scan.choose({0.1: 0.40, 0.3: 0.38, 1.0: 0.45, 3.0: None}) == 0.3
    assert lr_scan.choose({0.01: 0.3697, 0.03: 0.3709, 0.1: 0.4136}) == 0.03  # as good within 1%: the larger
    with pytest.raises(UserError, match="every lr of the scan diverged"):
        lr_scan.choose({0.1: None})
    cfg = build_config({**tiny_base(tmp_path), "train": {**TINY["train"], "device": "cpu"}})
    ds = load_dataset(cfg.data)
    monkeypatch.setattr(lr_scan, "CANDIDATES", (0.001, 0.3, 1e9, 1e10))
    lines = []
    chosen = lr_scan.scan(cfg, ds, 64, lines.append)
    (line,) = lines
    assert "0.001: 0." in line and "0.3: 0." in line and "1e+09: diverged" in line
    assert "1e+10" not in line  # larger than one that diverged: not tried
    losses = {
        float(lr): float(v)
        for lr, v in (p.split(": ") for p in line.split("(final loss per lr: ")[1][:-1].split(", "))
        if v != "diverged"
    }
    assert chosen == lr_scan.choose(losses) and line.startswith(f"Base SGD lr {chosen:g}, by a scan at batch 64")


def test_a_notebook_sweep_run_again_keeps_its_base_runs_lr(tmp_path):
    from scalerec.config import Config
    from scalerec.sweep import base_lr_of

    assert base_lr_of(tmp_path) is None
    (tmp_path / "1-base").mkdir()
    cfg = Config()
    cfg.optim.lr = 0.03
    (tmp_path / "1-base" / "config.json").write_text(cfg.to_json())
    said = []
    assert base_lr_of(tmp_path, said.append) == 0.03 and said == [
        "Base SGD lr 0.03: the sweep's own (its 1-base run's)"
    ]
