"""Starting a model from trained runs' weights (--init-from), and NeuMF's pretraining as the NCF paper does it
(--pretrain): GMF, then MLP, each a run of its own in the run's folder (gmf/, mlp/), then NeuMF from their best
models. The whole is one run: its config.json is written first, so that --resume continues it in whichever stage
it stopped (a finished stage is kept, an unfinished one continues from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from scalerec import checkpoint, distributed, run_folder
from scalerec.config import Config, OptimConfig
from scalerec.errors import Diverged, UserError
from scalerec.files import write_atomic

# NeuMF's prediction layer from a pretrained GMF's and MLP's: alpha h_GMF ‖ (1 - alpha) h_MLP, its bias
# alpha b_GMF + (1 - alpha) b_MLP (He et al. 2017, section 3.4.1, with their alpha).
ALPHA = 0.5


def train_with_pretraining(
    cfg: Config, log: Callable[[str], None], resume: Path | None, tune_malloc: bool = True
) -> dict:
    """The --pretrain run: its stages (each skipped where finished), then NeuMF from their best models; returns
    NeuMF's summary. The same options into the same folder continue an unfinished run, as --resume does."""
    from scalerec.training import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or distributed.restarts_allowed():
        raise UserError(
            "--pretrain: run it in one process (a data-parallel run can start from its stages' folders "
            "with --init-from)"
        )
    held = run_folder.claim(cfg, resume, adopt=True)  # the run's checks; its lock while the stages train
    try:
        run_dir = held.run_dir
        if (run_dir / run_folder.CONFIG).is_file():
            if not run_folder.same_config(run_dir, cfg):
                raise UserError(
                    f"{run_dir}: a --pretrain run with other options; resume it (--resume {run_dir}) or "
                    "choose another folder"
                )
        else:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output=str(run_dir)))
            write_atomic(run_dir / run_folder.CONFIG, cfg.to_json() + "\n")  # what --resume reads, from the start
    finally:
        held.release()
    for name in run_folder.PRETRAIN_STAGES:
        stage = stage_config(cfg, name, run_dir)
        summary = run_folder.read_summary(run_dir / name / run_folder.SUMMARY) or {}
        if summary.get("state") == "finished" and run_folder.same_config(run_dir / name, stage):
            log(f"== Pretraining {name.upper()}: finished in {run_dir / name}, kept")
            continue
        if summary.get("state") != "diverged":
            log(f"== Pretraining {name.upper()} ({stage.optim.optimizer}, lr {stage.optim.lr:g}) into {run_dir / name}")
            try:
                summary = train(stage, log, adopt=True, tune_malloc=tune_malloc)
            except KeyboardInterrupt:
                log(f"Stopped in the {name.upper()} stage; scalerec train --resume {run_dir} continues the run")
                raise
        if summary.get("state") == "diverged":
            at = summary["diverged_at"]
            raise Diverged(
                f"--pretrain: the {name.upper()} stage diverged (epoch {at['epoch']}, step {at['step']}, lr "
                f"{at['lr']:g}); NeuMF starts from finished stages: train anew in another folder, with a lower "
                "--pretrain-lr"
            )
    log(f"== NeuMF from the pretrained GMF and MLP, into {run_dir}")
    if (run_dir / checkpoint.FILE).is_file():
        return train(cfg, log, resume=run_dir, tune_malloc=tune_malloc, pretrained=True)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output=str(run_dir)))
    return train(cfg, log, adopt=True, tune_malloc=tune_malloc, pretrained=True)


def stage_config(cfg: Config, name: str, run_dir: Path) -> Config:
    """A pretraining stage's options: the run's data, model sizes, batch, negatives and evaluation; the model
    `name`; the optimizer --pretrain-optimizer at --pretrain-lr, with the run's --l2 and --decay (every other
    optimizer option at its default); its epochs --pretrain-epochs (default: the run's); its folder run_dir/name."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(m, model=name, pretrain=False, init_from=()),
        optim=OptimConfig(optimizer=m.pretrain_optimizer, lr=m.pretrain_lr, l2=o.l2, decay=o.decay),
        train=dataclasses.replace(t, output=str(run_dir / name), epochs=m.pretrain_epochs or t.epochs),
    )


def sources(cfg: Config, run_dir: Path) -> list[Path]:
    """The run folders whose weights start this run's model: --init-from's, or with --pretrain its stages'."""
    if cfg.model.pretrain:
        return [run_dir / name for name in run_folder.PRETRAIN_STAGES]
    return [Path(p) for p in cfg.model.init_from]


def start(model: torch.nn.Module, runs: list[Path], ds, log: Callable[[str], None]) -> None:
    """A new run's model from `runs`' weights (`init_from`), said; nothing where there are none."""
    if runs:
        for line in init_from(model, runs, checkpoint.fingerprint(ds)):
            log(line)


def init_from(model: torch.nn.Module, runs: list[Path], fingerprint: str) -> list[str]:
    """Copy into `model` every tensor of the same name and shape from the runs' best models (the first run that
    has it); NeuMF's prediction layer from a GMF run's and an MLP run's (ALPHA). Returns the log's lines.
    UserError where a run trained on other data than `fingerprint`'s, or gave nothing that fits."""
    own, lines, taken = model.state_dict(), [], set()
    heads = {}  # a GMF's or MLP's prediction layer: (weight, bias)
    for run in runs:
        best = checkpoint.load_best(run)
        if best.get("data_fingerprint") not in (None, fingerprint):
            raise UserError(f"--init-from {run}: trained on other data than this run's (or another split of it)")
        kind, weights = best["config"]["model"]["model"], best["model"]
        fits = [k for k, v in weights.items() if k in own and k not in taken and own[k].shape == v.shape]
        if "predict.weight" not in fits:  # a prediction layer fits whole or not at all
            fits = [k for k in fits if not k.startswith("predict.")]
        if kind in ("gmf", "mlp") and "predict.weight" in weights:
            heads[kind] = (weights["predict.weight"], weights["predict.bias"])
        if not fits:
            raise UserError(
                f"--init-from {run}: none of its weights fit this model (its {kind}, with other sizes or branches)"
            )
        with torch.no_grad():
            for k in fits:
                own[k].copy_(weights[k])
        taken.update(fits)
        lines.append(f"Initialised from {run} ({kind}, its best epoch {best['epoch']}): {len(fits)} tensors")
    if "predict.weight" not in taken and heads.keys() == {"gmf", "mlp"} and getattr(model, "use_gmf", False):
        (wg, bg), (wm, bm) = heads["gmf"], heads["mlp"]
        if own["predict.weight"].shape[1] == wg.shape[1] + wm.shape[1]:
            with torch.no_grad():
                own["predict.weight"].copy_(torch.cat([ALPHA * wg, (1 - ALPHA) * wm], dim=1))
                own["predict.bias"].copy_(ALPHA * bg + (1 - ALPHA) * bm)
            taken.update(("predict.weight", "predict.bias"))
            lines.append(f"Prediction layer: {ALPHA:g} x GMF's | {1 - ALPHA:g} x MLP's")
    if fresh := [k for k in own if k not in taken]:
        lines.append(f"Not in those runs, initialised afresh: {', '.join(fresh)}")
    return lines
