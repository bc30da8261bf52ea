"""Results table, plots and report.md from run folders' logs alone (config.json, metrics.jsonl, summary.json).

Never imports torch; matplotlib is imported only here, and only to draw the PNGs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from scalerec.config import PROTOCOLS, build_config
from scalerec.errors import UserError
from scalerec.files import read_json, write_atomic, write_with
from scalerec.run_folder import CONFIG, FAILED, METRICS, SUMMARY, SWEEP_FILE, read_config, read_metrics, read_summary

COLUMNS = [
    "run",
    "batch",
    "optimizer",
    "lr_scaling",
    "warmup",
    "precision",
    "lr",
    "eval",
    "K",
    "best_HR",
    "vs_base",
    "best_NDCG",
    "best_epoch",
    "epochs",
    "s_to_base_HR",
    "samples_per_s",
    "state",
]


def read_run(run_dir: Path) -> dict | None:
    """One run's logs, or None where the folder is not a scalerec run; UserError naming a file and its field
    where a file is not what scalerec writes (a hand edit, a foreign file)."""
    if (run_dir / FAILED).is_file() and not (run_dir / SUMMARY).is_file():
        summary = read_summary(run_dir / FAILED) or {"state": "failed"}
        return {"name": run_dir.name, "config": None, "metrics": [], "summary": summary}
    raw = read_json(run_dir / CONFIG)
    if not isinstance(raw, dict) or not {"optim", "train", "eval"} <= raw.keys():
        return None  # no config.json, or another program's
    config = read_config(run_dir / CONFIG).to_dict()
    metrics = read_metrics(run_dir / METRICS)
    run = {"name": run_dir.name, "config": config, "metrics": metrics, "summary": None}
    key = hr_key(run)
    for row in metrics:
        for needed in (key, key.replace("HR@", "NDCG@")):
            if needed not in row:
                raise UserError(f"{run_dir / METRICS}: no '{needed}' in epoch {row['epoch']}'s row")
    run["summary"] = read_summary(run_dir / SUMMARY) or {"state": "unfinished"}
    return run


def hr_key(run: dict) -> str:
    """The metric a run's table row reports: HR@10 when the run measured it, else its first K, by the protocol
    that picked its best epoch (sampled_HR@10, full_HR@10; plain HR@10 in runs made before the prefixes)."""
    ev = run["config"]["eval"]
    k = 10 if 10 in ev["topk"] else ev["topk"][0]
    if run["metrics"] and f"HR@{k}" in run["metrics"][0]:
        return f"HR@{k}"
    return f"{PROTOCOLS[ev.get('eval', 'sampled')][-1]}_HR@{k}"


def best_row(run: dict) -> dict:
    """The metrics row of the run's best epoch as its training chose it: on the validation items' metric where the
    run has them (and did not --select-on test), else on the reported one."""
    hr, metrics = hr_key(run), run["metrics"]
    chosen = f"valid_{hr}" if f"valid_{hr}" in metrics[0] else hr
    if run["config"]["eval"].get("select_on", "valid") == "test":
        chosen = hr
    return max(metrics, key=lambda m: m[chosen])  # the first of equals, as training keeps the first


def run_order(name: str) -> tuple:
    """Sweep runs are numbered "1-...", "10-...": sort by that number, then by name."""
    head = name.split("-", 1)[0]
    return (int(head), name) if head.isdigit() else (float("inf"), name)


def collect(path: Path) -> list[dict]:
    """The runs under a sweep folder, or the single run a run folder holds, in name order."""
    path = Path(path)
    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise UserError(f"{path}: {what} (expected a run or sweep folder)")
    single = read_run(path)
    folders = sorted((d for d in path.iterdir() if d.is_dir()), key=lambda d: run_order(d.name))
    runs = [single] if single else [r for d in folders if (r := read_run(d))]
    if not runs:
        raise UserError(f"{path}: holds no run (no config.json in it or in its subfolders)")
    return runs


def base_run(runs: list[dict]) -> dict | None:
    """The run others are measured against: the finished run with the smallest batch (first in order); where none
    finished, the unfinished one with the smallest batch."""
    logged = [r for r in runs if r["config"] and r["metrics"]]
    done = [r for r in logged if r["summary"].get("state") == "finished"] or logged
    return min(done, key=batch_of) if done else None


def batch_of(run: dict) -> int | str:
    """The batch a run trained with: `--batch-size max` is resolved in its summary and metrics; with
    --batch-schedule, the batch it grew to (its last epoch's)."""
    if run["config"]["train"].get("batch_schedule") and run["metrics"]:
        return run["metrics"][-1]["batch_size"]
    for source in (run["summary"], *run["metrics"][:1]):
        if isinstance(source.get("batch_size"), int):
            return source["batch_size"]
    return run["config"]["train"]["batch_size"]


def peak_lr(run: dict) -> float | None:
    """The run's lr after scaling (summary.json), or for an unfinished run the highest lr it logged so far."""
    if "lr" in run["summary"]:
        return run["summary"]["lr"]
    logged = [m["lr"] for m in run["metrics"] if "lr" in m]
    return max(logged) if logged else None


def outcome(run: dict, base_hr: float | None) -> dict:
    """A run's results as numbers (None where there is none): its best epoch's HR@K and NDCG@K, that epoch, its
    epochs, the training seconds until it first reached `base_hr`, its mean samples/s."""
    metrics = run["metrics"]
    out: dict = {**dict.fromkeys(("best_hr", "best_ndcg", "best_epoch", "to_base_s", "samples_per_s")), "epochs": 0}
    if not metrics:
        return out
    hr, best = hr_key(run), best_row(run)
    elapsed = 0.0
    for m in metrics:
        elapsed += m["train_s"]
        if base_hr is not None and m[hr] >= base_hr:
            out["to_base_s"] = elapsed
            break
    out.update(best_hr=best[hr], best_ndcg=best[hr.replace("HR@", "NDCG@")], best_epoch=best["epoch"])
    out.update(epochs=len(metrics), samples_per_s=sum(m["samples_per_s"] for m in metrics) / len(metrics))
    return out


def table(runs: list[dict]) -> list[dict]:
    """One row per run; s_to_base_HR is the training time until the run reached the base run's best HR."""
    base = base_run(runs)
    base_hr = outcome(base, None)["best_hr"] if base else None
    rows = []
    for r in runs:
        cfg, summary = r["config"], r["summary"]
        row = dict.fromkeys(COLUMNS, "")
        row.update(run=r["name"], state=summary.get("state", ""))
        if isinstance(at := summary.get("diverged_at"), dict):
            row["state"] = f"diverged (epoch {at['epoch']}, step {at['step']}, lr {at['lr']:.4g})"
        if cfg:
            o, t, lr = cfg["optim"], cfg["train"], peak_lr(r)
            grown = t.get("batch_schedule") and r["metrics"] and r["metrics"][0]["batch_size"] != batch_of(r)
            row.update(
                batch=f"{r['metrics'][0]['batch_size']}->{batch_of(r)}" if grown else batch_of(r),
                optimizer=o["optimizer"],
                lr_scaling=o["lr_scaling"],
                warmup=o["warmup"],
                precision=t.get("precision", "fp32"),
                lr=f"{lr:.4g}" if lr is not None else "",
                eval=hr_key(r).split("_")[0] if "_" in hr_key(r) else "sampled",
                K=hr_key(r).split("@")[1],
            )
        if r["metrics"]:
            got = outcome(r, base_hr)
            row.update(
                best_HR=f"{got['best_hr']:.4f}",
                vs_base=f"{got['best_hr'] - base_hr:+.4f}" if base_hr is not None else "",
                best_NDCG=f"{got['best_ndcg']:.4f}",
                best_epoch=got["best_epoch"],
                epochs=got["epochs"],
                s_to_base_HR=round(got["to_base_s"], 1) if got["to_base_s"] is not None else "",
                samples_per_s=round(got["samples_per_s"]),
            )
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# What each figure shows, under it in report.md.
CAPTIONS = {
    "hr_per_epoch.png": "HR@K after each epoch, one line per run.",
    "loss_per_epoch.png": "The mean training loss of each epoch, one line per run.",
    "best_hr_vs_batch.png": "Each run's best HR@K against its batch, one line per method (optimizer, lr rule, "
    "warmup, precision). A red ring: the run diverged after that best epoch; a red cross at 0: it logged no epoch "
    "(diverged, failed or stopped before one; its state by its name).",
    "time_to_target.png": "Training seconds until each run first reached the base run's best HR@K, against its "
    "batch (the notebook's time to target); a run that never reached it is not drawn.",
    "throughput_vs_batch.png": "Mean training samples per second against the batch, one line per method.",
    "lr_schedule.png": "Each run's learning rate over its epochs (warmup, scaling, decay).",
}


def plots(runs: list[dict], out: Path) -> list[str]:
    """figures.FIGURES drawn from the runs' logs, as PNGs in `out`; their names."""
    from scalerec.figures import figures

    made = []
    for name, fig in figures(runs, base_run(runs)).items():
        write_with(out / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        made.append(name)
    return made


def base_text(base: dict | None, runs: list[dict]) -> str:
    if base is None:
        return "no run logged an epoch"
    if base["summary"].get("state") == "finished":
        text = "the finished run with the smallest batch"
    else:
        text = "no run finished: the unfinished run with the smallest batch"
    # a run of a smaller batch that did not finish (it diverged, say) would have been the base: say so
    smaller = [
        f"`{r['name']}` ({r['summary'].get('state') or 'not finished'})"
        for r in runs
        if r is not base
        and r["config"]
        and isinstance(batch_of(r), int)
        and isinstance(batch_of(base), int)
        and batch_of(r) < batch_of(base)
    ]
    return text + (f"; of a smaller batch, {', '.join(smaller)} did not finish" if smaller else "")


BEST_CONFIG = "best.toml"  # the best run's options, in a sweep folder


def best_run(runs: list[dict]) -> tuple[dict, str, int] | None:
    """Of two or more runs, the finished one whose best epoch scored highest, the metric it was chosen on, and how
    many runs were compared: the finished runs that measured the first one's metric (its protocol and K), on their
    validation items where every one has them and chose its best epoch on them, else on the reported (test) one.
    None where no run finished."""
    done = [r for r in runs if r["config"] and r["metrics"] and r["summary"].get("state") == "finished"]
    if len(runs) < 2 or not done:
        return None
    hr = hr_key(done[0])
    done = [r for r in done if hr_key(r) == hr]
    on_valid = all(
        f"valid_{hr}" in best_row(r) and r["config"]["eval"].get("select_on", "valid") == "valid" for r in done
    )
    key = f"valid_{hr}" if on_valid else hr
    return max(done, key=lambda r: best_row(r)[key]), key, len(done)


def best_text(path: Path, runs: list[dict]) -> list[str]:
    """report.md's lines on the best run, whose options are written to `path`/best.toml; none for a single run."""
    best = best_run(runs)
    if best is None:
        if (path / SWEEP_FILE).is_file():  # a sweep's own file, from an earlier report
            (path / BEST_CONFIG).unlink(missing_ok=True)
        return []
    run, key, compared = best
    row, test = best_row(run), key.removeprefix("valid_")
    on = "their validation items" if key != test else "their test items (not every run chose on validation items)"
    header = (
        f"scalerec train --config {path / BEST_CONFIG} --output RUN\nThe best of {compared} finished runs in {path}: "
    )
    header += f"{run['name']}, {key} = {row[key]:.4f} at epoch {row['epoch']}"
    write_atomic(path / BEST_CONFIG, build_config(run["config"]).to_toml(header))
    scores = f"{key} = {row[key]:.4f}" + (f", test {test} = {row[test]:.4f}" if key != test else "")
    return [
        f"Best run: `{run['name']}` ({scores}, at epoch {row['epoch']}), of {compared} finished runs compared on "
        f"{on}. Its options are in `{BEST_CONFIG}`: `scalerec train --config {path / BEST_CONFIG} --output RUN` "
        "trains it again.",
        "",
    ]


def write_report(path: Path) -> Path:
    """Write results.csv, results.md, the PNGs and report.md into `path`; returns report.md."""
    path = Path(path)
    runs = collect(path)
    rows = table(runs)
    write_atomic(path / "results.csv", to_csv(rows))
    write_atomic(path / "results.md", markdown(rows))
    try:
        images = plots(runs, path)
    except ModuleNotFoundError:
        images = []
    base = base_run(runs)
    text = ["# scalerec report", "", f"{len(runs)} run(s) in `{path}`.", "", markdown(rows)]
    text += [
        f"Base run: `{base['name'] if base else 'none'}` ({base_text(base, runs)}). "
        "`vs_base`: a run's best HR@K minus the base run's. `s_to_base_HR`: training seconds until a run first "
        "reached the base run's best HR@K; empty where it never did. `K`: the cut-off of best_HR and best_NDCG "
        "(10 where the run measured it); `eval`: their protocol (sampled negatives, or full ranking).",
        "",
    ]
    text += best_text(path, runs)
    text += [f"![{name}]({name})\n\n{CAPTIONS[name]}\n" for name in images] or [
        "(plots need matplotlib: pip install matplotlib)"
    ]
    write_atomic(path / "report.md", "\n".join(text) + "\n")
    return path / "report.md"
