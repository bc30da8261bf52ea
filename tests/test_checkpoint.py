"""Checkpoints, `train --resume` and `recommend`, on tiny data in tmp_path (one thread, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

import scalerec.epoch as epoch_module
from scalerec.metrics import seen_index
from scalerec.model import NeuMF
from scalerec.recommend import top_k
from tests.helpers import SYNTHETIC, assert_one_line_error, interrupt_in_epoch, rows, run_main, tiny, write_udata

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path


TRAIN_EPOCH = epoch_module.train_epoch


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [[], ["--optimizer", "lars", "--warmup", "linear", "--warmup-epochs", "1", "--decay", "cosine", "--lr", "0.5"]],
    ids=["adam", "lars-warmup-cosine"],
)
def test_a_resumed_run_ends_as_a_run_never_stopped(capsys, tmp_path, monkeypatch, options):
    args = [*SYNTHETIC, "--dropout", "0.2", *options]  # dropout: torch's random stream must resume too
    assert run_main(capsys, ["train", *args, *tiny(tmp_path / "whole", epochs=3)])[0] == 0
    interrupt_in_epoch(monkeypatch, 2)
    rc, _, err = run_main(capsys, ["train", *args, *tiny(tmp_path / "part", epochs=3)])
    assert rc == 130 and len(rows(tmp_path / "part")) == 2
    monkeypatch.setattr(epoch_module, "train_epoch", TRAIN_EPOCH)  # the isolated folders stay
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "part", "--threads", "1"])
    assert rc == 0, err
    assert "Resuming" in out and "at epoch 2 of 3" in out and "Epoch 0:" not in out
    assert rows(tmp_path / "part") == rows(tmp_path / "whole")
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["epochs"] == 3


@pytest.mark.slow
def test_resume_refuses_other_options_a_finished_run_and_a_missing_or_broken_checkpoint(capsys, tmp_path):
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])[0] == 0
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run", "--epochs", "3"])
    assert rc == 2 and "not with --epochs" in err
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "its epoch is done" in err
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run", "--cpu-matmul", "blas"])
    assert rc == 1 and "its epoch is done" in err  # speed, not the run: taken, as --threads is
    (tmp_path / "run" / "config.json").write_text(
        json.dumps({**json.loads((tmp_path / "run" / "config.json").read_text()), "train": {"epochs": 2}})
    )
    ckpt = tmp_path / "run" / "checkpoint.pt"
    good = ckpt.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # one bit inside the tensors: torch.load alone would read it as a weight
    ckpt.write_bytes(bytes(flipped))
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "damaged" in err and "CRC32" in err and "Traceback" not in err
    ckpt.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "not a readable scalerec checkpoint" in err and "Traceback" not in err
    ckpt.write_bytes(b"not a checkpoint")
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "not a readable scalerec checkpoint" in err and "Traceback" not in err
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "none", epochs=1), "--no-checkpoint"])[0] == 0
    assert not (tmp_path / "none" / "checkpoint.pt").exists()
    assert run_main(capsys, ["recommend", tmp_path / "none"])[0] == 0  # its best.pt
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "none", "--epoch", "last"])
    assert rc == 1 and "no checkpoint.pt (trained with --no-checkpoint)" in err
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "nowhere"])
    assert rc == 1 and "not a folder (expected a run folder)" in err


def test_top_k_is_the_best_unseen_items_best_first():
    torch.manual_seed(0)
    model = NeuMF(5, 12, factors=4, layers=(8, 8, 4)).eval()
    users, items = torch.tensor([0, 0, 1, 3]), torch.tensor([2, 7, 2, 11])
    seen = seen_index(users, items, 5)
    got, scores = top_k(model, torch.arange(5), 12, 4, seen, scores_per_batch=24)  # two users per batch
    with torch.no_grad():
        grid = model(torch.arange(5).repeat_interleave(12), torch.arange(12).repeat(5)).reshape(5, 12)
    grid[users, items] = float("-inf")
    expected = grid.argsort(dim=1, descending=True, stable=True)[:, :4]
    assert torch.equal(got, expected)
    torch.testing.assert_close(scores, grid.gather(1, expected))
    assert not any(i in got[0].tolist() for i in (2, 7)) and 11 not in got[3].tolist()
    few, _ = top_k(model, torch.tensor([0]), 12, 11, seen)  # 10 unseen items: the 11th slot is empty
    assert few[0, -1] == -1 and (few[0, :-1] >= 0).all()


@pytest.mark.slow
def test_recommend_names_users_and_items_by_the_files_ids(capsys, tmp_path):
    data = write_udata(tmp_path / "u.data", n_users=30, n_items=40, per_user=6)
    lines = [line.split("\t") for line in data.read_text().splitlines()]
    raw = "".join(f"{int(u) + 1000}\t{int(i) + 500}\t{r}\t{t}\n" for u, i, r, t in lines)  # ids far from 0..n
    data.write_text(raw)
    run = tmp_path / "run"
    args = ["train", "--data", data, *tiny(run, epochs=1)]
    args[args.index("--eval-negatives") + 1] = "10"
    assert run_main(capsys, args)[0] == 0
    rc, out, err = run_main(capsys, ["recommend", run, "--users", "1001", "1007", "--k", "3"])
    assert rc == 0, err
    header, *body = out.splitlines()
    assert header == "user,rank,item,score" and len(body) == 6
    assert [r.split(",")[:2] for r in body] == [[u, str(k)] for u in ("1001", "1007") for k in (1, 2, 3)]
    seen = {(u, i) for u, i, _, _ in (line.split("\t") for line in raw.splitlines())}
    for r in body:
        user, _, item, _ = r.split(",")
        assert 500 <= int(item) < 540 and (user, item) not in seen  # the file's ids; never an item already seen
    scores = [float(r.split(",")[3]) for r in body[:3]]
    assert scores == sorted(scores, reverse=True)
    rc, _, err = run_main(capsys, ["recommend", run, "--users", "7"])
    assert rc == 1 and "unknown user id(s) 7" in err
    rc, out, _ = run_main(capsys, ["recommend", run, "--k", "2", "--output", tmp_path / "all.csv"])
    assert rc == 0 and "Top 2 items of 30 users" in out
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 1 + 30 * 2
    rc, out, _ = run_main(capsys, ["recommend", run, "--users", "1001", "--k", "40", "--include-seen"])
    assert len(out.splitlines()) == 1 + 40  # every item, the seen ones included


def test_resume_and_recommend_refuse_changed_data_and_work_from_another_folder(capsys, tmp_path, monkeypatch):
    data = write_udata(tmp_path / "u.data", n_users=30, n_items=40, per_user=6)
    interrupt_in_epoch(monkeypatch, 1)
    args = ["train", "--data", "u.data", *tiny(tmp_path / "run", epochs=2)]  # a relative path (cwd: tmp_path)
    args[args.index("--eval-negatives") + 1] = "10"
    assert run_main(capsys, args)[0] == 130
    monkeypatch.setattr(epoch_module, "train_epoch", TRAIN_EPOCH)  # the isolated folders stay
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run's relative --data still names tmp_path/u.data
    rc, before, _ = run_main(capsys, ["recommend", tmp_path / "run", "--users", "1", "1", "--k", "2"])
    assert rc == 0 and before.count("\n1,") == 2
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-1]) + "\n")  # one row less: another split
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "is not what the run trained on" in err, err
    # the run's model recommends from its own data.npz, whatever became of the file
    assert run_main(capsys, ["recommend", tmp_path / "run", "--users", "1", "1", "--k", "2"])[1] == before
    (tmp_path / "run" / "data.npz").unlink()  # as a run made before scalerec kept it: the data read again
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "run", "--epoch", "last"])
    assert_one_line_error(rc, err, f"{tmp_path / 'run' / 'checkpoint.pt'}: not trained on this run's data")


@pytest.mark.slow
def test_a_diverged_run_is_not_resumed_and_a_run_stopped_before_its_first_epoch_ends_can_start_again(
    capsys, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(run, epochs=2), "--no-checkpoint"])[0] == 0
    (run / "summary.json").write_text(json.dumps({"state": "diverged"}))
    torch.save({"version": 1, "history": [{}], "best": {}}, run / "checkpoint.pt")
    rc, _, err = run_main(capsys, ["train", "--resume", run])
    assert rc == 3 and "diverged; resuming would replay the same steps" in err
    (run / "checkpoint.pt").unlink()  # diverged in its first epoch: no checkpoint, and the message says why
    rc, _, err = run_main(capsys, ["train", "--resume", run])
    assert rc == 3 and "diverged; resuming would replay the same steps" in err
    interrupt_in_epoch(monkeypatch, 0)
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "early", epochs=1)])[0] == 130
    assert (tmp_path / "early" / "metrics.jsonl").read_text() == ""  # no epoch ended: the folder can be reused
    monkeypatch.setattr(epoch_module, "train_epoch", TRAIN_EPOCH)  # the isolated folders stay
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "early", epochs=1)])[0] == 0


def test_recommend_output_and_folder_errors(capsys, tmp_path):
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "s" / "1-a", epochs=1)])[0] == 0
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "s" / "1-a", "--output", tmp_path / "no" / "x.csv"])
    assert rc == 1 and "does not exist" in err and ".tmp" not in err
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "s" / "1-a", "--output", tmp_path])
    assert rc == 1 and "is a folder" in err
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "s"])
    assert rc == 1 and "a sweep folder; give one of its runs (1-a)" in err


def _as_if_drawn_on_a_gpu(run, recorded: bool) -> None:
    """Give the run's checkpoint the sampler state a CUDA generator has (16 bytes; the CPU's holds 5,056), with
    the device recorded, or without it as a checkpoint written before it was."""
    from scalerec import checkpoint

    saved = checkpoint.load(run)
    saved["random"]["sampler"] = torch.arange(16, dtype=torch.uint8)
    saved["random"].pop("sampler_device", None)
    if recorded:
        saved["random"]["sampler_device"] = "cuda"
    saved.pop("version")
    checkpoint.save(run, saved)


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "older-checkpoint"])
def test_a_run_from_another_kind_of_device_resumes_with_a_reseeded_sampler(capsys, tmp_path, monkeypatch, recorded):
    interrupt_in_epoch(monkeypatch, 1)
    rc, _, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "gpu-run", epochs=2)])
    assert rc == 130 and len(rows(tmp_path / "gpu-run")) == 1
    monkeypatch.setattr(epoch_module, "train_epoch", TRAIN_EPOCH)
    _as_if_drawn_on_a_gpu(tmp_path / "gpu-run", recorded)
    import shutil

    shutil.copytree(tmp_path / "gpu-run", tmp_path / "again")
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "gpu-run", "--device", "cpu"])
    assert rc == 0, err
    assert "reseeded from (seed 0, epoch 1)" in out and "Resuming" in out
    assert json.loads((tmp_path / "gpu-run" / "summary.json").read_text())["state"] == "finished"
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "again", "--device", "cpu"])
    assert rc == 0, err
    assert rows(tmp_path / "again") == rows(tmp_path / "gpu-run")  # the reseed is a function of (seed, epoch)


@pytest.mark.parametrize("fused_first", [False, True], ids=["rowwise-to-fused", "fused-to-rowwise"])
def test_an_optimizer_state_from_the_other_device_kind_loads_with_this_ones_settings(fused_first):
    from scalerec.checkpoint import load_optimizer
    from scalerec.model import build_model
    from scalerec.optim.rowwise import RowwiseAdam

    def built(fused: bool):
        torch.manual_seed(0)
        model = build_model("neumf", 20, 30, 8, [16, 8], 0.0, not fused)  # sparse tables for row-wise Adam
        make = (lambda p: torch.optim.Adam(p, lr=0.01, fused=True)) if fused else (lambda p: RowwiseAdam(p, lr=0.01))
        return model, make(model.parameters())

    def one_step(model, optimizer) -> None:
        users, items = torch.arange(10), torch.arange(10) * 2
        optimizer.zero_grad()
        model(users, items).sum().backward()
        optimizer.step()

    model, optimizer = built(fused_first)
    one_step(model, optimizer)
    other, theirs = built(not fused_first)
    other.load_state_dict(model.state_dict())
    load_optimizer(theirs, optimizer.state_dict())
    assert theirs.param_groups[0].get("fused") is (True if not fused_first else None)
    step = theirs.state[next(other.parameters())]["step"]
    assert (torch.is_tensor(step) and float(step) == 1.0) if not fused_first else step == 1
    one_step(other, theirs)  # the loaded state steps, as the optimizer's own kind
    step = theirs.state[next(other.parameters())]["step"]
    assert float(step) == 2.0
