"""Results table, plots and report.md from run folders' logs alone (config.json, metrics.jsonl, summary.json).

Never imports torch; matplotlib is imported only here, and only to draw the PNGs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from scalerec.errors import UserError
from scalerec.files import write_atomic, write_with

COLUMNS = [
    "run",
    "batch",
    "optimizer",
    "lr_scaling",
    "warmup",
    "precision",
    "lr",
    "best_HR@10",
    "best_NDCG@10",
    "best_epoch",
    "epochs",
    "s_to_base_HR@10",
    "samples_per_s",
    "state",
]


def read_run(run_dir: Path) -> dict | None:
    """One run's logs, or None where the folder is not a run."""
    if (run_dir / "failed.json").is_file() and not (run_dir / "summary.json").is_file():
        return {
            "name": run_dir.name,
            "config": None,
            "metrics": [],
            "summary": json.loads((run_dir / "failed.json").read_text()),
        }
    if not (run_dir / "config.json").is_file():
        return None
    metrics_path = run_dir / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_path.read_text().splitlines() if x] if metrics_path.exists() else []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"state": "unfinished"}
    return {
        "name": run_dir.name,
        "config": json.loads((run_dir / "config.json").read_text()),
        "metrics": metrics,
        "summary": summary,
    }


def collect(path: Path) -> list[dict]:
    """The runs under a sweep folder, or the single run a run folder holds, in name order."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (expected a run or sweep folder)")
    single = read_run(path)
    runs = [single] if single else [r for d in sorted(path.iterdir()) if d.is_dir() and (r := read_run(d))]
    if not runs:
        raise UserError(f"{path}: holds no run (no config.json in it or in its subfolders)")
    return runs


def table(runs: list[dict]) -> list[dict]:
    """One row per run. The base run is the one with the smallest batch (the first by name among equals)."""
    done = [r for r in runs if r["config"] and r["metrics"]]
    base = min(done, key=lambda r: (r["config"]["train"]["batch_size"], r["name"])) if done else None
    base_hr = max(m["HR@10"] for m in base["metrics"]) if base else None
    rows = []
    for r in runs:
        cfg, summary, metrics = r["config"], r["summary"], r["metrics"]
        row = dict.fromkeys(COLUMNS, "")
        row.update(run=r["name"], state=summary.get("state", ""))
        if cfg:
            o, t = cfg["optim"], cfg["train"]
            row.update(
                batch=t["batch_size"],
                optimizer=o["optimizer"],
                lr_scaling=o["lr_scaling"],
                warmup=o["warmup"],
                precision=t.get("precision", "fp32"),
                lr=f"{summary['lr']:.4g}" if "lr" in summary else "",
            )
        if metrics:
            best = max(metrics, key=lambda m: m["HR@10"])
            elapsed, reached = 0.0, ""
            for m in metrics:
                elapsed += m["train_s"]
                if base_hr is not None and m["HR@10"] >= base_hr:
                    reached = round(elapsed, 1)
                    break
            row.update(
                {
                    "best_HR@10": round(best["HR@10"], 4),
                    "best_NDCG@10": round(best["NDCG@10"], 4),
                    "best_epoch": best["epoch"],
                    "epochs": len(metrics),
                    "s_to_base_HR@10": reached,
                    "samples_per_s": round(sum(m["samples_per_s"] for m in metrics) / len(metrics)),
                }
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


def plots(runs: list[dict], rows: list[dict], out: Path) -> list[str]:
    """HR@10 per epoch, best HR@10 against batch size per method, and each run's lr schedule, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        write_with(out / name, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        made.append(name)

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        if r["metrics"]:
            ax.plot([m["epoch"] for m in r["metrics"]], [m["HR@10"] for m in r["metrics"]], marker="o", label=r["name"])
    ax.set(xlabel="epoch", ylabel="HR@10", title="HR@10 per epoch")
    ax.legend(fontsize=7)
    save(fig, "hr_per_epoch.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    methods: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row["best_HR@10"] != "":
            key = f"{row['optimizer']} {row['lr_scaling']} warmup={row['warmup']} {row['precision']}"
            methods.setdefault(key, []).append((row["batch"], row["best_HR@10"]))
    for key, points in methods.items():
        points.sort()
        ax.plot(*zip(*points), marker="o", label=key)
    ax.set(xscale="log", xlabel="batch size", ylabel="best HR@10", title="Best HR@10 against batch size")
    ax.legend(fontsize=7)
    save(fig, "best_hr_vs_batch.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        schedule = r["summary"].get("lr_schedule")
        if schedule:
            steps_per_epoch = r["summary"]["steps_per_epoch"]
            ax.plot([s / steps_per_epoch for s, _ in schedule], [lr for _, lr in schedule], label=r["name"])
    ax.set(yscale="log", xlabel="epoch", ylabel="learning rate", title="Learning-rate schedule")
    ax.legend(fontsize=7)
    save(fig, "lr_schedule.png")
    return made


def write_report(path: Path) -> Path:
    """Write results.csv, results.md, the PNGs and report.md into `path`; returns report.md."""
    path = Path(path)
    runs = collect(path)
    rows = table(runs)
    write_atomic(path / "results.csv", to_csv(rows))
    write_atomic(path / "results.md", markdown(rows))
    try:
        images = plots(runs, rows, path)
    except ModuleNotFoundError:
        images = []
    text = ["# scalerec report", "", f"{len(runs)} run(s) in `{path}`.", "", markdown(rows)]
    text += [
        "`s_to_base_HR@10`: training seconds until the run first reached the best HR@10 of the base run "
        "(the smallest batch); empty where it never did.",
        "",
    ]
    text += [f"![{name}]({name})" for name in images] or ["(plots need matplotlib: pip install matplotlib)"]
    write_atomic(path / "report.md", "\n".join(text) + "\n")
    return path / "report.md"
