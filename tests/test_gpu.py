"""What only a GPU can show: training, scoring and resuming there (skipped without one; see conftest.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import scalerec
import scalerec.epoch as epoch_module
from scalerec.training import train
from tests.helpers import SYNTHETIC, interrupt_in_epoch, rows, run_main, tiny, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("isolated")]

TRAIN_EPOCH = epoch_module.train_epoch


def on(device: str, args: list[str]) -> list[str]:
    """tiny()'s options with --device `device` instead of the CPU."""
    at = args.index("--device")
    return [*args[: at + 1], device, *args[at + 2 :]]


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_resumes_on_the_other_kind_of_device(capsys, tmp_path, monkeypatch, first, then):
    interrupt_in_epoch(monkeypatch, 1)
    rc, _, _ = run_main(capsys, ["train", *SYNTHETIC, *on(first, tiny(tmp_path / "run", epochs=2))])
    assert rc == 130 and len(rows(tmp_path / "run")) == 1
    monkeypatch.setattr(epoch_module, "train_epoch", TRAIN_EPOCH)
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "run", "--device", then])
    assert rc == 0, err
    assert f"drawn on {first}" in out and "reseeded from (seed 0, epoch 1)" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["state"] == "finished"
    assert run_main(capsys, ["train", "--resume", tmp_path / "again", "--device", then])[0] == 0
    assert rows(tmp_path / "again") == rows(tmp_path / "run")  # the reseed: the same stream each time


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lars", "lamb"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu_learns_in_every_precision(tmp_path, precision, optimizer):
    lr = {"adam": 0.005, "lamb": 0.005, "sgd": 0.5, "lars": 0.5}[optimizer]
    cfg = tiny_config(tmp_path, epochs=3, device="cuda", precision=precision)
    cfg.optim.optimizer, cfg.optim.lr = optimizer, lr
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["state"] == "finished"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    if optimizer == "adam":
        assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert any("fp32 matrix products high (TF32)" in line for line in lines)


def test_micro_batches_on_the_gpu_take_the_same_step_as_the_whole_batch():
    from scalerec.model import build_model
    from scalerec.optim import build_optimizer

    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, 9, (50,), generator=g).cuda(), torch.randint(0, 11, (50,), generator=g).cuda()
    labels = (torch.rand(50, generator=g) < 0.3).float().cuda()
    results = []
    for micro in (None, 7):
        torch.manual_seed(0)
        model = build_model("neumf", 9, 11, 4, (8, 8, 4), 0.0).cuda()
        opt, _ = build_optimizer("lamb", model, lr=0.05)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        for _ in range(2):
            epoch_module.train_step(
                model, opt, scaler, torch.autocast("cuda", enabled=False), users, items, labels, micro
            )
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_scoring_on_the_gpu_gives_the_cpus_recommendations_and_metrics(tmp_path):
    run = scalerec.train(tiny_config(tmp_path, epochs=2), log=None)
    on_cpu, on_gpu = scalerec.load(run), scalerec.load(run, device="cuda")
    rows_ = list(range(len(on_cpu.users)))
    cpu_items, cpu_scores = on_cpu.top(rows_, 10)
    gpu_items, gpu_scores = on_gpu.top(rows_, 10)
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, atol=1e-4, rtol=1e-4)
    assert (gpu_items.cpu() == cpu_items).float().mean() > 0.99  # ties within rounding may swap
    for protocol in ("sampled", "full"):
        cpu, gpu = on_cpu.evaluate(protocol), on_gpu.evaluate(protocol)
        assert all(abs(cpu[k] - gpu[k]) < 0.01 for k in cpu)
