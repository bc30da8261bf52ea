"""Every benchmark script runs end to end on tiny inputs and prints JSON lines with the fields its README table
reads (the scripts are not imported by the package, so nothing else would notice one breaking)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str, tmp_path: Path) -> list[dict]:
    env = {**os.environ, "SCALEREC_DATA_DIR": str(tmp_path)}  # synthetic data cached there, not in ~/.cache
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCHMARKS,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_step_speed(tmp_path):
    lines = run(
        "step_speed.py", "--shapes", "ml-100k", "--batch-sizes", "512", "--samples", "1024", "--repeats", "1",
        "--micro-batches", "256", tmp_path=tmp_path,
    )  # fmt: skip
    steps = {line["step"]: line for line in lines}
    variants = {"scalerec", "scalerec_autograd", "scalerec_embedding", "scalerec_rows", "scalerec_dense"}
    variants.add("scalerec_micro256")
    from scalerec.kernels import onednn_pays

    if onednn_pays():  # the step with BLAS's products beside oneDNN's, and oneDNN's sgemm beside BLAS's
        variants.add("scalerec_blas")
        assert steps["sgemm"]["onednn_gflops"] > 0
    assert set(steps) == {"plain", *variants, "sgemm", "ratio"}
    assert steps["scalerec_micro256"]["micro_batch"] == 256 and steps["scalerec"]["samples_per_s"] > 0
    assert steps["ratio"]["scalerec_over_plain"] > 0 and steps["sgemm"]["sgemm_best"] >= steps["sgemm"]["gflops"]
    ratio = steps["ratio"]  # one alternation: its own ratio is the ratio
    assert ratio["scalerec_over_plain_range"] == [ratio["scalerec_over_plain"]] * 2
    assert ratio["scalerec_over_plain_paired"] == ratio["scalerec_over_plain"]
    assert steps["plain"]["shuffle"] == "samples"  # as `scalerec train` orders an epoch by default


@pytest.mark.parametrize("shuffle", ["groups", "samples"])
def test_step_speed_draws_batches_in_the_epoch_order_scalerec_trains_on(shuffle, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from step_speed import draw_batches

    batches = draw_batches(50, 40, 100, 3, shuffle, "cpu")
    assert [len(b[0]) for b in batches] == [100, 100, 100]
    users = torch.cat([b[0] for b in batches]).view(-1, 5)
    labels = torch.cat([b[2] for b in batches]).view(-1, 5)
    grouped = bool((users == users[:, :1]).all()) and bool((labels[:, 0] == 1).all() and labels[:, 1:].sum() == 0)
    assert grouped == (shuffle == "groups")
    assert abs(labels.mean().item() - 0.2) < 0.05  # one positive per 4 negatives either way


@pytest.mark.slow
def test_gpu_check_script_runs_its_steps(tmp_path):
    """benchmarks/gpu_check.sh, the GPU measurements: on the CPU, on tiny data (SMOKE=1)."""
    env = {**os.environ, "SMOKE": "1", "TMPDIR": str(tmp_path), "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    rates = {(d["bench"], d["dtype"], d.get("step") or d["mode"]): d for d in lines}
    for dtype in ("fp32", "bf16", "fp16"):  # every step in every precision
        assert rates[("step_speed", dtype, "plain")]["samples_per_s"] > 0
        assert rates[("step_speed", dtype, "scalerec")]["samples_per_s"] > 0
    assert rates[("train_throughput", "bf16", "ratio")]["full_over_bare"] > 0
    assert "Largest batch:" in out.stdout and out.stdout.count("Best epoch") == 2  # bf16 and fp16 runs


def test_gpu_check_goes_on_past_failed_steps_and_names_them(tmp_path):
    """A step that fails (here every one: a python that always fails after the version check) costs no other."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *get_device_name*) exec {sys.executable} "$@";; esac\nexit 7\n')
    python.chmod(0o755)
    env = {**os.environ, "SMOKE": "1", "TMPDIR": str(tmp_path), "OUT": str(tmp_path), "PYTHON": str(python)}
    out = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    steps = ["train, bf16, adam", "train, fp16, lamb", "bare step, fp32 bf16 fp16", "full epoch vs bare step, bf16"]
    for step in [*steps, "find-batch, bf16"]:
        assert f"== FAILED (exit 7): {step}\n" in out.stdout and f"== failed: {step}\n" in out.stdout
    assert "done; JSON lines in" in out.stdout


@pytest.mark.slow
def test_train_throughput(tmp_path):
    lines = run(
        "train_throughput.py", "--shape", "ml-100k", "--batch-sizes", "1024", "--epochs", "2",
        "--bare-samples", "8192", tmp_path=tmp_path,
    )  # fmt: skip
    modes = [(line.get("epoch"), line["mode"]) for line in lines]
    assert modes == [(0, "bare_step"), (0, "full_epoch"), (1, "bare_step"), (1, "full_epoch"), (None, "ratio")]
    assert lines[0]["samples"] == 8192 and lines[1]["samples"] > 400_000  # ml-100k's shape: ~99k positives x 5
    assert lines[-1]["full_over_bare"] > 0
    # The default NeuMF's FLOPs per sample: forward and twice it backward through 256-256-128-64 and the 128-wide
    # prediction layer, plus the GMF product's 64 three times.
    flops = 6 * (256 * 256 + 256 * 128 + 128 * 64 + 128) + 3 * 64
    assert all(abs(line["gflops"] - line["samples_per_s"] * flops / 1e9) <= 0.05 for line in lines[:-1])
    bare = sum(line["samples_per_s"] for line in lines[:-1] if line["mode"] == "bare_step") / 2
    assert lines[-1]["sgemm_best"] > 0
    assert abs(lines[-1]["bare_step_flops_over_sgemm_best"] - bare * flops / 1e9 / lines[-1]["sgemm_best"]) < 0.01


@pytest.mark.slow
def test_step_accuracy(tmp_path):
    lines = run("step_accuracy.py", "--shape", "ml-100k", "--epochs", "1", tmp_path=tmp_path)
    plain, ours = lines
    assert (plain["step"], ours["step"]) == ("plain", "scalerec")
    # The same start, batches and math: after one epoch both rank the held-out items alike.
    assert abs(plain["HR@10"] - ours["HR@10"]) <= 0.02 and ours["HR@10"] > 0.2


@pytest.mark.slow
def test_eval_and_prepare_speed(tmp_path):
    lines = run("eval_speed.py", "--shape", "ml-100k", "--repeats", "1", "--models", "neumf", "mf", tmp_path=tmp_path)
    from scalerec.kernels import onednn_pays

    neumf = ["onednn", "blas"] if onednn_pays() else ["blas"]  # NeuMF's scoring by each, where oneDNN pays
    expected = [("neumf", p, m) for p in ("sampled", "full") for m in neumf] + [("mf", "sampled", "blas")]
    assert [(x["model"], x["protocol"], x["matmul"]) for x in lines] == [*expected, ("mf", "full", "blas")]
    assert all(x["users"] == 943 and x["seconds_median"] > 0 for x in lines)
    assert [x["candidates"] for x in lines if x["matmul"] == "blas"][:2] == [101, 1682]
    csv_dir = str(tmp_path / "csv")
    lines = run(
        "prepare_speed.py", "--real", "--shapes", "ml-100k", "--csv", "ml-100k", "--csv-dir", csv_dir, tmp_path=tmp_path
    )
    assert [line["phase"] for line in lines] == ["prepare", "reload", "write_csv", "prepare", "reload"]
    assert lines[0]["interactions"] == lines[1]["interactions"] > 90_000 and lines[1]["cache_mb"] > 0
    assert lines[2]["rows"] == lines[3]["interactions"] and lines[3]["dataset"] == "ml-100k x1 ratings.csv"


@pytest.mark.slow
def test_batch_sizes(tmp_path):
    lines = run(
        "batch_sizes.py", "--shape", "ml-100k", "--batch-sizes", "256", "2048", "--samples", "4096", "--repeats", "2",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert [x["batch"] for x in lines] == [256, 2048] and all(x["samples"] == 4096 for x in lines)
    best = {x["best_batch"] for x in lines}
    assert len(best) == 1 and best.pop() in (256, 2048)
    by_batch = {x["batch"]: x for x in lines}
    assert by_batch[lines[0]["best_batch"]]["samples_per_s"] == max(x["samples_per_s"] for x in lines)
    assert all(0 < x["over_best"] and x["peak_memory_mb"] > 0 for x in lines)
    assert by_batch[2048]["micro_batch"] is None  # as `scalerec train` runs a batch of 2048 on the CPU


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py"))
def test_every_benchmark_has_a_test(script):
    assert f'"{script}"' in Path(__file__).read_text()


@pytest.mark.slow
def test_late_epochs(tmp_path):
    lines = run(
        "late_epochs.py", "--shape", "ml-100k", "--epochs", "2", "--batch-size", "1024", "--samples", "4096",
        "--repeats", "1", tmp_path=tmp_path,
    )  # fmt: skip
    epochs = [line for line in lines if "epoch" in line]
    assert [line["epoch"] for line in epochs] == [0, 1]
    assert all(0 <= line["subnormal_state"] < 1 and line["samples_per_s"] > 0 for line in epochs)
    timed = {(line["weights"], line["flush_denormal"]) for line in lines if "flush_denormal" in line}
    assert timed == {(w, f) for w in ("epoch1", "epoch2") for f in (False, True)}
    assert lines[-1]["weights"] == "ratio" and lines[-1]["late_over_early"] > 0


@pytest.mark.slow
def test_data_parallel(tmp_path):
    lines = run(
        "data_parallel.py", "--dataset", "synthetic", "--epochs", "1", "--repeats", "1", "--batch-size", "256",
        "--", "--synthetic-users", "200", "--synthetic-items", "100", "--eval-negatives", "20", "--layers", "16",
        "16", "8", "--factors", "8", tmp_path=tmp_path,
    )  # fmt: skip
    runs = {line["run"]: line for line in lines}
    assert set(runs) == {"one", "ddp", "flat", "ratio"} and runs["ddp"]["processes"] == runs["flat"]["processes"] == 2
    for way in ("ddp", "flat"):  # one batch, split in two
        assert runs[way]["loss"] == pytest.approx(runs["one"]["loss"], abs=2e-4)
    assert runs["ratio"]["ddp_over_flat"] > 0 and len(runs["one"]["samples_per_s"]) == 1


@pytest.mark.slow
def test_allreduce(tmp_path):
    lines = run(
        "allreduce.py", "--shape", "ml-100k", "--batch-size", "256", "--steps", "3", "--repeats", "1", tmp_path=tmp_path
    )  # fmt: skip
    ways = {line["sync"]: line for line in lines if "sync" in line}
    assert set(ways) == {"flat", "ddp"} and all(len(w["steps_per_s"]) == 1 for w in ways.values())
    assert lines[-1]["ddp_over_flat"] > 0 and lines[-1]["processes"] == 2
    assert lines[-1]["same_weights"]  # both ways take the same steps: the same mean gradient


@pytest.mark.slow
def test_step_speed_on_batches_of_a_real_datasets_epoch(tmp_path):
    prefix = tmp_path / "tiny"  # the NCF paper's layout: user, item, rating, timestamp; one test row per user
    train = "".join(f"{u}\t{(7 * u + k) % 200}\t5\t{k}\n" for u in range(30) for k in range(5))
    prefix.with_suffix(".train.rating").write_text(train)
    prefix.with_suffix(".test.rating").write_text("".join(f"{u}\t{(7 * u + 5) % 200}\t5\t9\n" for u in range(30)))
    lines = run(
        "step_speed.py", "--ncf", str(prefix), "--batch-sizes", "128", "--samples", "512", "--repeats", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    steps = {line["step"]: line for line in lines}
    assert steps["plain"]["shape"] == str(prefix) and (steps["plain"]["users"], steps["plain"]["items"]) == (30, 200)
    assert steps["scalerec"]["samples_per_s"] > 0 and steps["ratio"]["scalerec_over_plain"] > 0


@pytest.mark.slow
def test_contention(tmp_path):
    lines = run(
        "contention.py", "--epochs", "1", "--repeats", "1", "--", "--dataset", "synthetic", "--synthetic-users",
        "200", "--synthetic-items", "100", "--eval-negatives", "20", "--layers", "16", "16", "8", "--factors", "8",
        tmp_path=tmp_path,
    )  # fmt: skip
    runs = [line for line in lines if "setting" in line]
    assert {(r["load"], r["setting"]) for r in runs} >= {("alone", "default"), ("busy", "threads_1")}
    assert all(len(r["samples_per_s"]) == 1 and r["samples_per_s"][0] > 0 and r["threads_used"] for r in runs)
    ratios = {line["load"]: line for line in lines if "setting" not in line}
    assert ratios["busy"]["default_over_threads_1"] > 0 and len(ratios) == 2


@pytest.mark.slow
def test_serve_load(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra")
    train = [sys.executable, "-m", "scalerec", "train", "--dataset", "synthetic", "--synthetic-users", "200"]
    train += ["--epochs", "1", "--factors", "8", "--layers", "16", "16", "8", "--output", str(tmp_path / "run")]
    subprocess.run(train, check=True, capture_output=True, env={**os.environ, "SCALEREC_DATA_DIR": str(tmp_path)})
    lines = run(
        "serve_load.py", "--run", str(tmp_path / "run"), "--requests", "40", "--clients", "2", tmp_path=tmp_path
    )
    for precompute in (0, 100):  # live, and every user's top 100 at start
        by = {line["setting"]: line for line in lines if line["precompute"] == precompute}
        assert set(by) == {"get_k10", "post_100_users", "mix_malformed"}
        assert by["get_k10"]["statuses"] == {"200": 40} and by["post_100_users"]["statuses"] == {"200": 2}
        assert by["mix_malformed"]["statuses"] == {"200": 30, "400": 8, "404": 2}  # every fourth malformed: a 4xx
    assert all(x["errors_5xx"] == x["errors_without_message"] == 0 and x["p99_ms"] >= x["p50_ms"] > 0 for x in lines)


@pytest.mark.slow
def test_optimizer_step_against_another_revision(tmp_path):
    lines = run(
        "optimizer_step.py", "--baseline", "HEAD", "--optimizers", "lars", "lamb", "--shape", "tiny", "--steps", "2",
        "--repeats", "2", tmp_path=tmp_path,
    )  # fmt: skip
    assert [(line["optimizer"], line["revision"]) for line in lines] == [
        ("lars", "current"), ("lars", "HEAD"), ("lamb", "current"), ("lamb", "HEAD"),  # alternated: then reversed
        ("lars", "HEAD"), ("lars", "current"), ("lamb", "HEAD"), ("lamb", "current"),
    ]  # fmt: skip
    assert all(line["ms_per_step"] > 0 and line["shape"] == "tiny" for line in lines)
