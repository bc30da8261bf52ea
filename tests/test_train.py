import json

import numpy as np
import pytest
import torch

from scalerec.assembly import build_run_model
from scalerec.config import Config
from scalerec.data.loading import load_dataset
from scalerec.errors import OptionError
from scalerec.metrics import metrics_from_ranks, ranks
from scalerec.training import train
from tests.helpers import tiny_config


class Popularity(torch.nn.Module):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def encode_users(self, users):
        return (users,)

    def encode_items(self, items):
        return (self.counts[items],)

    def interact(self, u, i):
        return i[0].expand(u[0].shape[0], -1) if i[0].dim() == 2 else i[0]


@pytest.mark.slow
def test_training_beats_chance_and_popularity_by_a_wide_margin(tmp_path):
    cfg = tiny_config(tmp_path)
    summary = train(cfg, log=lambda s: None)
    hr = summary["best"]["sampled_HR@10"]
    ds = load_dataset(cfg.data, log=lambda s: None)
    counts = torch.as_tensor(np.bincount(ds.train_items, minlength=ds.n_items), dtype=torch.float32)
    pop = metrics_from_ranks(
        ranks(
            Popularity(counts),
            torch.as_tensor(ds.test_users),
            torch.as_tensor(ds.test_items),
            torch.as_tensor(ds.eval_negatives),
            ds.n_items,
        ),
        (10,),
    )["HR@10"]
    chance = 10 / 101
    assert hr > 4 * chance
    assert hr > pop + 0.1


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    a = train(tiny_config(tmp_path / "a", epochs=2), log=lambda s: None)
    b = train(tiny_config(tmp_path / "b", epochs=2), log=lambda s: None)
    c = train(tiny_config(tmp_path / "c", epochs=2, seed=1), log=lambda s: None)

    def rows(s):
        lines = (tmp_path / s / "run" / "metrics.jsonl").read_text().splitlines()
        measured = ("_s", "peak_memory_mb")  # times and the process's resident peak vary from run to run
        return [{k: v for k, v in json.loads(x).items() if not k.endswith(measured)} for x in lines]

    assert rows("a") == rows("b")
    assert rows("a") != rows("c")
    assert a["best"] == b["best"]
    assert c["epochs"] == 2


def test_logged_loss_is_the_epoch_mean_and_lines_match_the_notebook(tmp_path, monkeypatch):
    import scalerec.epoch as epoch_module

    seen = []
    real_step = epoch_module.train_step

    def recording_step(model, optimizer, scaler, ctx, users, items, labels, **kwargs):
        loss, skipped = real_step(model, optimizer, scaler, ctx, users, items, labels, **kwargs)
        seen.append((loss.item(), len(users)))
        return loss, skipped

    monkeypatch.setattr(epoch_module, "train_step", recording_step)
    lines = []
    train(tiny_config(tmp_path, epochs=1, batch_size=1000), log=lines.append)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert len(seen) > 2 and seen[-1][1] < 1000  # a short last batch, weighted by its size
    mean = sum(loss * n for loss, n in seen) / sum(n for _, n in seen)
    assert abs(row["loss"] - mean) < 1e-5
    assert abs(row["loss"] - seen[-1][0]) > 1e-4  # not the last batch's loss
    assert any(x.startswith("Data: Synthetic") and "#user=400" in x for x in lines)
    epoch = next(x for x in lines if x.startswith("Epoch 0: "))
    for part in ("sampled_HR@10 = ", "sampled_NDCG@10 = ", "loss = ", "train_time = ", "val_time = ", "throughput = "):
        assert part in epoch
    assert "valid_sampled_HR@10 = " in epoch and "New best valid_sampled_HR@10!" in lines


def test_output_that_is_a_file_or_an_earlier_run_is_refused_before_any_work(tmp_path):
    import pytest

    from scalerec.errors import UserError

    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg, log=lambda s: None)
    with pytest.raises(UserError, match="holds an earlier run's results"):
        train(cfg, log=lambda s: None)
    (tmp_path / "file").write_text("x")
    cfg.train.output = str(tmp_path / "file")
    with pytest.raises(UserError, match="exists and is not a folder"):
        train(cfg, log=lambda s: None)


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_diverged_not_a_crash(tmp_path):
    import scalerec.epoch as epoch_module
    from scalerec.cli import main

    steps = []
    real_step = epoch_module.train_step

    def counting_step(*args, **kwargs):
        steps.append(1)
        return real_step(*args, **kwargs)

    cfg = tiny_config(tmp_path, batch_size=8)  # about 700 steps per epoch
    cfg.optim.optimizer, cfg.optim.lr = "sgd", 1e9
    lines = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(epoch_module, "train_step", counting_step)
        summary = train(cfg, log=lines.append)
    assert summary["state"] == "diverged" and summary["epochs"] == 0
    assert len(steps) == epoch_module.DIVERGENCE_CHECK < summary["steps_per_epoch"]  # stopped at the first check
    message = next(x for x in lines if x.startswith("Diverged:"))
    assert "epoch 0, step" in message and "lr 1e+09" in message
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["state"] == "diverged"
    args = [
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "100",
        "--synthetic-items",
        "300",
        "--epochs",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "1e9",
        "--output",
        str(tmp_path / "cli"),
        "--data-dir",
        str(tmp_path / "d"),
    ]
    assert main(args) == 3


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_large_batch_recipe_scales_the_lr_and_warms_up(tmp_path, optimizer):
    cfg = tiny_config(tmp_path, epochs=2, batch_size=2048)
    cfg.optim.optimizer, cfg.optim.lr_scaling, cfg.optim.base_lr, cfg.optim.base_batch = optimizer, "linear", 0.01, 256
    cfg.optim.warmup, cfg.optim.warmup_epochs = "exponential", 0.5
    lines = []
    summary = train(cfg, log=lines.append)
    assert summary["lr"] == pytest.approx(0.08)  # 0.01 * 2048 / 256
    assert any("lr = 0.08 (linear rule: 0.01 at batch 256)" in x for x in lines)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.08, 0.08])  # warmed up by the end of epoch 0
    assert summary["state"] == "finished" and rows[1]["loss"] < rows[0]["loss"]


def test_warmup_and_decay_follow_the_schedule_step_by_step(tmp_path, monkeypatch):
    import scalerec.epoch as epoch_module
    from scalerec.optim import lr_factor

    seen = []
    real_step = epoch_module.train_step

    def recording_step(model, optimizer, scaler, ctx, users, items, labels, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, scaler, ctx, users, items, labels, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", recording_step)
    cfg = tiny_config(tmp_path, epochs=2, batch_size=1000)
    cfg.optim.warmup, cfg.optim.warmup_epochs, cfg.optim.decay = "linear", 0.5, "cosine"
    train(cfg, log=lambda s: None)
    steps = len(seen) // 2
    expected = [0.005 * lr_factor(s, 0.5 * steps, 2 * steps, "linear", "cosine") for s in range(2 * steps)]
    assert seen == pytest.approx(expected)
    assert seen[0] < seen[steps // 2] and seen[-1] < 0.1 * max(seen)


@pytest.mark.parametrize("route", ["encoded-once", "accumulated"])  # the CPU's slices, and the GPU's (on the CPU)
@pytest.mark.parametrize("name", ["neumf", "mf"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lars", "lamb"])
def test_micro_batches_take_the_same_step_as_the_whole_batch(optimizer, name, route, monkeypatch):
    import contextlib

    import scalerec.epoch
    from scalerec.epoch import train_step
    from scalerec.model import build_model
    from scalerec.optim import build_optimizer

    if route == "accumulated":
        monkeypatch.setattr(scalerec.epoch, "encoded_once", scalerec.epoch.accumulated)

    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, 9, (50,), generator=g), torch.randint(0, 11, (50,), generator=g)
    labels = (torch.rand(50, generator=g) < 0.3).float()
    results = []
    for micro in (None, 7, 16, 50, 1000):  # 7 and 16 slice; 50 and 1000 take the whole batch
        torch.manual_seed(0)
        model = build_model(name, 9, 11, 4, (8, 8, 4), 0.0, sparse=optimizer == "adam")
        opt, _ = build_optimizer(optimizer, model, lr=0.05)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        for _ in range(2):
            loss, _ = train_step(model, opt, scaler, contextlib.nullcontext(), users, items, labels, micro_batch=micro)
        results.append((loss, [p.detach().clone() for p in model.parameters()]))
    (loss0, params0), *others = results
    torch.manual_seed(0)
    untrained = build_model(name, 9, 11, 4, (8, 8, 4), 0.0)
    assert any(not torch.equal(a, b) for a, b in zip(params0, untrained.parameters()))  # it did train
    for loss, params in others:
        assert torch.allclose(loss, loss0, atol=1e-6)
        for a, b in zip(params0, params):
            assert torch.allclose(a, b, atol=1e-5)


def test_adam_updates_rows_once_the_tables_are_large(tmp_path, monkeypatch):
    import scalerec.assembly

    def sparse(cfg):
        model = build_run_model(cfg, 50, 60, torch.device("cpu"))
        flags = {m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        assert len(flags) == 1
        return flags.pop()

    cfg = tiny_config(tmp_path, batch_size=32)  # 110 rows x (16 + 16) = 3,520 table parameters: 110 per sample
    monkeypatch.setattr(scalerec.assembly, "SPARSE_FROM_PARAMS_PER_SAMPLE", 110)
    assert sparse(cfg)
    cfg.train.batch_size = 33
    assert not sparse(cfg)
    cfg.optim.sparse_embeddings = True
    assert sparse(cfg)
    with pytest.raises(OptionError, match="--sparse-embeddings: for the CPU"):  # refused before any GPU is touched
        build_run_model(cfg, 50, 60, torch.device("cuda"))
    monkeypatch.setattr(scalerec.assembly, "SPARSE_FROM_PARAMS_PER_SAMPLE", 1)
    cfg.optim.sparse_embeddings = False
    assert not sparse(cfg)
    cfg.optim.sparse_embeddings, cfg.optim.optimizer = None, "sgd"
    assert not sparse(cfg)


def test_micro_batches_by_default_only_for_large_cpu_batches(tmp_path):
    from scalerec.assembly import CPU_MICRO_BATCH, micro_batch_for

    cfg = tiny_config(tmp_path)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert micro_batch_for(cfg, cpu, CPU_MICRO_BATCH) is None
    assert micro_batch_for(cfg, cpu, CPU_MICRO_BATCH + 1) == CPU_MICRO_BATCH
    assert micro_batch_for(cfg, cpu, None) == CPU_MICRO_BATCH  # --batch-size max: not known yet
    assert micro_batch_for(cfg, cuda, 10**6) is None
    cfg.train.micro_batch = 100
    assert micro_batch_for(cfg, cuda, 10**6) == 100 and micro_batch_for(cfg, cpu, 50) == 100


def test_eval_both_logs_each_protocol_and_picks_the_best_epoch_by_full_ranking(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3)
    cfg.eval.eval = "both"
    lines = []
    summary = train(cfg, log=lines.append)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert {"sampled_HR@10", "sampled_NDCG@10", "full_HR@10", "full_NDCG@10", "full_Recall@10"} <= set(r)
        assert not any(key.startswith(("HR@", "NDCG@")) for key in r)  # every metric names its protocol
        assert r["full_Recall@10"] == r["full_HR@10"]
        # the sampled negatives are a subset of the full ranking's candidates: a rank can only grow
        assert r["full_HR@10"] <= r["sampled_HR@10"] and r["full_NDCG@10"] <= r["sampled_NDCG@10"]
    assert rows[-1]["full_HR@10"] > 0.05  # 200 items: chance is 0.05
    full = [r["valid_full_HR@10"] for r in rows]  # chosen on the validation items' full ranking
    assert summary["best"]["epoch"] == full.index(max(full))
    assert any("full_HR@10 = " in line and "sampled_HR@10 = " in line for line in lines)
    assert "New best valid_full_HR@10!" in lines


def test_eval_full_alone_runs_no_sampled_evaluation(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.eval.eval = "full"
    summary = train(cfg, log=lambda s: None)
    assert "full_HR@10" in summary["best"] and not any(k.startswith("sampled_") for k in summary["best"])


def test_sparse_tables_only_on_the_cpu():
    # ML-20M's shape at batch 4096: rows on the CPU; any other device (meta stands in for a GPU here) dense
    cfg = Config()
    cfg.optim.optimizer, cfg.train.batch_size = "adam", 4096
    for device, sparse in ((torch.device("cpu"), True), (torch.device("meta"), False)):
        model = build_run_model(cfg, 138_493, 26_744, device)
        assert any(getattr(m, "sparse", False) for m in model.modules()) == sparse, device


def test_cpu_matmul_picks_the_products_backend(monkeypatch):
    import scalerec.kernels as model_module
    from scalerec.errors import UserError
    from scalerec.kernels import onednn_pays

    cfg = Config()
    built = lambda: build_run_model(cfg, 50, 60, torch.device("cpu"))  # noqa: E731
    assert built().onednn == onednn_pays()  # auto: oneDNN where the CPU has AVX-512
    cfg.train.cpu_matmul = "blas"
    assert built().onednn is False
    cfg.train.cpu_matmul = "onednn"
    monkeypatch.setattr(model_module, "onednn_available", lambda: True)
    assert built().onednn is True
    assert build_run_model(cfg, 50, 60, torch.device("meta")).onednn == onednn_pays()  # not on the CPU: untouched
    monkeypatch.setattr(model_module, "onednn_available", lambda: False)
    with pytest.raises(UserError, match="--cpu-matmul onednn: this PyTorch has no oneDNN"):
        built()
    cfg.model.model = "mf"  # no matrix products to place
    assert not hasattr(built(), "onednn")


def test_tensorboard_logs_equal_the_metrics_file(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install 'scalerec[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, epochs=2, tensorboard=True)
    cfg.optim.warmup, cfg.optim.warmup_epochs = "linear", 1.0  # an lr that changes every step
    summary = train(cfg, log=lambda s: None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for name in [k for k in rows[0] if "@" in k]:
        logged = [(e.step, e.value) for e in events.Scalars(f"metrics/{name}")]
        assert logged == [(r["epoch"], pytest.approx(r[name], rel=1e-6)) for r in rows]
    for tag, field in (("loss/epoch", "loss"), ("throughput/samples_per_s", "samples_per_s")):
        assert [e.value for e in events.Scalars(tag)] == [pytest.approx(r[field], rel=1e-6) for r in rows]
    steps, batch = summary["steps_per_epoch"], summary["batch_size"]
    samples = round(summary["mean_samples_per_s"] * summary["train_s"] / 2)  # an epoch's
    sizes = [batch] * (steps - 1) + [samples - batch * (steps - 1)]  # the last step may be short
    losses = events.Scalars("loss/step")
    assert [e.step for e in losses] == list(range(2 * steps))  # every step of both epochs
    for epoch, row in enumerate(rows):  # the steps' means, weighted by their sizes: the epoch's loss
        values = [e.value for e in losses[epoch * steps : (epoch + 1) * steps]]
        assert sum(v * n for v, n in zip(values, sizes)) / samples == pytest.approx(row["loss"], rel=1e-5)
    lrs = {e.step: e.value for e in events.Scalars("lr/step")}
    assert all(lrs[s] == pytest.approx(lr, rel=1e-6) for s, lr in summary["lr_schedule"])  # the warmup, each step


def test_tensorboard_without_its_package_is_one_line_before_the_run(tmp_path, capsys, monkeypatch):
    from tests.helpers import SYNTHETIC, assert_one_line_error, run_main, tiny

    monkeypatch.setattr("scalerec.board.importlib.util.find_spec", lambda name: None)
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run"), "--tensorboard"])
    assert_one_line_error(rc, err, "--tensorboard needs the tensorboard package: pip install 'scalerec[tensorboard]'")
    assert not (tmp_path / "run").exists()


def test_a_batch_schedule_grows_the_batch_at_epoch_boundaries_with_each_phases_lr(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, batch_schedule="0:128,1:512", micro_batch=200)
    cfg.optim.lr_scaling, cfg.optim.base_lr = "linear", 0.004  # base batch: the first phase's, 128
    cfg.optim.warmup, cfg.optim.warmup_epochs = "linear", 1.5  # into the second phase
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_size"] for r in rows] == [128, 512, 512]
    assert [r["lr"] for r in rows][1:] == pytest.approx([0.016, 0.016])  # 4x the batch, 4x the lr, warmed up
    samples = round(summary["mean_samples_per_s"] * summary["train_s"] / 3)
    steps = [-(-samples // b) for b in (128, 512, 512)]
    assert summary["epoch_starts"] == [0, steps[0], steps[0] + steps[1], sum(steps)]
    lr = dict(summary["lr_schedule"])
    warmup = steps[0] + 0.5 * steps[1]  # 1.5 epochs of steps
    for step, got in lr.items():
        phase = 0.004 if step < steps[0] else 0.016
        assert got == pytest.approx(phase * min(1.0, (step + 1) / warmup)), step
    assert any(line.startswith("Batch schedule: epoch 0: batch 128") and "epoch 1: batch 512" in line for line in lines)


def test_a_resumed_batch_schedule_continues_in_its_phase(tmp_path, capsys, monkeypatch):
    from tests.helpers import SYNTHETIC, interrupt_in_epoch, rows, run_main, tiny

    args = [*SYNTHETIC, "--batch-schedule", "0:128,2:512", "--lr-scaling", "sqrt", "--optimizer", "lamb"]
    assert run_main(capsys, ["train", *args, *tiny(tmp_path / "whole", epochs=3)])[0] == 0
    import scalerec.epoch

    real = scalerec.epoch.train_epoch
    interrupt_in_epoch(monkeypatch, 2)  # stopped in the second phase's first epoch
    assert run_main(capsys, ["train", *args, *tiny(tmp_path / "part", epochs=3)])[0] == 130
    monkeypatch.setattr(scalerec.epoch, "train_epoch", real)
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "part", "--threads", "1"])
    assert rc == 0, err
    assert rows(tmp_path / "part") == rows(tmp_path / "whole")  # the same batches, lr and metrics
    assert [r["batch_size"] for r in rows(tmp_path / "part")] == [128, 128, 512]


@pytest.mark.parametrize(
    "schedule, said",
    [
        ("0:128,x", "'x' is not EPOCH:BATCH"),
        ("1:128", "must start at epoch 0"),
        ("0:128,0:256", "at increasing epochs"),
        ("0:0", "batches of at least 1"),
    ],
)
def test_a_wrong_batch_schedule_is_one_line(tmp_path, capsys, schedule, said):
    from tests.helpers import SYNTHETIC, assert_one_line_error, run_main, tiny

    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run"), "--batch-schedule", schedule])
    assert_one_line_error(rc, err, said)


def test_a_warmup_longer_than_a_batch_schedules_run_never_reaches_the_peak(tmp_path):
    from scalerec.assembly import assemble

    ds, last = None, {}
    for warmup in (1.0, 2.0, 2.5, 3.0, 3.5):
        cfg = tiny_config(tmp_path, epochs=2, batch_schedule="0:256,1:1024")
        cfg.optim.warmup, cfg.optim.warmup_epochs = "linear", warmup
        ds = ds or load_dataset(cfg.data, lambda s: None)
        p = assemble(cfg, ds, torch.device("cpu"), None, None, lambda s: None)
        last[warmup] = p.schedule(p.total_steps - 1)  # the run's last step
    assert last[1.0] == last[2.0] == 1.0  # warmed up by then
    assert 1.0 > last[2.5] > last[3.0] > last[3.5]  # a longer warmup: a lower lr at the end, never the peak


def test_a_fresh_run_clears_only_its_own_earlier_tensorboard_logs(tmp_path):
    from scalerec.run_folder import Claim

    mine, theirs = tmp_path / "mine", tmp_path / "project"
    for folder in (mine, theirs):
        (folder / "tensorboard").mkdir(parents=True)
        (folder / "tensorboard" / "events.out.tfevents.1").write_text("x")
    (mine / "config.json").write_text("{}")  # an earlier attempt of this run
    Claim(mine, None).clean()
    Claim(theirs, None).clean()  # a folder that is not a run's: its own tensorboard/ stays
    assert not (mine / "tensorboard").exists() and (theirs / "tensorboard" / "events.out.tfevents.1").is_file()
