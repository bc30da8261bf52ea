import json

import pytest

from scalerec.cli import main
from scalerec.config import build_config
from scalerec.errors import UserError
from scalerec.find_batch import MARGIN, search_cpu, search_gpu


def test_gpu_search_doubles_bisects_and_keeps_a_margin():
    edge = 50_000  # steps above this run out of memory

    def fits(b):
        return None if b > edge else 1000 + 10 * b

    found = search_gpu(fits, limit=10**7)
    assert 0.85 * edge <= found.batch <= 0.9 * edge and found.batch % 1024 == 0
    assert (65536, None) in found.tried  # the doubling overshot once, then bisected
    assert search_gpu(fits, limit=3000).batch == 3000  # an epoch smaller than the memory: the whole epoch
    small = search_gpu(lambda b: None if b > 300 else b, limit=10**6)  # even 1024 fails: halve
    assert [b for b, _ in small.tried[:3]] == [1024, 512, 256] and 200 <= small.batch <= 300
    with pytest.raises(UserError, match="does not fit"):
        search_gpu(lambda b: None, limit=10**6)


class Process:
    """A fake process: its peak memory after a step is the larger of what it held before and the step's need,
    or (resettable=True, Linux's VmHWM) the step's own need."""

    def __init__(self, held, need, resettable=False):
        self.peak, self.need, self.steps, self.resettable = held, need, [], resettable

    def step_peak(self, b):
        self.steps.append((b, self.need(b)))
        self.peak = self.need(b) if self.resettable else max(self.peak, self.need(b))
        return self.peak


def test_cpu_search_fits_the_peak_and_never_steps_over_the_budget():
    budget = int(2e9)
    linear = Process(600e6, lambda b: 500e6 + 20_000 * b)  # 20 kB per sample; the data's load peak hides small steps
    found = search_cpu(linear.step_peak, budget, limit=10**7, start_rss=int(450e6))
    assert found.batch == int((budget - 500e6) / 20_000 * MARGIN) // 1024 * 1024  # a 10% margin at the edge
    assert found.per_sample_bytes == pytest.approx(20_000)
    assert max(need for _, need in linear.steps) <= budget
    assert search_cpu(Process(600e6, linear.need).step_peak, budget, limit=5000, start_rss=int(450e6)).batch == 5000

    # A high load peak and a steep slope: the first rise must not tempt a step past the budget.
    steep = Process(1.5e9, lambda b: 300e6 + 40_000 * b)
    found = search_cpu(steep.step_peak, int(1.86e9), limit=10**7, start_rss=int(300e6))
    assert max(need for _, need in steep.steps) <= 1.86e9 and steep.need(found.batch) <= 1.86e9
    # Where each step's own peak is measured (VmHWM reset), the same process gets the batch the budget allows.
    exact = Process(1.5e9, steep.need, resettable=True)
    found = search_cpu(exact.step_peak, int(1.86e9), limit=10**7, start_rss=int(300e6))
    assert found.batch == int((1.86e9 - 300e6) / 40_000 * MARGIN) // 1024 * 1024
    assert max(need for _, need in exact.steps) <= 1.86e9

    # Memory that grows faster than the fit: fall back to the last batch within the budget, never raise.
    curved = Process(0, lambda b: 300e6 + 2000 * b + 0.02 * b * b)
    found = search_cpu(curved.step_peak, int(1.86e9), limit=10**7, start_rss=int(250e6))
    assert curved.need(found.batch) <= 1.86e9 and found.batch >= 65536

    with pytest.raises(UserError, match=r"GB a step may use \(the memory budget less"):
        search_cpu(Process(0, linear.need).step_peak, int(100e6), limit=10**6, start_rss=int(50e6))
    with pytest.raises(UserError, match="already holds"):
        search_cpu(linear.step_peak, int(100e6), limit=10**6, start_rss=int(200e6))


def test_find_batch_and_batch_size_max_on_tiny_data(tmp_path, capsys):
    data = [
        "--dataset", "synthetic", "--synthetic-users", "200", "--synthetic-items", "100",
        "--synthetic-interactions", "8", "--data-dir", str(tmp_path / "data"), "--factors", "4",
        "--layers", "8", "8", "4", "--threads", "1", "--eval-negatives", "50",
    ]  # fmt: skip
    assert main(["find-batch", *data, "--memory-budget-gb", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    samples = 200 * 8 * 5  # about: positives less the held-out items, times (1 + 4 negatives)
    batch = int(out.split("Largest batch: ")[1].split()[0])
    assert samples * 0.7 < batch <= samples  # a whole epoch fits in 64 GB
    run = tmp_path / "run"
    assert main(["train", *data, "--batch-size", "max", "--epochs", "1", "--output", str(run)]) == 0
    row = json.loads((run / "metrics.jsonl").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert row["batch_size"] == summary["batch_size"] == batch and summary["steps_per_epoch"] == 1
    assert row["peak_memory_mb"] > 0
    with pytest.raises(SystemExit):  # argparse: neither a number nor max
        main(["train", *data, "--batch-size", "many"])
    assert "int or max" in capsys.readouterr().err


def test_batch_size_max_in_a_config_file(tmp_path):
    from scalerec.config import build_config, read_config_file

    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[train]\nbatch_size = "max"\nmemory_budget_gb = 2.5\n')
    bad.write_text('[train]\nbatch_size = "huge"\n')
    cfg = build_config(read_config_file(str(good)))
    assert cfg.train.batch_size == "max" and cfg.train.memory_budget_gb == 2.5
    with pytest.raises(UserError, match="'huge', expected an integer or 'max'"):
        read_config_file(str(bad))


def test_options_that_need_each_other(capsys):
    with pytest.raises(UserError, match="needs --base-batch"):
        build_config({"train": {"batch_size": "max"}, "optim": {"lr_scaling": "linear", "base_lr": 0.1}})
    build_config({"train": {"batch_size": "max"}, "optim": {"lr_scaling": "linear", "base_batch": 256}})
    with pytest.raises(UserError, match="adapt_embeddings applies to --optimizer lars or lamb"):
        build_config({"optim": {"optimizer": "adam", "adapt_embeddings": False}})


def test_out_of_device_memory_is_one_line(monkeypatch, capsys):
    import torch

    import scalerec.training

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(scalerec.training, "train", oom)
    assert main(["train", "--dataset", "synthetic"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scalerec: error: out of device memory") and "Traceback" not in err


def test_the_cpu_search_leaves_room_for_the_epoch(tmp_path, monkeypatch, capsys):
    """A run holds its epoch's tensors beside each step, which the trial steps do not: the search's budget is the
    given one less EPOCH_BYTES_PER_SAMPLE per sample of an epoch."""
    import scalerec.find_batch
    from scalerec.assembly import EPOCH_BYTES_PER_SAMPLE

    seen = {}

    def search(step_peak, budget, limit, start_rss):
        seen.update(budget=budget, limit=limit)
        return scalerec.find_batch.Found(1024, 0, None, [])

    monkeypatch.setattr(scalerec.find_batch, "search_cpu", search)
    data = ["--dataset", "synthetic", "--synthetic-users", "200", "--synthetic-items", "100", "--eval-negatives", "20"]
    assert main(["find-batch", *data, "--data-dir", str(tmp_path), "--memory-budget-gb", "3", "--device", "cpu"]) == 0
    assert seen["budget"] == 3 * 2**30 - EPOCH_BYTES_PER_SAMPLE["cpu"] * seen["limit"]  # limit: one epoch's samples
