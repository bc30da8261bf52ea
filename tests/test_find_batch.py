import json

import pytest

from scalerec.cli import main
from scalerec.errors import UserError
from scalerec.find_batch import search_cpu, search_gpu


def test_gpu_search_doubles_then_bisects_to_the_out_of_memory_edge():
    edge = 50_000  # steps above this run out of memory

    def fits(b):
        return None if b > edge else 1000 + 10 * b

    found = search_gpu(fits, limit=10**7)
    assert edge - edge // 16 <= found.batch <= edge and found.batch % 1024 == 0
    assert found.peak_bytes == fits(found.batch)
    assert (65536, None) in found.tried  # the doubling overshot once, then bisected
    assert search_gpu(fits, limit=3000).batch == 3000  # an epoch smaller than the memory: the whole epoch
    with pytest.raises(UserError, match="does not fit"):
        search_gpu(lambda b: None, limit=10**6)


def test_cpu_search_fits_the_peak_and_solves_for_the_budget():
    fixed, per, budget = 500e6, 20_000, 2e9  # 20 kB per sample: the budget allows 75,000 samples
    calls = []

    def step_peak(b):
        calls.append(b)
        return int(max(fixed + per * b, 600e6))  # the data's load peak hides the small batches

    found = search_cpu(step_peak, int(budget), limit=10**7)
    assert found.batch == (int((budget - fixed) / per)) // 1024 * 1024
    assert found.per_sample_bytes == pytest.approx(per)
    assert max(calls) <= found.batch  # never a step beyond the budget
    assert search_cpu(step_peak, int(budget), limit=5000).batch == 5000
    with pytest.raises(UserError, match="over the memory budget"):
        search_cpu(step_peak, int(100e6), limit=10**6)


def test_find_batch_and_batch_size_max_on_tiny_data(tmp_path, capsys):
    data = [
        "--dataset", "synthetic", "--synthetic-users", "200", "--synthetic-items", "100",
        "--synthetic-interactions", "8", "--data-dir", str(tmp_path / "data"), "--factors", "4",
        "--layers", "8", "8", "4", "--threads", "1", "--eval-negatives", "50",
    ]  # fmt: skip
    assert main(["find-batch", *data, "--memory-budget-gb", "64"]) == 0
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
