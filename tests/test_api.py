"""The Python API: docs/api.md's example run as written, and each function against the command line's results."""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import scalerec
import scalerec.training
from scalerec.errors import OptionError, UserError
from tests.helpers import SYNTHETIC, interrupt_in_epoch, run_main, tiny

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
TINY = dict(
    dataset="synthetic", synthetic_users=200, synthetic_items=100, synthetic_interactions=10, epochs=2,
    batch_size=256, layers=[16, 16, 8], factors=8, eval_negatives=20, device="cpu",
)  # fmt: skip


@pytest.mark.slow
def test_the_api_example_runs_as_written_and_leaves_the_process_as_it_was(tmp_path, monkeypatch):
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))
    assert "scalerec.train(" in code and "scalerec.load(" in code and "scalerec.evaluate(" in code

    def no_malloc_change():
        raise AssertionError("the API changed malloc's settings without being asked")

    monkeypatch.setattr(scalerec.training, "keep_large_blocks_in_heap", no_malloc_change)
    torch.set_num_threads(1)
    rng = torch.get_rng_state()
    names: dict = {}
    exec(compile(code, str(DOC), "exec"), names)
    assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), rng)

    run, top = names["run"], names["top"]
    assert run.path.parent == Path("runs") and len(run.metrics) == 5 and run.summary["state"] == "finished"
    best = max(run.metrics, key=lambda r: r["sampled_HR@10"])
    assert run.best_epoch == best["epoch"]
    assert run.summary["best"]["sampled_HR@10"] > 0.5  # the groups are learnt (random ranking: about 0.1)
    clicked = {(r["user"], r["item"]) for r in csv.DictReader(open(tmp_path / "clicks.csv"))}
    assert list(top.columns) == ["user", "rank", "item", "score"]
    assert top["user"].tolist() == ["user-1"] * 5 + ["user-2"] * 5 and top["rank"].tolist() == [1, 2, 3, 4, 5] * 2
    assert not {(u, i) for u, i in zip(top["user"], top["item"])} & clicked
    for _, user in top.groupby("user"):
        assert (np.diff(user["score"].to_numpy()) <= 0).all()


@pytest.fixture
def trained(tmp_path):
    return scalerec.train(**TINY, output=str(tmp_path / "run"), log=None)


def test_recommend_is_the_command_lines_recommendations(capsys, tmp_path, trained):
    rc, out, err = run_main(capsys, ["recommend", trained.path, "--users", "3", "7", "--k", "4"])
    assert rc == 0, err
    cli = list(csv.DictReader(io.StringIO(out)))
    api = scalerec.load(trained, epoch="last").recommend([3, "7"], k=4)
    assert len(api) == len(cli) == 8
    for a, c in zip(api.itertuples(), cli):
        assert (str(a.user), str(a.rank), str(a.item)) == (c["user"], c["rank"], c["item"])
        assert float(a.score) == pytest.approx(float(c["score"]), rel=1e-5)
    seen = scalerec.load(trained, epoch="last").recommend([3], k=100, exclude_seen=False)
    assert len(seen) == 100  # every item, the user's own among them


def test_scores_are_the_recommendations_scores_and_one_side_may_be_one_id(trained):
    rec = scalerec.load(trained, epoch="last")
    top = rec.recommend(["5"], k=3)
    got = rec.score("5", top["item"].tolist())
    assert got.shape == (3,) and np.allclose(got, top["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(rec.score(["5", "5"], [top["item"][0], top["item"][1]]), got[:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="unknown item id nope"):
        rec.score("5", ["nope"])
    with pytest.raises(UserError, match="2 users and 3 items"):
        rec.score(["5", "6"], top["item"].tolist())
    with pytest.raises(UserError, match="unknown user id"):
        rec.recommend(["no-such-user"])


def test_evaluate_gives_the_metrics_the_run_logged_for_its_weights(trained):
    last = trained.metrics[-1]
    sampled = scalerec.evaluate(trained.path, epoch="last")
    assert sampled == {k: v for k, v in last.items() if "sampled_" in k}  # the test's, and validation's
    both = scalerec.evaluate(trained, protocol="both", epoch="last")
    names = {"sampled_HR@10", "sampled_NDCG@10", "full_HR@10", "full_NDCG@10", "full_Recall@10"}
    assert set(both) == names | {f"valid_{name}" for name in names}
    for split in ("", "valid_"):  # every sampled negative is among the full candidates
        assert both[f"{split}full_HR@10"] <= both[f"{split}sampled_HR@10"]
    with pytest.raises(UserError, match="protocol must be one of"):
        scalerec.evaluate(trained, protocol="all")


def test_best_loads_the_last_epochs_weights_and_warns_where_the_best_was_another(trained):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = scalerec.load(trained)
    assert rec.epoch == trained.metrics[-1]["epoch"]
    assert len(caught) == (trained.best_epoch != rec.epoch)
    with pytest.raises(UserError, match="epoch must be 'best' or 'last'"):
        scalerec.load(trained, epoch=0)


def test_options_come_from_a_dict_a_file_or_a_config_and_bad_ones_are_one_line(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nepochs = 3\nbatch_size = 512\n")
    assert scalerec.api.config_of(tmp_path / "c.toml", epochs=1).train.epochs == 1
    assert scalerec.api.config_of(str(tmp_path / "c.toml")).train.batch_size == 512
    assert scalerec.api.config_of({"optim": {"lr": 0.01}}, factors=4).optim.lr == 0.01
    cfg = scalerec.api.config_of({"lr": 0.01, "layers": [8, 4]})
    assert cfg.model.layers == (8, 4) and scalerec.api.config_of(cfg, epochs=7).optim.lr == 0.01
    with pytest.raises(OptionError, match="unknown option 'epoch'"):
        scalerec.train(epoch=3)
    with pytest.raises(OptionError, match="option 'epochs' is 'three', expected an integer"):
        scalerec.train(epochs="three")
    with pytest.raises(OptionError, match="invalid value for optimizer: 'adamw'"):
        scalerec.train(optimizer="adamw")


def test_a_run_trained_by_the_command_line_opens_as_a_run(capsys, tmp_path):
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=2)])[0] == 0
    run = scalerec.Run.open(tmp_path / "run")
    assert [r["epoch"] for r in run.metrics] == [0, 1] and run.config.train.epochs == 2
    assert run.best_epoch == run.summary["best"]["epoch"] and run.load("last").epoch == 1
    with pytest.raises(UserError, match="not a run folder"):
        scalerec.Run.open(tmp_path)


def test_import_scalerec_does_not_load_torch_and_lists_its_api():
    import subprocess
    import sys

    code = "import sys, scalerec; print('torch' in sys.modules, sorted(n for n in dir(scalerec) if n[0] != '_'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[0] == "False"
    assert all(name in out for name in ("'train'", "'load'", "'evaluate'", "'Run'", "'Recommender'"))


def test_the_evaluate_command_prints_the_apis_metrics_as_json(capsys, trained):
    import json

    rc, out, err = run_main(capsys, ["evaluate", trained.path, "--protocol", "both", "--threads", "1", "--json"])
    assert rc == 0, err
    printed = json.loads(out)
    assert printed.pop("epoch") == trained.best_epoch and printed.pop("model") == "best"
    assert printed == pytest.approx(scalerec.evaluate(trained, protocol="both"))
    rc, out, err = run_main(capsys, ["evaluate", trained.path, "--epoch", "last", "--threads", "1"])
    assert rc == 0 and out.startswith(f"{trained.path}: epoch {len(trained.metrics) - 1}'s model, the last: ")
    assert f"sampled_HR@10 = {trained.metrics[-1]['sampled_HR@10']:.4f}" in out
    rc, _, err = run_main(capsys, ["evaluate", trained.path.parent])
    assert rc == 1 and "a sweep folder; give one of its runs (run)" in err and "Traceback" not in err


def test_the_example_runs_twice_in_one_process(tmp_path):
    """As a notebook's cell run again: each call a new run folder."""
    options = {**TINY, "epochs": 1}
    first = scalerec.train(**options, log=None)
    second = scalerec.train(**options, log=None)
    assert first.path != second.path and first.metrics[0]["loss"] == second.metrics[0]["loss"]
    with pytest.raises(UserError, match="holds an earlier run's results; choose another folder"):
        scalerec.train(**options, output=str(first.path), log=None)


def test_a_stopped_run_resumes_from_python_to_the_metrics_of_an_unbroken_one(tmp_path, monkeypatch):
    options = {**TINY, "epochs": 3, "threads": 1}
    unbroken = scalerec.train(**options, output=str(tmp_path / "unbroken"), log=None)
    interrupt_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        scalerec.train(**options, output=str(tmp_path / "stopped"), log=None)
    monkeypatch.undo()
    with pytest.raises(OptionError, match="own options; not with epochs"):
        scalerec.train(resume=tmp_path / "stopped", epochs=4)
    resumed = scalerec.train(resume=scalerec.Run.open(tmp_path / "stopped"), threads=1, log=None)
    timing = ("train_s", "eval_s", "samples_per_s", "peak_memory_mb")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.metrics] == [
        {k: v for k, v in r.items() if k not in timing} for r in unbroken.metrics
    ]


def test_ids_of_any_kind_a_scalar_topk_and_bad_devices(trained):
    rec = scalerec.load(trained, epoch="last")
    assert rec.recommend(np.int64(3), k=2)["user"].tolist() == [3, 3]  # a numpy id, as pandas hands them out
    assert scalerec.api.config_of(topk=5).eval.topk == (5,)
    for device in ("gpu", "cuda:x", "meta"):
        with pytest.raises(UserError, match="expected cpu, cuda, cuda:N or auto"):
            scalerec.load(trained, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            scalerec.load(trained, device="cuda:0")


def test_a_bad_protocol_is_said_before_anything_is_loaded(trained, monkeypatch):
    import scalerec.api

    monkeypatch.setattr(scalerec.api, "_load", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(UserError, match="protocol must be one of"):
        scalerec.evaluate(trained, protocol="all")


def test_every_public_name_stays_callable_once_every_module_is_imported():
    """A submodule of the same name (scalerec.report, scalerec.find_batch) would replace a function on import."""
    import importlib
    import pkgutil

    import scalerec

    for module in pkgutil.walk_packages(scalerec.__path__, "scalerec."):
        importlib.import_module(module.name)
    assert [name for name in scalerec.__all__ if name != "__version__" and not callable(getattr(scalerec, name))] == []
