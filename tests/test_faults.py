"""Run folders under races, faults and foreign files: real processes racing for a folder, a full disk, a signal in
the middle of a write, what killed writes leave, hand-edited run files, and options no run can use."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from scalerec import files
from scalerec.errors import UserError
from tests.helpers import SYNTHETIC, assert_one_line_error, interrupt_in_epoch, rows, run_main, tiny

pytestmark = pytest.mark.usefixtures("isolated")  # the cache and runs/ in tmp_path


def start(args: list, cwd: Path, limit_file_size: int | None = None) -> subprocess.Popen:
    """`python -m scalerec ARGS` in a process of its own (one thread, its data under cwd)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCALEREC_DATA_DIR": str(cwd / "data_dir")}

    def limits() -> None:  # files of at most `limit_file_size` bytes: a write past it fails with EFBIG
        os.setsid()
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    cmd = [sys.executable, "-m", "scalerec", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True, preexec_fn=limits)


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return p.returncode, out, err


def wait_for(condition, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def holder_named(folder: Path) -> bool:
    """Whether a process has taken the folder's lock and named itself in it."""
    lock = folder / ".lock"
    return lock.is_file() and bool(lock.read_text().strip())


@pytest.mark.slow
def test_two_trains_into_one_folder_the_second_is_refused_naming_the_first(tmp_path):
    args = ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=2)]
    first = start(args, tmp_path)
    wait_for(lambda: holder_named(tmp_path / "run"))
    os.kill(first.pid, signal.SIGSTOP)  # held where it is: whatever the machine's speed, the second finds it there
    try:
        rc, _, err = finish(start(args, tmp_path))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert_one_line_error(rc, err, f"{tmp_path / 'run'}: another scalerec process (pid {first.pid} on", "training")
    rc, _, err = finish(first)
    assert rc == 0, err
    assert [r["epoch"] for r in rows(tmp_path / "run")] == [0, 1]  # the first run's lines alone
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_two_sweeps_into_one_folder_the_second_is_refused_and_a_stale_failure_record_goes(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nbatch_size = [256, 512]\n")
    args = ["sweep", "--grid", grid, *SYNTHETIC, *tiny(tmp_path / "s", epochs=1)]
    del args[args.index("--batch-size") : args.index("--batch-size") + 2]
    (tmp_path / "s" / "1-batch_size=256").mkdir(parents=True)  # an earlier attempt of this sweep failed
    (tmp_path / "s" / "1-batch_size=256" / "failed.json").write_text('{"state": "failed", "error": "disk full"}')
    first = start(args, tmp_path)
    wait_for(lambda: holder_named(tmp_path / "s"))
    os.kill(first.pid, signal.SIGSTOP)
    try:
        rc, _, err = finish(start(args, tmp_path))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert_one_line_error(rc, err, f"{tmp_path / 's'}: another scalerec process (pid {first.pid}", "running a sweep")
    rc, out, err = finish(first)
    assert rc == 0, err
    for run in ("1-batch_size=256", "2-batch_size=512"):
        assert len(rows(tmp_path / "s" / run)) == 1
        assert json.loads((tmp_path / "s" / run / "summary.json").read_text())["state"] == "finished"
        assert not (tmp_path / "s" / run / "failed.json").exists()
    assert "finished" in (tmp_path / "s" / "results.csv").read_text().splitlines()[1]


@pytest.mark.slow
def test_a_sweep_with_failed_runs_exits_1_and_says_how_many(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\neval_negatives = [5000, 6000]\n")  # more negatives than items: both runs fail
    rc, out, err = run_main(capsys, ["sweep", "--grid", grid, *SYNTHETIC, *tiny(tmp_path / "s", epochs=1)])
    assert_one_line_error(rc, err, "2 of 2 runs failed (1-eval_negatives=5000, 2-eval_negatives=6000", "report.md")
    assert "runs failed" not in out and (tmp_path / "s" / "results.csv").is_file()


def interrupted_run(capsys, monkeypatch, run: Path, *options: str) -> None:
    """A run of 2 epochs stopped in its second: its checkpoint holds epoch 0."""
    with monkeypatch.context() as patched:  # undone alone: the isolated data folder and working folder stay
        interrupt_in_epoch(patched, 1)
        assert run_main(capsys, ["train", *SYNTHETIC, *options, *tiny(run, epochs=2)])[0] == 130


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_another_runs_checkpoint_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    interrupted_run(capsys, monkeypatch, tmp_path / "a", "--data-seed", "1")  # other data of the same shape
    interrupted_run(capsys, monkeypatch, tmp_path / "b")
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    (tmp_path / "b" / "failed.json").write_text('{"state": "failed", "error": "an earlier attempt"}')
    (tmp_path / "b" / "checkpoint.ptq1w2e3r4.tmp.pt").write_bytes(b"half")  # a killed write's
    before = contents(tmp_path / "b")
    for command in (["train", "--resume", tmp_path / "b"], ["recommend", tmp_path / "b", "--epoch", "last"]):
        rc, _, err = run_main(capsys, command)
        assert_one_line_error(rc, err, f"{tmp_path / 'b' / 'checkpoint.pt'}: another run's checkpoint", "data_seed")
    assert contents(tmp_path / "b") == before  # every file as it was, the failure record and the temporary too
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")  # a whole run moved elsewhere is still itself
    assert run_main(capsys, ["train", "--resume", tmp_path / "a-copy"])[0] == 0


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line(capsys, tmp_path, monkeypatch):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["gmf_user.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert_one_line_error(rc, err, f"{path}: its state does not fit this run's model and optimizer")
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "run", "--epoch", "last"])
    assert_one_line_error(rc, err, f"{path}: its weights do not fit the model of")
    best = tmp_path / "run" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["model"]["gmf_user.weight"] = torch.zeros(3, 3)
    torch.save(state, best)
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "run"])
    assert_one_line_error(rc, err, f"{best}: its weights do not fit the model of")


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda s: s.pop("optimizer"), "'optimizer' is missing"),
        (lambda s: s.pop("history"), "'history' is missing"),
        (lambda s: s.pop("data"), "'data' is missing"),
        (lambda s: s.update(best={}), "'best' names no epoch"),
        (lambda s: s["history"][0].pop("train_s"), "'history' row 0: no 'train_s' in epoch 0's row"),
        (lambda s: s["history"][0].update(epoch="0"), "'history' row 0: 'epoch' is '0', expected an epoch number"),
        (lambda s: s.update(config=[1]), "'config' is not a run's options"),
    ],
)
def test_a_checkpoint_without_its_fields_is_one_line(capsys, tmp_path, monkeypatch, edit, fragment):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    for command in (["train", "--resume", tmp_path / "run"], ["recommend", tmp_path / "run", "--epoch", "last"]):
        rc, _, err = run_main(capsys, command)
        assert_one_line_error(rc, err, f"{path}", fragment)


def test_a_checkpoint_made_before_an_option_existed_is_still_its_runs(capsys, tmp_path, monkeypatch):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["eval"]["eval_batch_size"]  # an option scalerec gained since: it counts at its default
    torch.save(state, path)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["eval"]["eval_batch_size"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "run", "--threads", "1"])
    assert rc == 0 and "at epoch 1 of 2" in out, err


def test_a_folder_held_by_a_sweep_says_so(capsys, tmp_path):
    (tmp_path / "s").mkdir()
    held = files.hold_folder(tmp_path / "s", "running a sweep")
    try:
        rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "s", epochs=1)])
    finally:
        held.close()
    assert_one_line_error(rc, err, f"{tmp_path / 's'}: another scalerec process (pid ", "is running a sweep in this")


def test_a_signal_held_during_a_failed_write_does_not_hide_the_failure():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(files.WriteError), files.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            raise files.WriteError("x: cannot write it (No space left on device)")
        assert got == []  # the failure is what stops the run
        with files.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # held while the block writes
        assert got == [signal.SIGTERM]  # then acted on
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_recommend_refuses_more_recommendations_than_memory_holds(capsys, tmp_path, monkeypatch):
    import scalerec.recommend

    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])[0] == 0
    monkeypatch.setattr(scalerec.recommend, "available_bytes", lambda: 100_000)
    rc, _, err = run_main(capsys, ["recommend", tmp_path / "run", "--k", "50"])
    assert_one_line_error(rc, err, "k = 50 for 200 users: 10,000 recommendations take about", "ask for fewer users")


def test_a_checkpoint_holding_python_objects_is_refused_in_a_whole_sentence(capsys, tmp_path, monkeypatch):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    torch.save({"version": 1, "x": Path("anything")}, tmp_path / "run" / "checkpoint.pt")
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert_one_line_error(rc, err, "Python objects besides tensors and plain data, which are not loaded: they could")
    assert err.rstrip().endswith("run code)")


def test_sigterm_while_the_first_checkpoint_is_written_leaves_summary_metrics_and_checkpoint_agreeing(
    capsys, tmp_path, monkeypatch
):
    real = torch.save

    def save_and_be_stopped(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops the job, mid-write
        return real(obj, f, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", save_and_be_stopped)
        rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=3)])
    assert rc == 143 and "terminated (SIGTERM)" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert summary["state"] == "interrupted" and summary["epochs"] == 1
    assert len(rows(tmp_path / "run")) == 1 and len(saved["history"]) == 1
    assert not list((tmp_path / "run").glob("*.tmp*"))
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 0 and "at epoch 1 of 3" in out, err


@pytest.mark.slow
def test_a_write_that_fails_is_one_line_the_summary_says_so_and_the_last_checkpoint_stays(
    capsys, tmp_path, monkeypatch
):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    size = (tmp_path / "run" / "checkpoint.pt").stat().st_size
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    # resumed with files limited below a checkpoint's size: epoch 1's checkpoint cannot be written (EFBIG)
    rc, out, err = finish(start(["train", "--resume", tmp_path / "run"], tmp_path, limit_file_size=size // 2))
    assert_one_line_error(rc, err, f"{tmp_path / 'run' / 'checkpoint.pt'}: cannot write it (File too large)")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "failed" and "checkpoint.pt: cannot write it" in summary["error"]
    assert summary["epochs"] == 1 and len(rows(tmp_path / "run")) == 1  # what the checkpoint holds
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good and not list((tmp_path / "run").glob("*.tmp*"))
    rc, out, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])  # the disk has room again
    assert rc == 0 and "at epoch 1 of 2" in out, err
    command = ["recommend", tmp_path / "run", "--output", tmp_path / "all.csv"]
    rc, _, err = finish(start(command, tmp_path, limit_file_size=100))
    assert_one_line_error(rc, err, f"{tmp_path / 'all.csv'}: cannot write it (File too large)")
    assert not (tmp_path / "all.csv").exists() and not list(tmp_path.glob("all.csv*"))


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_full_disk_during_a_checkpoint_write(capsys, tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "224k"):  # the data, one checkpoint and best.pt fit; a second checkpoint does not
        pytest.skip("no tmpfs to fill (mounting one needs root); the file-size limit test covers the same path")
    try:
        assert (
            run_main(capsys, ["data", "info", "synthetic", *SYNTHETIC[2:], "--eval-negatives", "20"])[0] == 0
        )  # the data cache elsewhere
        rc, out, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(disk / "run", epochs=3)])
        assert_one_line_error(rc, err, "checkpoint.pt: cannot write it (No space left on device)")
        summary = json.loads((disk / "run" / "summary.json").read_text())
        assert summary["state"] == "failed" and summary["epochs"] == len(rows(disk / "run")) >= 1
        saved = torch.load(disk / "run" / "checkpoint.pt", weights_only=True)  # the last one written whole
        assert len(saved["history"]) == summary["epochs"]
        assert not list((disk / "run").glob("*.tmp*"))
        rc, _, err = run_main(capsys, ["recommend", disk / "run", "--k", "100", "--output", disk / "all.csv"])
        assert_one_line_error(rc, err, f"{disk / 'all.csv'}: cannot write it (No space left on device)")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_the_temporaries_of_killed_writes_go_at_the_next_start_unless_a_live_process_holds_the_folder(
    capsys, tmp_path, monkeypatch
):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    left = ["checkpoint.ptk2x9a1.tmp.pt", "metrics.jsonl_q1w2e3.tmp.jsonl", "summary.json0a0a0a.tmp.json"]
    for name in left:
        (tmp_path / "run" / name).write_bytes(b"half")
    (tmp_path / "run" / "notes.tmp.pt").write_text("mine")  # not a name scalerec writes: left alone
    held = files.hold_folder(tmp_path / "run")
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert rc == 1 and "another scalerec process" in err
    assert all((tmp_path / "run" / name).exists() for name in left)  # a live process holds it: maybe its writes
    held.close()
    assert run_main(capsys, ["train", "--resume", tmp_path / "run"])[0] == 0
    assert not any((tmp_path / "run" / name).exists() for name in left)
    assert (tmp_path / "run" / "notes.tmp.pt").read_text() == "mine"

    cache = tmp_path / "data_dir" / "cache"
    orphan = cache / "synthetic-0123456789abcdef.npzx1y2z3.tmp.npz"
    orphan.write_bytes(b"half")
    with files.writing_in(cache):  # another process writing a cache entry right now
        assert run_main(capsys, ["data", "info", "synthetic", *SYNTHETIC[2:], "--eval-negatives", "20"])[0] == 0
        assert orphan.exists()
    assert run_main(capsys, ["data", "info", "synthetic", *SYNTHETIC[2:], "--eval-negatives", "20"])[0] == 0
    assert not orphan.exists()


def test_writes_are_flushed_to_disk_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:
        events.append(("replace", str(b)))
        real_replace(a, b)

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", fsync)
        patched.setattr(os, "replace", replace)
        files.write_atomic(tmp_path / "summary.json", "{}\n")
    (_, tmp), replace, folder = events
    assert tmp.startswith(str(tmp_path / "summary.json")) and tmp.endswith(".tmp.json")  # under its temporary name
    assert replace == ("replace", str(tmp_path / "summary.json")) and folder == ("fsync", str(tmp_path))


# ---------------------------------------------------------------- hand-edited and foreign run files


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda c: c["train"].update(epochs=2.5), ["option 'epochs' is 2.5, expected an integer"]),
        (lambda c: c["model"].update(factors=8.0), ["option 'factors' is 8.0, expected an integer"]),
        (lambda c: c.update(train=None), ["section 'train' is None, expected a table of options"]),
        (lambda c: c["train"].update(colour="red"), ["unknown option 'colour' in section [train]"]),
        (lambda c: c["optim"].update(lr=float("inf")), ["lr must be a finite number"]),
        (lambda c: c["optim"].update(lr=10**400), ["option 'lr' is 1000", "expected a number"]),
        (lambda c: c.clear() or c.update(x=[]), ["unknown option 'x'"]),
    ],
)
def test_a_hand_edited_config_json_is_one_line_naming_the_file_and_field(
    capsys, tmp_path, monkeypatch, edit, fragments
):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    for command in (
        ["train", "--resume", tmp_path / "run"],
        ["recommend", tmp_path / "run"],
        ["report", tmp_path / "run"],
    ):
        rc, _, err = run_main(capsys, command)
        if command[0] == "report" and "x" in config:
            assert rc == 1 and "holds no run" in err  # not a scalerec config at all: no run here
            continue
        assert_one_line_error(rc, err, str(path), *fragments)


def test_a_config_json_that_is_not_an_object_is_one_line(capsys, tmp_path, monkeypatch):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("[]")
    rc, _, err = run_main(capsys, ["train", "--resume", tmp_path / "run"])
    assert_one_line_error(rc, err, f"{tmp_path / 'run' / 'config.json'}: holds a list, expected a JSON object")


@pytest.mark.slow
@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"42", "line 2: holds 42, expected a JSON object"),
        (b'{"epoch": 7}', "line 2: no metric (such as sampled_HR@10) in epoch 7's row"),
        (b'{"epoch": "7", "sampled_HR@10": 0.5}', "line 2: 'epoch' is '7', expected an epoch number"),
        (b'{"epoch": 1, "sampled_HR@10": "high"}', "line 2: 'sampled_HR@10' is 'high', expected a number"),
        (b"\xff\xfe{}", "line 2: not UTF-8 text"),
        (b"{not json", "line 2: not a JSON line"),
    ],
)
def test_a_damaged_metrics_line_is_one_line_naming_the_line(capsys, tmp_path, line, fragment):
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=2)])[0] == 0
    path = tmp_path / "run" / "metrics.jsonl"
    first = path.read_bytes().splitlines()[0]
    path.write_bytes(first + b"\n" + line + b"\n")
    rc, _, err = run_main(capsys, ["report", tmp_path / "run"])
    assert_one_line_error(rc, err, f"{path}, {fragment}")
    path.write_bytes(first + b'\n{"epoch": 1, "sampl')  # a last line cut short by a crash in an append
    assert run_main(capsys, ["report", tmp_path / "run"])[0] == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('"x"', "holds a string, expected a JSON object"),
        ("[1]", "holds a list"),
        ('{"epochs": "2"}', "'epochs' is '2'"),
    ],
)
def test_a_foreign_summary_json_is_one_line(capsys, tmp_path, monkeypatch, text, fragment):
    interrupted_run(capsys, monkeypatch, tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text(text)
    for command in (["report", tmp_path / "run"], ["train", "--resume", tmp_path / "run"]):
        rc, _, err = run_main(capsys, command)
        assert_one_line_error(rc, err, f"{tmp_path / 'run' / 'summary.json'}: {fragment}")


# ---------------------------------------------------------------- options no run can use


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--warmup", "linear", "--warmup-epochs", "inf"], "warmup_epochs must be a finite number, got inf"),
        (["--lr", "inf"], "lr must be a finite number, got inf"),
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--lr", "1e308"], "lr must be at most float32's largest number"),
        (["--lr-scaling", "linear", "--base-lr", "inf"], "base_lr must be a finite number"),
        (["--weight-decay", "inf"], "weight_decay must be a finite number"),
        (["--dropout", "nan"], "dropout must be a finite number"),
        (["--memory-budget-gb", "inf"], "memory_budget_gb must be a finite number"),
    ],
)
def test_non_finite_options_exit_2(capsys, tmp_path, options, fragment):
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1), *options])
    assert rc == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, text", [("c.yaml", "lr: .inf\n"), ("c.yaml", "optim:\n  lr: -.inf\n"), ("c.toml", "lr = inf\n")]
)
def test_non_finite_values_in_config_files_exit_2(capsys, tmp_path, name, text):
    (tmp_path / name).write_text(text)
    rc, _, err = run_main(capsys, ["train", "--config", tmp_path / name, *SYNTHETIC])
    assert rc == 2 and ("lr must be a finite number" in err or "must be > 0" in err), err


def test_a_scaled_lr_past_float32_exits_2_and_an_lr_that_underflows_is_warned(capsys, tmp_path):
    scaled = ["--lr-scaling", "linear", "--base-lr", "1e37", "--base-batch", "1"]
    rc, _, err = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "a", epochs=1), *scaled])
    assert rc == 2 and "the lr scaled to batch 256 is 2.56e+39, beyond float32's range" in err
    rc, out, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "b", epochs=1), "--lr", "1e-50"])
    assert rc == 0 and "Warning: the lr stays below 1e-50 for the whole run, 0 in float32" in out
    warm = ["--warmup", "linear", "--warmup-epochs", "1e300"]
    rc, out, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "c", epochs=1), *warm])
    assert rc == 0 and "0 in float32: the weights will not move" in out
    warm = ["--warmup", "exponential", "--warmup-epochs", "4"]
    rc, out, _ = run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "d", epochs=1), *warm])
    assert rc == 0 and "Note: the warmup (4 epochs) is longer than the run (1)" in out


def test_yaml_refuses_a_key_given_twice_as_toml_does(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.1\nepochs: 2\nlr: 0.2\n")
    rc, _, err = run_main(capsys, ["train", "--config", tmp_path / "c.yaml", *SYNTHETIC])
    assert rc == 2 and "line 3: 'lr' given twice in one table (first on line 1)" in err
    (tmp_path / "g.yaml").write_text("grid:\n  lr: [0.1]\n  lr: [0.2]\n")
    rc, _, err = run_main(capsys, ["sweep", "--grid", tmp_path / "g.yaml", *SYNTHETIC])
    assert rc == 2 and "'lr' given twice" in err


def test_recommend_clamps_k_to_the_items_left(capsys, tmp_path):
    assert run_main(capsys, ["train", *SYNTHETIC, *tiny(tmp_path / "run", epochs=1)])[0] == 0
    rc, out, err = run_main(capsys, ["recommend", tmp_path / "run", "--users", "0", "--k", "99999999999"])
    assert rc == 0, err
    items = [line.split(",")[2] for line in out.splitlines()[1:]]
    assert len(items) == len(set(items)) and 0 < len(items) < 100  # every unseen item of 100, each once


def test_a_nul_byte_in_a_table_is_refused_with_its_line(capsys, tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,timestamp\na,x,1\na,y\x00z,2\nb,x,3\n")
    rc, _, err = run_main(capsys, ["data", "info", path])
    assert_one_line_error(rc, err, f"{path}, line 3: a NUL byte in column 'item'")


def test_a_memory_budget_below_the_epochs_own_tensors_is_said_plainly():
    from scalerec.find_batch import search_cpu

    with pytest.raises(UserError, match=r"smaller than the epoch's own tensors \(0\.50 GB short"):
        search_cpu(lambda b: 0, -(2**29), 1024, 0)


def test_a_run_refused_before_its_first_write_leaves_no_folder_behind(capsys, tmp_path):
    rc, _, err = run_main(capsys, ["train", "--data", tmp_path / "missing.csv", *tiny(tmp_path / "run", epochs=1)])
    assert rc == 1 and not (tmp_path / "run").exists()
