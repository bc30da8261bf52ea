"""The run's best model kept (best.pt) beside the last (checkpoint.pt), with the data it needs (data.npz): used by
default, reprinting the training log's figures, and working from a folder copied elsewhere without the data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import scalerec
from tests.helpers import assert_one_line_error, interrupt_in_epoch, run_main, tiny_config

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path


def overfitting(tmp_path, name: str = "run", **train_kw):
    """A run of seconds whose best epoch (4, by the validation items' sampled HR@10) is not its last (5)."""
    cfg = tiny_config(tmp_path, **{"epochs": 6, "output": str(tmp_path / name), **train_kw})
    cfg.optim.lr = 0.01
    return cfg


def test_the_best_epochs_model_is_kept_and_used_by_default(capsys, tmp_path):
    run = scalerec.train(overfitting(tmp_path), log=None)
    assert run.best_epoch == 4 and len(run.metrics) == 6  # the case this test is about: best is not last
    best = torch.load(run.path / "best.pt", weights_only=True)
    assert best["epoch"] == 4 and best["metrics"]["sampled_HR@10"] == run.metrics[4]["sampled_HR@10"]
    saved = torch.load(run.path / "checkpoint.pt", weights_only=True)  # the last epoch's, and the best's weights
    assert saved["history"][-1]["epoch"] == 5
    for name, weight in best["model"].items():
        assert torch.equal(saved["best_model"][name], weight)
    assert not torch.equal(saved["model"]["gmf_user.weight"], best["model"]["gmf_user.weight"])

    for epoch, row in (("best", run.metrics[4]), ("last", run.metrics[5])):
        rc, out, err = run_main(capsys, ["evaluate", run.path, "--epoch", epoch, "--json"])
        assert rc == 0, err
        printed = json.loads(out)
        assert printed.pop("epoch") == row["epoch"] and printed.pop("model") == epoch
        assert printed == {k: v for k, v in row.items() if "@" in k}  # the log's figures, to the last digit
    rec = scalerec.load(run)
    assert (rec.epoch, rec.which) == (4, "best") and scalerec.load(run, epoch="last").epoch == 5
    for name, weight in best["model"].items():
        assert torch.equal(rec.model.state_dict()[name], weight)
    rc, out, err = run_main(capsys, ["recommend", run.path, "--k", "3"])
    assert rc == 0 and err.strip().endswith("(epoch 4's model, the best)"), err
    assert out.splitlines()[0] == "user,rank,item,score"  # stdout holds the CSV alone
    assert run_main(capsys, ["recommend", run.path, "--k", "3", "--device", "auto"])[1] == out  # auto: the CPU here
    for command in ("recommend", "evaluate", "serve"):  # each scores where --device says, one line where it cannot
        rc, _, err = run_main(capsys, [command, run.path, "--device", "cuda"])
        assert_one_line_error(rc, err, "--device cuda: no CUDA device is available")
        rc, _, err = run_main(capsys, [command, run.path, "--device", "tpu"])
        assert_one_line_error(rc, err, "device 'tpu': expected cpu, cuda, cuda:N or auto")


def test_a_run_folder_copied_elsewhere_without_the_data_recommends_and_evaluates(tmp_path, monkeypatch):
    rows = [f"user {u},item {(u * 7 + k * 3) % 50},{k}" for u in range(60) for k in range(9)]
    (tmp_path / "clicks.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    run = scalerec.train(
        data=str(tmp_path / "clicks.csv"), epochs=2, batch_size=256, factors=8, layers=[16, 16, 8],
        eval_negatives=20, threads=1, output=str(tmp_path / "run"), log=None,
    )  # fmt: skip
    before = scalerec.load(run)
    recommended, metrics = before.recommend(["user 3", "user 17"], k=5), before.evaluate("both")
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run.path, moved)
    shutil.rmtree(run.path)
    shutil.rmtree(tmp_path / "data_dir")  # the data cache
    (tmp_path / "clicks.csv").unlink()
    monkeypatch.chdir(tmp_path / "elsewhere")
    after = scalerec.load(moved)
    assert after.recommend(["user 3", "user 17"], k=5).equals(recommended)
    assert after.evaluate("both") == metrics
    assert list(after.users[:2]) == ["user 0", "user 1"]


def test_resume_writes_best_pt_again_where_the_run_stopped_before_it(tmp_path, monkeypatch):
    whole = scalerec.train(overfitting(tmp_path, "whole"), log=None)
    interrupt_in_epoch(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        scalerec.train(overfitting(tmp_path), log=None)
    monkeypatch.undo()
    (tmp_path / "run" / "best.pt").unlink()  # stopped after epoch 4's checkpoint (a new best), before its best.pt
    resumed = scalerec.train(resume=tmp_path / "run", log=None)
    figures = [[(k, v) for k, v in r.items() if "@" in k or k == "loss"] for r in resumed.metrics]
    assert figures == [[(k, v) for k, v in r.items() if "@" in k or k == "loss"] for r in whole.metrics]
    assert resumed.best_epoch == 4  # and epoch 5 no new best: best.pt was written again on resume
    a, b = (torch.load(p / "best.pt", weights_only=True) for p in (whole.path, resumed.path))
    assert a["epoch"] == b["epoch"] == 4
    for name, weight in a["model"].items():
        assert torch.equal(b["model"][name], weight)


def test_without_checkpoints_the_best_model_is_still_kept(capsys, tmp_path):
    run = scalerec.train(overfitting(tmp_path, checkpoint=False, epochs=2), log=None)
    assert not (run.path / "checkpoint.pt").exists() and (run.path / "best.pt").is_file()
    assert scalerec.load(run).epoch == run.best_epoch
    rc, _, err = run_main(capsys, ["recommend", run.path, "--epoch", "last"])
    assert_one_line_error(rc, err, "no checkpoint.pt (trained with --no-checkpoint)", "(epoch 'best')")


def test_a_model_or_data_file_from_another_run_or_damaged_is_one_line(capsys, tmp_path):
    ours = scalerec.train(overfitting(tmp_path, epochs=1), log=None)
    other_cfg = overfitting(tmp_path, "other", epochs=1)
    other_cfg.model.factors = 4
    other_cfg.data.synthetic_users = 300
    other = scalerec.train(other_cfg, log=None)
    shutil.copy(ours.path / "best.pt", tmp_path / "best.pt")
    shutil.copy(other.path / "best.pt", ours.path / "best.pt")
    rc, _, err = run_main(capsys, ["evaluate", ours.path])
    assert_one_line_error(rc, err, f"{ours.path / 'best.pt'}: another run's model (its options differ", "factors")
    shutil.copy(tmp_path / "best.pt", ours.path / "best.pt")
    shutil.copy(other.path / "data.npz", ours.path / "data.npz")
    rc, _, err = run_main(capsys, ["recommend", ours.path])
    assert_one_line_error(rc, err, f"{ours.path / 'best.pt'}: not trained on this run's data")
    (ours.path / "data.npz").write_bytes(b"PK\x03\x04 half a file")
    rc, _, err = run_main(capsys, ["recommend", ours.path])
    assert_one_line_error(rc, err, f"{ours.path / 'data.npz'}: not a readable scalerec run data file")
    (ours.path / "best.pt").write_bytes((ours.path / "best.pt").read_bytes()[:1000])
    rc, _, err = run_main(capsys, ["recommend", ours.path])
    assert_one_line_error(rc, err, f"{ours.path / 'best.pt'}: not a readable scalerec model")


def test_movielens_titles_travel_with_the_model(capsys, tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    rows = [f"{u}\t{(u * 7 + k * 3) % 30 + 1}\t5\t{1000 + k}" for u in range(1, 41) for k in range(6)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    items = "".join(f"{i}|Film number {i}, caf\xe9 ({1990 + i})|01-Jan-1995||http://x|0|1\n" for i in range(1, 31))
    (folder / "u.item").write_bytes(items.encode("latin-1"))  # as MovieLens-100K ships it
    run = scalerec.train(data=str(folder), epochs=1, factors=4, layers=[8, 8], eval_negatives=10, log=None)
    top = scalerec.load(run).recommend([3], k=2)
    assert list(top.columns) == ["user", "rank", "item", "score", "title"]
    assert all(t == f"Film number {i}, caf\xe9 ({1990 + i})" for i, t in zip(top["item"], top["title"]))
    rc, out, _ = run_main(capsys, ["recommend", run.path, "--users", "3", "--k", "2"])
    assert out.splitlines()[0] == "user,rank,item,score,title" and '"Film number' in out  # quoted: it has a comma
    shutil.rmtree(folder)  # the titles travel in data.npz
    from scalerec.serve import Service

    served = Service(scalerec.load(run)).recommend(["3"], 2)[0]["items"]
    assert [x["title"] for x in served] == list(top["title"])
    rc, _, err = run_main(capsys, ["export", run.path, "--format", "torch", "--output", tmp_path / "out"])
    assert rc == 0, err
    ids = json.loads((tmp_path / "out" / "ids.json").read_text())
    assert ids["titles"][ids["items"].index(int(top["item"][0]))] == top["title"][0]


def test_evaluate_on_new_rows_ranks_each_among_the_items_its_user_did_not_have(capsys, tmp_path):
    run = scalerec.train(overfitting(tmp_path, epochs=1), log=None)
    rec = scalerec.load(run)
    ds = rec.dataset
    known = set(zip(ds.train_users.tolist(), ds.train_items.tolist()))
    known |= set(zip(ds.valid_users.tolist(), ds.valid_items.tolist())) | set(
        zip(ds.test_users.tolist(), ds.test_items.tolist())
    )
    new = [(u, i) for u in range(0, 400, 7) for i in range(0, 200, 37) if (u, i) not in known][:40]
    rows = [f"{rec.users[u]},{rec.items[i]}" for u, i in new]
    rows += [
        "no-such-user,1",
        f"{rec.users[0]},no-such-item",
        f"{rec.users[ds.test_users[0]]},{rec.items[ds.test_items[0]]}",
    ]
    (tmp_path / "new.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    rc, out, err = run_main(capsys, ["evaluate", run.path, "--data", tmp_path / "new.csv", "--json"])
    assert rc == 0, err
    got = json.loads(out)
    assert (got["rows"], got["evaluated"], got["unknown_users"], got["unknown_items"], got["seen_before"]) == (
        43,
        40,
        1,
        1,
        1,
    )
    ranks = []  # by hand: the items scoring at least as high, among those the user did not have
    for u, i in new:
        scores = rec.score(rec.users[u], list(rec.items))
        others = [j for j in range(len(rec.items)) if j != i and (u, j) not in known]
        ranks.append(sum(scores[j] >= scores[i] for j in others))
    assert got["full_HR@10"] == pytest.approx(sum(r < 10 for r in ranks) / len(ranks), abs=1e-6)
    rc, out, _ = run_main(capsys, ["evaluate", run.path, "--data", tmp_path / "new.csv"])
    assert "40 of 43 rows evaluated; skipped: 1 of users the model does not know, 1 of items it does not know" in out
    rated = "user,item,rating\n" + "\n".join(f"{r},{5 if n % 2 else 1}" for n, r in enumerate(rows[:40])) + "\n"
    (tmp_path / "rated.csv").write_text(rated)
    config = json.loads((run.path / "config.json").read_text())
    rec.config.data.min_rating = 4  # as a run trained with --min-rating 4: rows rated 1 are no positives
    from scalerec.recommend import evaluate_file

    got = evaluate_file(rec, tmp_path / "rated.csv", {})
    assert (got["evaluated"], got["below_min_rating"]) == (20, 20) and config["data"]["min_rating"] is None
    rc, _, err = run_main(capsys, ["evaluate", run.path, "--data", tmp_path / "new.csv", "--protocol", "both"])
    assert_one_line_error(rc, err, "--data: new rows are ranked among every item (--protocol full)")
