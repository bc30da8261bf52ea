"""The report's figures, from the runs' logs alone: matplotlib Figures that report.py saves as PNGs (and that tests
read back, line by line). Every figure is titled with the dataset, the protocol and K; lines are told apart by
marker and style as well as colour; epochs are whole numbers; a diverged run is drawn, marked and named.
"""

from __future__ import annotations

import itertools
from typing import Any

from scalerec.config import parse_batch_schedule
from scalerec.report import batch_of, hr_key, outcome

FIGURES = (
    "hr_per_epoch.png",
    "loss_per_epoch.png",
    "best_hr_vs_batch.png",
    "time_to_target.png",
    "throughput_vs_batch.png",
    "lr_schedule.png",
)
MARKERS, STYLES = "os^vDPX*<>", ("-", "--", "-.", ":")


def styles() -> itertools.cycle:
    """(marker, linestyle) pairs, no two alike for the first 40 lines."""
    return itertools.cycle([{"marker": m, "linestyle": s} for s in STYLES for m in MARKERS])


def method(run: dict) -> str:
    """What a line of the batch-size figures joins: runs of one optimizer, lr rule, warmup and precision."""
    o, t = run["config"]["optim"], run["config"]["train"]
    schedule = t.get("batch_schedule")  # a line of its own where the batch grows within the run
    grown = schedule and any(0 < e < t["epochs"] for e, _ in parse_batch_schedule(schedule))
    grown = ", batch grown" if grown else ""
    return f"{o['optimizer']}, lr {o['lr_scaling']}, warmup {o['warmup']}, {t.get('precision', 'fp32')}{grown}"


def subtitle(runs: list[dict]) -> str:
    """The dataset, the protocol and K of the runs' figures."""
    logged = [r for r in runs if r["config"]]
    datasets = sorted({str(r["summary"].get("dataset")) for r in logged if r["summary"].get("dataset")}) or ["?"]
    keys = sorted({hr_key(r) for r in logged})
    protocols = sorted({k.split("_")[0] if "_" in k else "sampled" for k in keys})
    ks = sorted({k.split("@")[1] for k in keys}, key=int)
    return f"{', '.join(datasets)}; {'/'.join(protocols)} ranking, K = {', '.join(ks)}"


def figures(runs: list[dict], base: dict | None) -> dict[str, Any]:
    """Each of FIGURES by name, as a matplotlib Figure (the caller saves them)."""
    from matplotlib.figure import Figure  # not pyplot: no backend chosen, nothing to close, a notebook's left alone
    from matplotlib.ticker import MaxNLocator

    base_hr = outcome(base, None)["best_hr"] if base else None
    done = {r["name"]: outcome(r, base_hr) for r in runs}
    logged = [r for r in runs if r["config"] and r["metrics"]]
    made = {}

    def figure(name: str, title: str, xlabel: str, ylabel: str, xlog: bool = False):
        fig = Figure(figsize=(8, 5))
        ax = fig.subplots()
        ax.set(title=f"{title}\n{subtitle(runs)}", xlabel=xlabel, ylabel=ylabel, xscale="log" if xlog else "linear")
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        made[name] = fig
        return ax

    for name, field, title in (("hr_per_epoch.png", None, "HR@K per epoch"), ("loss_per_epoch.png", "loss", "Loss")):
        ax = figure(name, title, "epoch", "HR@K" if field is None else "training loss (mean BCE)")
        for r, style in zip(logged, styles()):
            key = field or hr_key(r)
            rows = [m for m in r["metrics"] if key in m]  # a row of an older scalerec may lack the loss
            ax.plot([m["epoch"] for m in rows], [m[key] for m in rows], label=r["name"], **style)
        finish(ax)
    by_batch(figure("best_hr_vs_batch.png", "Best HR@K against batch size", "batch size", "best HR@K", True),
             runs, done, "best_hr")  # fmt: skip
    target = f"training seconds to the base run's best HR@K ({base_hr:.4f})" if base_hr is not None else "no base run"
    by_batch(figure("time_to_target.png", "Time to the base run's HR@K", "batch size", target, True), runs, done,
             "to_base_s")  # fmt: skip
    by_batch(figure("throughput_vs_batch.png", "Throughput against batch size", "batch size", "samples/s", True),
             runs, done, "samples_per_s")  # fmt: skip
    ax = figure("lr_schedule.png", "Learning-rate schedule", "epoch", "learning rate")
    for r, style in zip(runs, styles()):
        if schedule := r["summary"].get("lr_schedule"):
            xs, ys = [epoch_at(r["summary"], s) for s, _ in schedule], [lr for _, lr in schedule]
            ax.plot(xs, ys, label=r["name"], markevery=max(1, len(xs) // 8), **style)
    if ax.lines:
        ax.set_yscale("log")
    finish(ax, "no finished run: no schedule logged")
    return made


def epoch_at(summary: dict, step: int) -> float:
    """Where global `step` falls in epochs: by the steps per epoch, or --batch-schedule's epoch starts."""
    starts = summary.get("epoch_starts")
    if not starts:
        return step / summary["steps_per_epoch"]
    epoch = max(e for e in range(len(starts) - 1) if starts[e] <= step)
    return epoch + (step - starts[epoch]) / (starts[epoch + 1] - starts[epoch])


def by_batch(ax, runs: list[dict], done: dict[str, dict], field: str) -> None:
    """`field` of each run's outcome against its batch, one line per method in batch order. Diverged runs are marked
    (a red ring) and named; for the best HR, a run that diverged before any epoch is a cross at 0, named."""
    lines: dict[str, list[tuple[int, float, dict]]] = {}
    for r in runs:
        if r["config"] and isinstance(batch_of(r), int) and done[r["name"]][field] is not None:
            lines.setdefault(method(r), []).append((batch_of(r), done[r["name"]][field], r))
    for (label, points), style in zip(lines.items(), styles()):
        points.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
        for x, y, r in points:
            if r["summary"].get("state") == "diverged":
                ax.scatter([x], [y], s=160, facecolors="none", edgecolors="red", zorder=3)
                ax.annotate(f"{r['name']} (diverged later)", (x, y), textcoords="offset points", xytext=(6, -10),
                            fontsize=6, color="red")  # fmt: skip
    lost = [r for r in runs if r["config"] and isinstance(batch_of(r), int) and done[r["name"]]["best_hr"] is None]
    if field == "best_hr" and lost:
        ax.scatter([batch_of(r) for r in lost], [0.0] * len(lost), marker="x", color="red", label="no epoch logged")
        stacked: dict[int, int] = {}
        for r in lost:  # runs at the same batch: their names (and why: diverged, failed, stopped) stacked upwards
            stacked[batch_of(r)] = stacked.get(batch_of(r), -1) + 1
            ax.annotate(f"{r['name']} ({r['summary'].get('state') or 'unfinished'})", (batch_of(r), 0.0),
                        textcoords="offset points", xytext=(4, 4 + 9 * stacked[batch_of(r)]), fontsize=6)  # fmt: skip
    finish(ax, "no run to show")


def finish(ax, empty: str = "no run logged an epoch") -> None:
    """A legend where there are labelled lines or points (matplotlib warns on an empty one), else `empty` said."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    elif not ax.collections:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
