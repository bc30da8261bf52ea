"""The report's figures, read back from the Figures themselves (each line's x and y, titles, ticks, marks), on run
folders written as scalerec writes them: no training, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalerec.config import Config
from scalerec.report import base_run, collect, write_report

pytest.importorskip("matplotlib", reason="the report extra (pip install 'scalerec[report]')")


def fake_run(
    sweep: Path, name: str, batch: int, optimizer: str, hrs: list[float], state="finished", grown=None, **train
):
    """A run folder as training leaves it: config.json, one metrics row per HR, summary.json (diverged at the end
    where `state` says so)."""
    run = sweep / name
    run.mkdir(parents=True)
    cfg = Config()
    cfg.train.batch_size, cfg.optim.optimizer = batch, optimizer
    for k, v in train.items():
        setattr(cfg.train if hasattr(cfg.train, k) else cfg.optim, k, v)
    (run / "config.json").write_text(cfg.to_json())
    rows = [
        {"epoch": e, "sampled_HR@10": hr, "sampled_NDCG@10": hr / 2, "loss": 0.5 - 0.05 * e, "train_s": 100.0 / batch
         * 256, "eval_s": 1.0, "samples_per_s": 10.0 * batch, "lr": 0.01, "batch_size": (grown or {}).get(e, batch)}
        for e, hr in enumerate(hrs)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"state": state, "dataset": "ML-100K", "lr": 0.01, "batch_size": batch, "steps_per_epoch": 10}
    summary["lr_schedule"] = [[s, 0.01 * min(1.0, (s + 1) / 10)] for s in range(0, 10 * max(1, len(hrs)), 3)]
    if state == "diverged":
        summary["diverged_at"] = {"epoch": len(hrs), "step": 5, "lr": 0.01}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def drawn(tmp_path):
    """The figures of a sweep in which Adam's HR falls as the batch grows, an SGD run diverges before its first
    epoch and a LAMB run after its best."""
    from scalerec.figures import figures

    fake_run(tmp_path, "1-adam-256", 256, "adam", [0.6500, 0.7150, 0.7100])
    fake_run(tmp_path, "2-adam-2048", 2048, "adam", [0.5100, 0.5580, 0.5500])
    fake_run(tmp_path, "3-adam-16384", 16384, "adam", [0.4000, 0.4500, 0.4400])
    fake_run(tmp_path, "4-sgd-2048", 2048, "sgd", [], state="diverged")
    fake_run(tmp_path, "5-lamb-2048", 2048, "lamb", [0.6000, 0.6522], state="diverged")
    fake_run(tmp_path, "6-lars-4096", 4096, "lars", [], state="interrupted")  # stopped in its first epoch
    runs = collect(tmp_path)
    return figures(runs, base_run(runs))


def lines_of(fig) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines}


def test_best_hr_against_batch_holds_the_numbers_in_batch_order(drawn):
    ax = drawn["best_hr_vs_batch.png"].axes[0]
    got = lines_of(drawn["best_hr_vs_batch.png"])
    xs, ys = got["adam, lr none, warmup none, fp32"]
    assert xs == [256, 2048, 16384] and ys == [0.7150, 0.5580, 0.4500]  # falling, as the runs' best HR did
    assert got["lamb, lr none, warmup none, fp32"] == ([2048], [0.6522])  # its best, before it diverged
    assert ax.get_xscale() == "log" and all(isinstance(y, float) for y in ys)  # a numeric axis, not labels
    crosses = [c for c in ax.collections if c.get_label() == "no epoch logged"]
    assert [list(p) for p in crosses[0].get_offsets()] == [[2048, 0.0], [4096, 0.0]]  # runs with no epoch, at 0
    texts = [t.get_text() for t in ax.texts]
    assert "4-sgd-2048 (diverged)" in texts and "5-lamb-2048 (diverged later)" in texts
    assert "6-lars-4096 (interrupted)" in texts  # named with its own state, not as diverged


def test_every_figure_names_the_data_the_protocol_and_k_and_epochs_are_whole(drawn):
    assert set(drawn) == {
        "hr_per_epoch.png", "loss_per_epoch.png", "best_hr_vs_batch.png", "time_to_target.png",
        "throughput_vs_batch.png", "lr_schedule.png",
    }  # fmt: skip
    for name, fig in drawn.items():
        assert "ML-100K; sampled ranking, K = 10" in fig.axes[0].get_title(), name
    for name in ("hr_per_epoch.png", "loss_per_epoch.png"):
        ax = drawn[name].axes[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), name
    hr = lines_of(drawn["hr_per_epoch.png"])
    assert hr["2-adam-2048"] == ([0, 1, 2], [0.5100, 0.5580, 0.5500])
    assert lines_of(drawn["loss_per_epoch.png"])["1-adam-256"][1] == pytest.approx([0.5, 0.45, 0.4])
    styles = [(line.get_marker(), line.get_linestyle()) for line in drawn["hr_per_epoch.png"].axes[0].lines]
    assert len(set(styles)) == len(styles)  # told apart without colour


def test_time_to_target_and_throughput_against_batch(drawn):
    # the base run (the finished run with the smallest batch) reached its best, 0.7150, after 2 epochs of 100 s;
    # the larger Adam batches never did, so they are not drawn
    assert lines_of(drawn["time_to_target.png"]) == {"adam, lr none, warmup none, fp32": ([256], [200.0])}
    assert "0.7150" in drawn["time_to_target.png"].axes[0].get_ylabel()
    xs, ys = lines_of(drawn["throughput_vs_batch.png"])["adam, lr none, warmup none, fp32"]
    assert xs == [256, 2048, 16384] and ys == [2560.0, 20480.0, 163840.0]
    schedule = lines_of(drawn["lr_schedule.png"])["1-adam-256"]
    assert schedule[0][:2] == [0.0, 0.3] and schedule[1][-1] == 0.01


def test_a_run_that_grew_its_batch_is_drawn_at_the_batch_it_reached(tmp_path):
    from scalerec.figures import figures
    from scalerec.report import table

    fake_run(tmp_path, "1-sgd-256", 256, "sgd", [0.60, 0.64, 0.65])
    fake_run(tmp_path, "9-grow", 256, "sgd", [0.60, 0.66, 0.67], grown={1: 4096, 2: 49152},
             batch_schedule="0:256,1:4096,2:49152")  # fmt: skip
    runs = collect(tmp_path)
    got = lines_of(figures(runs, base_run(runs))["best_hr_vs_batch.png"])
    assert got["sgd, lr none, warmup none, fp32, batch grown"] == ([49152], [0.67])
    assert got["sgd, lr none, warmup none, fp32"] == ([256], [0.65])
    assert [row["batch"] for row in table(runs)] == [256, "256->49152"]
    assert base_run(runs)["name"] == "1-sgd-256"


def test_report_md_embeds_each_figure_with_what_it_shows(tmp_path):
    fake_run(tmp_path, "1-adam-256", 256, "adam", [0.65, 0.70])
    fake_run(tmp_path, "2-adam-4096", 4096, "adam", [0.60, 0.66])
    text = write_report(tmp_path).read_text()
    for name in ("hr_per_epoch.png", "best_hr_vs_batch.png", "time_to_target.png", "throughput_vs_batch.png"):
        assert f"![{name}]({name})" in text and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "Training seconds until each run first reached the base run's best HR@K" in text
