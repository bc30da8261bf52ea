"""The validation split: each user's second-latest item held out, the best epoch chosen on it (or, with --select-on
test, on the test items), early stopping, and the full ranking's candidates of each split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import scalerec
from scalerec.config import EvalConfig
from scalerec.data.prepare import Dataset
from scalerec.metrics import run_evaluator
from tests.helpers import assert_one_line_error, run_main, tiny_config

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path


class ByItem(nn.Module):
    """Scores item i as -i for every user: lower ids rank first."""

    def encode_users(self, users, distinct=False):
        return (users.float(),)

    def encode_items(self, items, distinct=False):
        return (items.float(),)

    def score_grid(self, user, item):
        return (-item[0])[None, :].expand(len(user[0]), -1).clone()

    def forward(self, users, items):
        return -items.float()


def test_the_test_ranking_leaves_out_the_validation_item_and_the_validation_ranking_keeps_the_test_item():
    # one user: trained on item 0, validation item 3, test item 2; items 1 and 4 never seen
    ds = Dataset(
        "t", "t", 1, 5, train_users=np.array([0]), train_items=np.array([0]), test_users=np.array([0]),
        test_items=np.array([2]), eval_negatives=np.array([[1, 4]]), valid_users=np.array([0]),
        valid_items=np.array([3]), valid_negatives=np.array([[1, 4]]),
    )  # fmt: skip
    evaluation, key = run_evaluator(ds, ByItem(), torch.device("cpu"), EvalConfig(eval="full", topk=(1, 2, 3)))
    got = evaluation()
    assert key == "valid_full_HR@1"
    # test item 2: beaten by item 1 only (0 trained on, 3 the validation item): rank 1
    assert (got["full_HR@1"], got["full_HR@2"]) == (0.0, 1.0)
    # validation item 3: beaten by items 1 and 2 (the test item is a candidate): rank 2
    assert (got["valid_full_HR@2"], got["valid_full_HR@3"]) == (0.0, 1.0)


def test_the_best_epoch_is_chosen_on_validation_and_the_test_metrics_are_reported_there(tmp_path):
    lines: list[str] = []
    run = scalerec.train(tiny_config(tmp_path, epochs=4), log=lines.append)
    valid = [r["valid_sampled_HR@10"] for r in run.metrics]
    test = [r["sampled_HR@10"] for r in run.metrics]
    assert run.best_epoch == valid.index(max(valid))
    best = run.summary["best"]
    assert best["sampled_HR@10"] == test[run.best_epoch]  # the test items', at the epoch validation chose
    assert lines[-1].startswith(f"Best epoch {run.best_epoch} (chosen on valid_sampled_HR@10 = {max(valid):.4f}): ")
    assert f"test sampled_HR@10 = {best['sampled_HR@10']:.4f}" in lines[-1]


def test_select_on_test_and_no_validation(tmp_path):
    on_test = scalerec.train(tiny_config(tmp_path, epochs=3, output=str(tmp_path / "a")), log=None, select_on="test")
    test = [r["sampled_HR@10"] for r in on_test.metrics]
    assert on_test.best_epoch == test.index(max(test)) and "valid_sampled_HR@10" in on_test.metrics[0]
    cfg = tiny_config(tmp_path, epochs=1, output=str(tmp_path / "b"))
    cfg.data.valid = False
    plain = scalerec.train(cfg, log=None)
    assert not any(k.startswith("valid_") for k in plain.metrics[0])


def test_patience_stops_after_epochs_without_a_better_validation_metric(tmp_path):
    cfg = tiny_config(tmp_path, epochs=30, patience=2)
    cfg.optim.lr = 0.05  # overfits within a few epochs
    lines: list[str] = []
    run = scalerec.train(cfg, log=lines.append)
    assert len(run.metrics) < 30 and run.summary["state"] == "finished"
    assert len(run.metrics) - 1 - run.best_epoch == 2  # stopped 2 epochs after the best
    assert "Stopping early: no better valid_sampled_HR@10 in 2 epochs (--patience)" in lines
    assert json.loads((run.path / "summary.json").read_text())["epochs"] == len(run.metrics)
    assert torch.load(run.path / "best.pt", weights_only=True)["epoch"] == run.best_epoch


def test_the_ncf_files_have_no_validation_and_refuse_one(capsys, tmp_path):
    prefix = tmp_path / "t"
    train = "".join(f"{u}\t{i}\t5\t{100 + i}\n" for u in range(12) for i in range(u % 3, u % 3 + 6))
    (tmp_path / "t.train.rating").write_text(train)
    (tmp_path / "t.test.rating").write_text("".join(f"{u}\t{(u + 7) % 12}\t5\t999\n" for u in range(12)))
    base = ["train", "--dataset", "ncf", "--data", prefix, "--epochs", "1", "--eval-negatives", "3"]
    base += ["--factors", "4", "--layers", "8", "8", "--output"]
    rc, out, err = run_main(capsys, [*base, tmp_path / "run"])
    assert rc == 0, err
    assert "#valid" not in out and "valid_" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    rc, _, err = run_main(capsys, [*base, tmp_path / "run2", "--valid"])
    assert_one_line_error(rc, err, "--valid: the NCF paper's files come split into train and test, with no validation")


def test_a_run_made_before_the_validation_split_loads_and_resumes_without_one(tmp_path, monkeypatch):
    from tests.helpers import interrupt_in_epoch

    cfg = tiny_config(tmp_path, epochs=2)
    cfg.data.valid = False
    interrupt_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        scalerec.train(cfg, log=None)
    monkeypatch.undo()
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    del config["data"]["valid"]  # as scalerec wrote them before --valid existed
    (run / "config.json").write_text(json.dumps(config))
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    del saved["config"]["data"]["valid"], saved["data"]["valid"]
    torch.save(saved, run / "checkpoint.pt")
    (run / "data.npz").unlink()
    assert scalerec.load(run, epoch="last").dataset.valid_users.size == 0  # read again from the cache, as it was
    resumed = scalerec.train(resume=run, log=None)
    assert len(resumed.metrics) == 2 and "valid_sampled_HR@10" not in resumed.metrics[-1]


def test_a_run_killed_after_its_last_checkpoint_is_resumed_to_finish_its_files(tmp_path):
    run = scalerec.train(tiny_config(tmp_path, epochs=2), log=None)
    whole = (run.path / "best.pt").read_bytes()
    (run.path / "summary.json").unlink()  # killed after the last epoch's checkpoint, before anything after it
    (run.path / "best.pt").unlink()
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    (run.path / "metrics.jsonl").write_text(lines[0] + "\n")
    again = scalerec.train(resume=run.path, log=None)
    assert again.summary["state"] == "finished" and len(again.metrics) == 2 and again.metrics == run.metrics
    best = torch.load(run.path / "best.pt", weights_only=True)
    assert best["epoch"] == run.best_epoch and len(whole) > 0
    with pytest.raises(scalerec.UserError, match="all 2 epochs are done; nothing to resume"):
        scalerec.train(resume=run.path, log=None)


def test_an_early_stopped_run_is_finished(tmp_path):
    cfg = tiny_config(tmp_path, epochs=30, patience=1)
    cfg.optim.lr = 0.05
    run = scalerec.train(cfg, log=None)
    assert len(run.metrics) < 30
    with pytest.raises(scalerec.UserError, match=f"it stopped early after {len(run.metrics)} epochs"):
        scalerec.train(resume=run.path, log=None)


def test_the_report_takes_each_runs_best_epoch_as_its_training_chose_it():
    from scalerec.report import best_row

    metrics = [
        {"epoch": 0, "sampled_HR@10": 0.6, "valid_sampled_HR@10": 0.7},
        {"epoch": 1, "sampled_HR@10": 0.5, "valid_sampled_HR@10": 0.8},  # validation's best: not the test's
    ]
    run = {"config": {"eval": {"topk": [10], "eval": "sampled"}}, "metrics": metrics}
    assert best_row(run)["epoch"] == 1
    run["config"]["eval"]["select_on"] = "test"
    assert best_row(run)["epoch"] == 0


def test_an_early_stopped_run_killed_before_its_summary_resumes_without_training_more(tmp_path):
    cfg = tiny_config(tmp_path, epochs=30, patience=1)
    cfg.optim.lr = 0.05
    run = scalerec.train(cfg, log=None)
    (run.path / "summary.json").unlink()  # killed after its last checkpoint, before the summary said finished
    again = scalerec.train(resume=run.path, log=None)
    assert again.metrics == run.metrics and again.summary["state"] == "finished"
