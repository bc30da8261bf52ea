"""--init-from (a model started from other runs' weights) and --pretrain (GMF, then MLP, then NeuMF from both)."""

import json

import pytest
import torch

from scalerec.checkpoint import save_best, weights_copy
from scalerec.config import Config, ModelConfig
from scalerec.errors import UserError
from scalerec.model import build_model
from scalerec.pretrain import ALPHA, init_from
from tests.helpers import SYNTHETIC, assert_one_line_error, interrupt_in_epoch, rows, run_main, tiny

pytestmark = pytest.mark.usefixtures("isolated")  # the data cache in tmp_path, not the user's

LAYERS = (16, 16, 8)


def best_file(folder, name: str, fingerprint: str = "data", factors: int = 8, bias: float = 0.0) -> torch.nn.Module:
    """A run folder holding only the best.pt of a fresh model `name` on 30 users and 40 items (its prediction bias
    `bias`, where it has one); the model."""
    model = build_model(name, 30, 40, factors, LAYERS, 0.0)
    if hasattr(model, "predict"):
        torch.nn.init.constant_(model.predict.bias, bias)
    folder.mkdir()
    cfg = Config(model=ModelConfig(model=name, factors=factors, layers=LAYERS))
    save_best(folder, weights_copy(model), {"epoch": 3}, cfg, fingerprint)
    return model


def test_neumf_from_gmf_and_mlp_scores_their_weighted_sum(tmp_path):
    gmf = best_file(tmp_path / "gmf", "gmf", bias=0.3)  # biases that are not zero, so that both count
    mlp = best_file(tmp_path / "mlp", "mlp", bias=-0.7)
    neumf = build_model("neumf", 30, 40, 8, LAYERS, 0.0)
    lines = init_from(neumf, [tmp_path / "gmf", tmp_path / "mlp"], "data")
    users, items = torch.randint(0, 30, (500,)), torch.randint(0, 40, (500,))
    with torch.no_grad():
        expected = ALPHA * gmf(users, items) + (1 - ALPHA) * mlp(users, items)
        torch.testing.assert_close(neumf(users, items), expected)
    assert lines[0].endswith("(gmf, its best epoch 3): 2 tensors")  # its tables; its head goes into the fused one
    assert lines[1].endswith("(mlp, its best epoch 3): 7 tensors")
    assert "Prediction layer" in lines[2] and len(lines) == 3  # nothing left at its fresh initialisation


def test_init_from_refuses_other_data_and_runs_with_nothing_that_fits(tmp_path):
    best_file(tmp_path / "gmf", "gmf", fingerprint="other")
    with pytest.raises(UserError, match="trained on other data than this run's"):
        init_from(build_model("gmf", 30, 40, 8, LAYERS, 0.0), [tmp_path / "gmf"], "data")
    best_file(tmp_path / "mf", "mf")
    with pytest.raises(UserError, match="none of its weights fit this model"):
        init_from(build_model("neumf", 30, 40, 8, LAYERS, 0.0), [tmp_path / "mf"], "data")
    best_file(tmp_path / "wide", "gmf", factors=16)  # same model, other sizes
    with pytest.raises(UserError, match="none of its weights fit"):
        init_from(build_model("gmf", 30, 40, 8, LAYERS, 0.0), [tmp_path / "wide"], "data")


def test_a_run_from_init_from_starts_at_the_source_runs_best_model(tmp_path, capsys):
    rc, _, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "a", epochs=2), "--model", "gmf"])
    assert rc == 0
    best = json.loads((tmp_path / "a" / "summary.json").read_text())["best"]
    # an lr too small to move the weights: its first evaluation is the source's best epoch's, exactly
    args = ["train", *SYNTHETIC, *tiny(tmp_path / "b", epochs=1), "--model", "gmf", "--optimizer", "sgd"]
    rc, out, _ = run_main(capsys, [*args, "--lr", "1e-30", "--init-from", tmp_path / "a"])
    assert rc == 0 and f"Initialised from {tmp_path / 'a'} (gmf, its best epoch {best['epoch']}): 4 tensors" in out
    first = rows(tmp_path / "b")[0]
    assert first["valid_sampled_HR@10"] == best["valid_sampled_HR@10"]
    assert first["sampled_NDCG@10"] == best["sampled_NDCG@10"]
    other = ["--synthetic-users", "150"]  # other data: refused in one line
    rc, _, err = run_main(capsys, [*args, *other, "--output", tmp_path / "c", "--init-from", tmp_path / "a"])
    assert_one_line_error(rc, err, f"--init-from {tmp_path / 'a'}: trained on other data")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--model", "gmf", "--pretrain"], "pretrain trains GMF and MLP for NeuMF"),
        (["--pretrain", "--init-from", "x"], "not with init_from"),
    ],
)
def test_pretrain_options_are_checked(tmp_path, capsys, options, message):
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "r"), *options])
    assert rc == 2 and message in err


@pytest.mark.slow
def test_pretraining_killed_in_its_mlp_stage_resumes_to_the_same_run(tmp_path, capsys, monkeypatch):
    options = [*SYNTHETIC, "--pretrain", "--pretrain-epochs", "2", "--optimizer", "sgd", "--lr", "0.05"]
    rc, out, _ = run_main(capsys, ["train", *options, *tiny(tmp_path / "whole", epochs=2)])
    assert rc == 0
    assert "Prediction layer: 0.5 x GMF's | 0.5 x MLP's" in out
    stage = json.loads((tmp_path / "whole" / "gmf" / "config.json").read_text())
    assert stage["model"]["model"] == "gmf" and stage["optim"]["optimizer"] == "adam" and stage["optim"]["lr"] == 0.001
    interrupt_in_epoch(monkeypatch, 3)  # GMF's epochs are the first two; MLP's second is stopped
    rc, _, _ = run_main(capsys, ["train", *options, *tiny(tmp_path / "cut", epochs=2)])
    assert rc != 0 and len(rows(tmp_path / "cut" / "mlp")) == 1 and not (tmp_path / "cut" / "metrics.jsonl").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # the same folder, its path written another way
    rc, out, _ = run_main(capsys, ["train", "--resume", "cut"])
    assert rc == 0 and "== Pretraining GMF: finished" in out and "Resuming" in out
    for part in ("gmf", "mlp", "."):
        assert rows(tmp_path / "cut" / part) == rows(tmp_path / "whole" / part), part
    rc, _, err = run_main(capsys, ["train", *options, *tiny(tmp_path / "cut", epochs=2)])
    assert_one_line_error(rc, err, "holds an earlier run's results")  # a finished run is not trained over
    interrupt_in_epoch(monkeypatch, 5)  # stopped in NeuMF's second epoch: the same command again continues it
    assert run_main(capsys, ["train", *options, *tiny(tmp_path / "again", epochs=2)])[0] != 0
    monkeypatch.undo()
    rc, out, _ = run_main(capsys, ["train", *options, *tiny(tmp_path / "again", epochs=2)])
    assert rc == 0 and "Resuming" in out and rows(tmp_path / "again") == rows(tmp_path / "whole")


def test_a_diverged_stage_stops_the_run_in_one_line(tmp_path, capsys):
    args = ["train", *SYNTHETIC, *tiny(tmp_path / "p"), "--pretrain", "--pretrain-optimizer", "sgd"]
    rc, _, err = run_main(capsys, [*args, "--pretrain-lr", "1e12"])
    assert_one_line_error(rc, err, "--pretrain: the GMF stage diverged (epoch 0", "lower --pretrain-lr")
    assert rc == 3  # as a diverged run's
    assert not (tmp_path / "p" / "mlp").exists()
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "p"])  # resumed: the same answer, at once
    assert_one_line_error(rc, err, "the GMF stage diverged")
    assert rc == 3
