r"""Stage `tune`: search two-tower training settings with Optuna, tracked in MLflow.

    twotower tune --config configs/movielens.toml --set n_trials=30
    twotower tune --config configs/movielens.toml --space lr=log:1e-4:1e-2 tower.dim=cat:32,64,128

The base model is the `train_two_tower` stage's config: with `--config FILE` its
`[train_two_tower]` table and the file's `run_dir` and `device` (a `[tune.base]` table, or
`--base.train.epochs 10`, overrides them), so the prepared folder, the embeddings, the name
and every training setting the search leaves alone come from there. Each trial trains that
model in this process (`twotower.train.fit`, no checkpoints, no vector export) with the
trial's settings, and scores it by the best epoch's validation recall@val_k. The first
trial of a study trains the base config itself (its searched settings that lie inside the
space), so the best trial is never worse on validation than what the search started from;
then a TPE sampler picks the settings; a median pruner stops a trial whose validation recall
at an epoch (from `prune_warmup_epochs` on) is below the median of earlier trials at that
epoch.

The search space maps a setting of `TrainConfig` (dotted for the tower: `tower.dim`) to a
spec: `log:LOW:HIGH` (log-uniform; an int setting draws ints), `float:LOW:HIGH` (uniform),
`int:LOW:HIGH`, or `cat:A,B,C`. `--space` (or a `[tune.space]` table, keys quoted:
`"tower.dim" = "cat:32,64,128"`) replaces the whole default space `DEFAULT_SPACE`.

Outputs in `<run_dir>/tune/<name>/`: `study.db` (the study, when `--storage` is not given),
`best.toml` (the base config with the best trial's settings, under the name `<name>_tuned`:
`twotower train_two_tower --config <run_dir>/tune/<name>/best.toml` trains it), `trials.csv`
(one row per trial), `history.png` (each trial's value and the best so far) and
`importances.png` (how much each setting mattered). MLflow holds one `tune` run with a nested
run `trial-<number>` per trial (its config as params, its per-epoch metrics); the `tune` run
gets the best value, the best settings (`best.<key>`) and the files.

Resuming: the study lives in its storage, so running the same command again continues it
until `n_trials` trials are complete or pruned; `timeout_minutes` bounds each run: no trial
starts after it, and a trial still training then stops at its next epoch and scores its best
epoch so far (its trial attribute `stopped` says so). A trial whose process was killed stops
sending heartbeats; after `grace_seconds` the next run marks it failed (it never counts) and
runs its settings again.

Several machines, one study: point `--storage` at a database every machine reaches, e.g.
`postgresql://user:pw@host/db` or `mysql+pymysql://user:pw@host/db` (install its driver),
and run the same command with the same `--study-name` on each, each with its own `--seed`;
set MLFLOW_TRACKING_URI to one tracking server for one MLflow record. SQLite (the default
storage) is for one machine. One process per machine: tune does not run under torchrun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import tomli_w
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from pipelines.config import _parser_for, _unwrap_optional, parse_config, resolve_device
from pipelines.tracking import stage_run
from pipelines.train_two_tower import TrainTwoTowerConfig
from twotower.files import DataError, atomic_path
from twotower.inputs import read_catalog
from twotower.train import TrainConfig, fit
from twotower.vectors import read_vectors

__all__ = ["DEFAULT_SPACE", "TuneConfig", "apply_params", "main", "parse_space", "run"]

STAGE = "tune"

DEFAULT_SPACE: dict[str, str] = {
    "lr": "log:3e-4:1e-2",
    "weight_decay": "log:1e-6:1e-2",
    "temperature": "log:0.03:0.3",
    "batch_size": "cat:256,512,1024",
    "max_history": "int:10:100",
    "tower.dim": "cat:64,128,256",
    "tower.id_dim": "cat:32,64,128,256",
    "tower.hidden_dim": "cat:128,256",
    "tower.image_dim": "cat:32,128",
    "tower.id_dropout": "float:0.0:0.5",
}
"""The search space of `twotower tune`: a `TrainConfig` setting → its spec, one line each.
Around the defaults that measured best (benchmarks/README.md, bench_two_tower.py); the image
projection only matters to a model given image embeddings."""

_SET_BY_STAGE = ("device", "checkpoint_dir")
"""TrainConfig settings the stage sets itself: not searchable, not written to best.toml."""
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
"""The trial states `n_trials` counts."""


@dataclass
class TuneConfig:
    """Search two-tower training settings with Optuna (stage `tune`)."""

    base: TrainTwoTowerConfig = field(default_factory=TrainTwoTowerConfig)
    """The model to tune: run folder, prepared folder, embeddings, name, every setting not
    searched (with --config: the file's [train_two_tower] table, run_dir and device)."""
    n_trials: int = 30
    """Complete or pruned trials the study should reach (a resumed study runs the rest)."""
    timeout_minutes: float | None = 30.0
    """How long this run (not the study) may search: no trial starts after it, and the one
    training then stops at its next epoch with its best epoch so far; None: no limit."""
    storage: str | None = None
    """Optuna RDB URL of the study (postgresql://..., mysql+pymysql://... to share it between
    machines); None: SQLite at <run_dir>/tune/<name>/study.db."""
    study_name: str | None = None
    """The study's name in its storage; None: the base name."""
    seed: int = 0
    """Seeds the TPE sampler (give each machine of a shared study its own)."""
    space: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    """TrainConfig setting → log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or cat:A,B,C;
    replaces the whole default space."""
    pruning: bool = True
    """Stop trials whose validation recall falls below the median of earlier trials'."""
    prune_warmup_epochs: int = 2
    """The first epoch at which a trial may be pruned."""
    prune_startup_trials: int = 5
    """Trials that run unpruned before pruning starts (the median needs some)."""
    heartbeat_seconds: int = 60
    """How often a running trial records that its process is alive."""
    grace_seconds: int = 180
    """A running trial silent this long is failed (its process died) and retried."""
    stale_retries: int = 2
    """How many times the settings of a died trial are retried."""

    def __post_init__(self) -> None:
        if isinstance(self.base, dict):
            self.base = TrainTwoTowerConfig(**self.base)
        for name in ("n_trials", "prune_warmup_epochs", "heartbeat_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("prune_startup_trials", "stale_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(f"grace_seconds ({self.grace_seconds}) must exceed "
                             f"heartbeat_seconds ({self.heartbeat_seconds}), or live trials "
                             "are failed between two heartbeats")
        if self.timeout_minutes is not None and self.timeout_minutes <= 0:
            raise ValueError(f"timeout_minutes must be positive or None, got "
                             f"{self.timeout_minutes}")
        if self.storage is not None and "://" not in self.storage:
            raise ValueError(f"storage must be a database URL (sqlite:///path/study.db, "
                             f"postgresql://user:pw@host/db, ...), got {self.storage!r}")
        if self.study_name is not None and not self.study_name.strip():
            raise ValueError("study_name must not be empty; None takes the base name")
        parse_space(self.space, self.base.train)

    @property
    def out_dir(self) -> Path:
        return Path(self.base.run_dir) / STAGE / self.base.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or self.base.name


# -------------------------------------------------------------------- the search space
def parse_space(space: Mapping[str, str], train: TrainConfig | None = None
                ) -> dict[str, BaseDistribution]:
    """Specs (`"tower.dim": "cat:32,64"`) → Optuna distributions, each checked against
    `TrainConfig`: the key must be a setting, the values of its type, and every bound or
    choice accepted by `train` (default: TrainConfig()) with it applied."""
    if not space:
        raise ValueError("the search space is empty; give at least one --space KEY=SPEC")
    train = train or TrainConfig()
    kinds = _searchable(TrainConfig)
    out: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if key not in kinds:
            raise ValueError(f"space key {key!r} is not a TrainConfig setting; valid keys: "
                             f"{', '.join(kinds)}")
        try:
            out[key] = _distribution(spec, kinds[key])
            ends = (out[key].choices if isinstance(out[key], CategoricalDistribution)
                    else (out[key].low, out[key].high))
            for value in ends:
                apply_params(train, {key: value})
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"space {key}={spec!r}: {err}") from None
    return out


def _searchable(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted setting → type of every field of `cls` and its nested config dataclasses."""
    out: dict[str, Any] = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            out.update(_searchable(kind, f"{prefix}{name}."))
        elif f"{prefix}{name}" not in _SET_BY_STAGE:
            out[f"{prefix}{name}"] = kind
    return out


def _distribution(spec: str, kind: Any) -> BaseDistribution:
    """One spec of a setting of type `kind` → its Optuna distribution."""
    form, _, rest = spec.partition(":")
    base, optional = _unwrap_optional(kind)
    if form == "cat":
        parse = _parser_for(base, optional)  # "none" is a choice of an optional setting
        return CategoricalDistribution([parse(text.strip()) for text in rest.split(",")])
    if form not in ("log", "float", "int"):
        raise ValueError("a spec is log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or cat:A,B,C")
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ValueError(f"{form} takes two bounds, {form}:LOW:HIGH")
    if base is float and form != "int":
        return FloatDistribution(float(bounds[0]), float(bounds[1]), log=form == "log")
    if base is int and form != "float":
        return IntDistribution(int(bounds[0]), int(bounds[1]), log=form == "log")
    allowed = {float: "log, float or cat", int: "int, log or cat"}.get(base, "cat")
    raise ValueError(f"a setting of type {getattr(base, '__name__', base)} takes {allowed}")


def _base_params(train: TrainConfig, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The base config's value of every searched setting that lies inside its range."""
    params = {}
    for key, dist in space.items():
        value: Any = train
        for part in key.split("."):
            value = getattr(value, part)
        inside = (value in dist.choices if isinstance(dist, CategoricalDistribution)
                  else dist.low <= value <= dist.high)
        if inside:
            params[key] = value
    return params


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def apply_params(config: Any, params: Mapping[str, Any]) -> Any:
    """A copy of the config dataclass with dotted settings replaced (`tower.dim` → 64),
    checked by its `__post_init__`."""
    flat, nested = {}, {}
    for key, value in params.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, inner in nested.items():
        flat[head] = apply_params(getattr(config, head), inner)
    return dataclasses.replace(config, **flat)


# -------------------------------------------------------------------- the stage
def run(cfg: TuneConfig, *, pruner: optuna.pruners.BasePruner | None = None) -> dict[str, Any]:
    """Run (or resume) the study, write its outputs and return a summary.

    pruner: replaces the median pruner the config describes (any Optuna pruner)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("tune runs one process per machine; share one study between "
                         "machines with --storage instead of torchrun")
    space = parse_space(cfg.space, cfg.base.train)
    device = resolve_device(cfg.base.device)
    base = dataclasses.replace(cfg.base, device=device, train=dataclasses.replace(
        cfg.base.train, device=device, checkpoint_dir=None))
    embeddings = read_vectors(base.embeddings) if base.embeddings else None
    catalog = read_catalog(base.catalog, base.attributes) if base.attributes else None
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    study = _study(cfg, pruner)
    start = _base_params(base.train, space)
    if start:  # the settings the search must beat are its first trial (once per study)
        study.enqueue_trial(start, user_attrs={"start": "base config"}, skip_if_exists=True)
    deadline = (None if cfg.timeout_minutes is None
                else time.monotonic() + cfg.timeout_minutes * 60)

    def objective(trial: optuna.Trial) -> float:
        params = {key: _suggest(trial, key, dist) for key, dist in space.items()}
        trial_cfg = dataclasses.replace(base, train=apply_params(base.train, params))
        pruned = None
        recalls: list[float] = []
        with stage_run(f"trial-{trial.number}", trial_cfg, base.run_dir) as tracker:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)

            def log(metrics: Mapping[str, float], step: int) -> None:
                if not any(k.startswith("epoch/") for k in metrics):
                    return  # per-step loss: not kept for every trial
                tracker.log(metrics, step)
                recall = _recall(metrics)
                if recall is None:
                    return
                recalls.append(recall)
                trial.report(recall, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"recall {recall:.4f} at epoch {step}")
                if deadline is not None and time.monotonic() > deadline:
                    raise _OutOfTime

            try:
                fit(base.prepared_dir, trial_cfg.train, embeddings=embeddings,
                    catalog=catalog, attributes=base.attributes,
                    new_products=base.new_products, log=log, progress=False)
            except optuna.TrialPruned as err:
                pruned = err
            except _OutOfTime:
                trial.set_user_attr("stopped", f"timeout after epoch {len(recalls)}")
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE")
        if pruned is not None:
            raise pruned
        if not recalls:
            raise DataError("no validation users: tune scores trials on the valid split",
                            path=base.prepared_dir)
        return max(recalls)

    logged = dataclasses.replace(cfg, storage=_hide_password(cfg.storage_url),
                                 study_name=cfg.name)
    with stage_run(STAGE, logged, cfg.base.run_dir) as tracker:
        remaining = cfg.n_trials - len(study.get_trials(deepcopy=False, states=_DONE))
        if remaining > 0:
            study.optimize(
                objective, n_trials=remaining,
                timeout=None if cfg.timeout_minutes is None else cfg.timeout_minutes * 60,
                catch=(FloatingPointError, torch.cuda.OutOfMemoryError),
                callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=_DONE)])
        files = _write_outputs(cfg, study, base)
        for path in files.values():
            tracker.artifact(path, folder=STAGE)
        summary = _summary(cfg, study, files, tracker.run_id)
        if summary["best_value"] is not None:
            mlflow.log_metric("best_value", summary["best_value"])
            mlflow.log_params({f"best.{k}": v for k, v in summary["best_params"].items()})
        return summary


class _OutOfTime(Exception):
    """Raised from a trial's epoch log when the run's time is up: the trial ends there."""


def _study(cfg: TuneConfig, pruner: optuna.pruners.BasePruner | None) -> optuna.Study:
    """Create or load the study, with heartbeats that fail and retry trials whose process
    died; the sampler's seed also takes the number of trials so far, so a resumed study does
    not redraw the first run's random start."""
    with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            cfg.storage_url, heartbeat_interval=cfg.heartbeat_seconds,
            grace_period=cfg.grace_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.stale_retries))
    if pruner is None:
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup_trials,
                                              n_warmup_steps=cfg.prune_warmup_epochs)
                  if cfg.pruning else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=cfg.name, direction="maximize",
                                pruner=pruner, load_if_exists=True)
    seed = np.random.SeedSequence([cfg.seed, len(study.get_trials(deepcopy=False))])
    study.sampler = optuna.samplers.TPESampler(seed=int(seed.generate_state(1)[0]))
    return study


def _recall(metrics: Mapping[str, float]) -> float | None:
    """The validation recall among an epoch's metrics (keys `[epoch/]val_recall_at_<k>`)."""
    for key, value in metrics.items():
        if key.removeprefix("epoch/").startswith("val_recall_at_"):
            return float(value)
    return None


def _hide_password(url: str) -> str:
    """The storage URL as it may be logged and printed: no password."""
    return make_url(url).render_as_string(hide_password=True)


# -------------------------------------------------------------------- outputs
def _write_outputs(cfg: TuneConfig, study: optuna.Study, base: TrainTwoTowerConfig
                   ) -> dict[str, Path]:
    """trials.csv; given complete trials best.toml, history.png and importances.png."""
    out = cfg.out_dir
    files = {"trials": out / "trials.csv"}
    with atomic_path(files["trials"]) as tmp:
        study.trials_dataframe().to_csv(tmp, index=False)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return files
    files["best"] = out / "best.toml"
    with atomic_path(files["best"]) as tmp:
        tmp.write_text(_best_toml(cfg, study, base))
    plots = {"history": optuna.visualization.matplotlib.plot_optimization_history}
    if len(complete) >= 2:  # importances compare trials
        plots["importances"] = optuna.visualization.matplotlib.plot_param_importances
    for name, plot in plots.items():
        files[name] = out / f"{name}.png"
        # Optuna's matplotlib plots are "experimental", draw with pyplot and set the ggplot
        # style globally: keep the style and the figure to this block.
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figure = plot(study, target_name=f"validation recall@{base.train.val_k}").figure
            try:
                figure.set_size_inches(8, 4.5)
                with atomic_path(files[name]) as tmp:
                    figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            finally:
                plt.close(figure)
    return files


def _best_toml(cfg: TuneConfig, study: optuna.Study, base: TrainTwoTowerConfig) -> str:
    """The base config with the best trial's settings, as a config file of the
    `train_two_tower` stage, named `<name>_tuned` so it never resumes the base model."""
    best = dataclasses.replace(cfg.base, name=f"{cfg.base.name}_tuned",
                               train=apply_params(cfg.base.train, study.best_params))
    table = dataclasses.asdict(best)
    shared = {key: table.pop(key) for key in ("run_dir", "device")}
    for key in _SET_BY_STAGE:
        del table["train"][key]
    trial = study.best_trial
    head = (f"# `twotower tune`: study {cfg.name!r}, trial {trial.number} of "
            f"{len(study.trials)}, validation recall@{base.train.val_k} {trial.value:.4f}.\n"
            f"# twotower train_two_tower --config {cfg.out_dir / 'best.toml'}\n")
    return head + tomli_w.dumps({**shared, "train_two_tower": _toml_values(table)})


def _toml_values(table: Mapping[str, Any]) -> dict[str, Any]:
    """Config values as TOML takes them and the command line reads them back: None as
    "none", tuples as arrays; empty ones left out (their default is empty)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            out[key] = _toml_values(value)
        elif value is None:
            out[key] = "none"
        elif isinstance(value, tuple | list) and value:
            out[key] = list(value)
        elif not isinstance(value, tuple | list | Mapping):
            out[key] = value
    return out


def _summary(cfg: TuneConfig, study: optuna.Study, files: Mapping[str, Path],
             run_id: str) -> dict[str, Any]:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    done = sum(states.count(s.name) for s in _DONE)
    complete = "best" in files
    return {
        "study": cfg.name, "storage": _hide_password(cfg.storage_url),
        "trials": {s: states.count(s) for s in dict.fromkeys(states)},
        "done": f"{done} of {cfg.n_trials}" + ("" if done >= cfg.n_trials
                                                else " (run again to continue)"),
        "best_trial": study.best_trial.number if complete else None,
        "best_value": study.best_value if complete else None,
        "best_params": study.best_params if complete else {},
        "files": {k: str(v) for k, v in files.items()},
        "run_id": run_id,
    }


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(TuneConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower tune`
    import sys

    from pipelines.cli import main as cli

    cli(["tune", *sys.argv[1:]])
