"""The `tune` stage: a small search, its files and MLflow record, pruning, resuming after a kill,
the search space's checks, and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from pipelines import cli, tune
from pipelines.config import parse_config
from pipelines.tracking import tracking_uri
from pipelines.train_two_tower import TrainTwoTowerConfig
from pipelines.tune import DEFAULT_SPACE, TuneConfig, apply_params, parse_space, run
from twotower.data import PrepareConfig, prepare
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(epochs=2, batch_size=64, val_k=10, max_history=5, max_val_users=None,
                    tower=TowerConfig(dim=8, hidden_dim=16, id_dim=8))
SPACE = {"lr": "log:1e-3:1e-2", "tower.dim": "cat:8,16", "tower.id_dropout": "float:0:0.5"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    made = make_shop(ShopConfig(num_items=60, num_users=40, num_interactions=1500, image_size=8))
    made.interactions.to_parquet(root / "log.parquet")
    prepare(root / "log.parquet", root / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    return root / "prepare"


def _config(run_dir: Path, prepared: Path, **settings) -> TuneConfig:
    base = TrainTwoTowerConfig(run_dir=str(run_dir), name="ids", prepared=str(prepared),
                               device="cpu", train=TRAIN)
    return TuneConfig(**{"base": base, "n_trials": 3, "space": dict(SPACE), **settings})


def _states(cfg: TuneConfig) -> list[TrialState]:
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def search(prepared, tmp_path_factory):
    """One 3-trial search, its config and summary (MLflow in its run folder)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = _config(tmp_path_factory.mktemp("search"), prepared)
        yield cfg, run(cfg)


@pytest.mark.slow
def test_a_search_writes_its_trials_the_best_config_and_plots(search):
    cfg, summary = search
    out = Path(cfg.base.run_dir) / "tune" / "ids"
    assert sorted(p.name for p in out.iterdir()) == [
        "best.toml", "history.png", "importances.png", "study.db", "trials.csv"]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"COMPLETE"}
    assert {"params_lr", "params_tower.dim", "params_tower.id_dropout"} <= set(trials.columns)
    assert summary["best_value"] == trials["value"].max()
    assert summary["best_trial"] == trials.loc[trials["value"].idxmax(), "number"]
    assert summary["done"] == "3 of 3" and summary["trials"] == {"COMPLETE": 3}
    assert summary["storage"] == f"sqlite:///{(out / 'study.db').resolve()}"
    assert all(0.0 < v <= 1.0 for v in trials["value"])


@pytest.mark.slow
def test_the_first_trial_trains_the_base_settings(search):
    cfg, _ = search
    first = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).trials[0]
    assert first.params == {"lr": TRAIN.lr, "tower.dim": TRAIN.tower.dim,
                            "tower.id_dropout": TRAIN.tower.id_dropout}
    assert first.user_attrs["start"] == "base config"


def test_base_settings_outside_the_space_are_left_to_the_sampler():
    space = parse_space({"lr": "log:1e-1:1.0", "tower.dim": "cat:8,16",
                         "max_history": "int:1:4"})
    assert tune._base_params(TRAIN, space) == {"tower.dim": 8}  # lr 2e-3, max_history 5


@pytest.mark.slow
def test_the_value_is_the_best_epochs_validation_recall(search):
    cfg, _ = search
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # epochs, as reported
        assert trial.value == max(trial.intermediate_values.values())


@pytest.mark.slow
def test_best_toml_is_a_train_two_tower_config_with_the_best_settings(search):
    cfg, summary = search
    best = Path(summary["files"]["best"])
    parsed = parse_config(TrainTwoTowerConfig,
                          cli.stage_argv("train_two_tower", TrainTwoTowerConfig, best))
    tuned = apply_params(TRAIN, summary["best_params"])
    assert parsed == dataclasses.replace(cfg.base, name="ids_tuned", train=tuned)
    assert parsed.train.lr == summary["best_params"]["lr"]
    assert parsed.train.tower.dim == summary["best_params"]["tower.dim"]
    assert parsed.train.max_val_users is None  # "none" in the file, not the default 2000
    with pytest.raises(SystemExit) as exit_:  # and the stage's own command line takes it
        cli.main(["train_two_tower", "--config", str(best), "--help"])
    assert exit_.value.code == 0


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_training_best_toml_reproduces_the_best_trials_recall(search, capsys):
    """A trial is the train_two_tower stage's training without checkpoints or export: the
    stage, run from best.toml, reaches the best trial's validation recall."""
    _, summary = search
    cli.main(["train_two_tower", "--config", summary["files"]["best"]])
    trained = json.loads(capsys.readouterr().out)
    assert trained["model"].endswith("train_two_tower/ids_tuned")
    assert trained["val_recall_at_10"] == pytest.approx(summary["best_value"], abs=1e-12)


@pytest.mark.slow
def test_mlflow_holds_the_tune_run_and_a_nested_run_per_trial(search):
    cfg, summary = search
    client = MlflowClient(tracking_uri(cfg.base.run_dir))
    parent = client.get_run(summary["run_id"])
    assert parent.info.run_name == "tune"
    assert parent.data.metrics["best_value"] == summary["best_value"]
    assert parent.data.params["best.lr"] == str(summary["best_params"]["lr"])
    assert parent.data.params["n_trials"] == "3" and parent.data.params["base.name"] == "ids"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tune")} == {
        "tune/best.toml", "tune/trials.csv", "tune/history.png", "tune/importances.png"}

    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1", "trial-2"]
    for trial in study.trials:
        child = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert child.info.run_name == f"trial-{trial.number}"
        assert child.data.params["train.lr"] == str(trial.params["lr"])
        assert child.data.params["train.tower.dim"] == str(trial.params["tower.dim"])
        assert child.data.params["train.checkpoint_dir"] == "None"
        assert child.data.tags["optuna.state"] == "COMPLETE"
        epochs = client.get_metric_history(child.info.run_id, "epoch/val_recall_at_10")
        assert [m.step for m in epochs] == [1, 2]
        assert [m.value for m in epochs] == [trial.intermediate_values[s] for s in (1, 2)]
        assert "loss" not in child.data.metrics  # per-step rows are not kept for trials


class _PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and nothing else."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_a_pruned_trial_is_recorded_pruned_and_the_search_goes_on(prepared, tmp_path):
    cfg = _config(tmp_path, prepared)
    summary = run(cfg, pruner=_PruneTrialOne())
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                               TrialState.COMPLETE]
    pruned = study.trials[1]
    assert sorted(pruned.intermediate_values) == [1]  # stopped after its first epoch
    assert summary["done"] == "3 of 3" and summary["best_trial"] in (0, 2)
    client = MlflowClient(tracking_uri(tmp_path))
    child = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "FINISHED"
    assert len(client.get_metric_history(child.info.run_id, "epoch/val_recall_at_10")) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_the_timeout_ends_the_running_trial_at_its_next_epoch_with_its_recall(prepared, tmp_path):
    cfg = _config(tmp_path, prepared, timeout_minutes=1e-6)  # out of time from the start
    summary = run(cfg)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    [trial] = study.trials  # the first trial always starts; no other does
    assert trial.state == TrialState.COMPLETE and cfg.base.train.epochs == 2
    assert list(trial.intermediate_values) == [1]  # stopped after its first epoch
    assert trial.value == trial.intermediate_values[1]
    assert trial.user_attrs["stopped"] == "timeout after epoch 1"
    assert summary["best_trial"] == 0 and (cfg.out_dir / "best.toml").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_a_search_without_a_complete_trial_writes_no_best_toml(prepared, tmp_path):
    cfg = _config(tmp_path, prepared, n_trials=1)
    summary = run(cfg, pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # recall < 2: pruned
    assert summary["trials"] == {"PRUNED": 1} and summary["best_value"] is None
    assert set(summary["files"]) == {"trials"}
    assert not (cfg.out_dir / "best.toml").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_a_killed_search_resumes_and_its_running_trial_is_failed_and_retried(
        prepared, tmp_path):
    argv = ["--base.run-dir", str(tmp_path), "--base.name", "ids",
            "--base.prepared", str(prepared), "--base.device", "cpu",
            "--base.train.epochs", "8", "--base.train.patience", "8",
            "--base.train.batch-size", "64", "--base.train.val-k", "10",
            "--base.train.tower.dim", "8", "--base.train.tower.hidden-dim", "16",
            "--n-trials", "3", "--heartbeat-seconds", "1", "--grace-seconds", "2",
            "--space", *(f"{k}={v}" for k, v in SPACE.items())]
    cfg = parse_config(TuneConfig, argv)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    search = subprocess.Popen(
        [sys.executable, "-c", "from pipelines.cli import main; main()", "tune", *argv],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []  # Optuna logs each finished trial to stderr; then the study's tables exist
    while search.poll() is None and "Trial 0 finished" not in (log or [""])[-1]:
        log.append(search.stderr.readline())
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and search.poll() is None:
        states = _states(cfg)
        if TrialState.RUNNING in states:
            search.send_signal(signal.SIGKILL)
            killed = states.index(TrialState.RUNNING)
        time.sleep(0.05)
    search.wait()
    assert killed is not None, "".join(log)[-2000:]
    assert _states(cfg)[killed] == TrialState.RUNNING  # left behind by the killed process
    time.sleep(cfg.grace_seconds + cfg.heartbeat_seconds)  # its heartbeat is now stale

    summary = run(cfg)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    states = [t.state for t in study.trials]
    assert states[killed] == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == study.trials[killed].params  # the killed trial's settings again
    assert summary["done"] == "3 of 3"
    assert len(pd.read_csv(summary["files"]["trials"])) == len(states)


def test_the_default_space_holds_the_shipped_defaults():
    """Every setting of the default space is searchable and its range holds TrainConfig's
    default, so the search can always find the settings it is compared against."""
    space = parse_space(DEFAULT_SPACE)
    defaults = TrainConfig()
    assert {"lr", "temperature", "tower.dim", "tower.id_dim"} <= set(space)
    for key, dist in space.items():
        default = defaults
        for part in key.split("."):
            default = getattr(default, part)
        if isinstance(dist, CategoricalDistribution):
            assert default in dist.choices, key
        else:
            assert dist.low <= default <= dist.high, key
            assert isinstance(dist, IntDistribution) == isinstance(default, int), key
    assert TuneConfig().space == DEFAULT_SPACE


def test_specs_take_each_kind_and_the_settings_type():
    space = parse_space({"tower.head": "cat:mlp,linear", "learn_temperature": "cat:true,false",
                         "chunk_size": "cat:none,64", "mixed_negatives": "log:1:64"})
    assert space["tower.head"].choices == ("mlp", "linear")
    assert space["learn_temperature"].choices == (True, False)
    assert space["chunk_size"].choices == (None, 64)
    assert space["mixed_negatives"] == IntDistribution(1, 64, log=True)
    tuned = apply_params(TRAIN, {"lr": 0.5, "tower.dim": 4, "tower.head": "linear"})
    assert (tuned.lr, tuned.tower.dim, tuned.tower.head) == (0.5, 4, "linear")
    assert tuned.tower.hidden_dim == TRAIN.tower.hidden_dim and TRAIN.lr != 0.5


@pytest.mark.parametrize(("space", "message"), [
    ({"tower.dimm": "cat:8"}, r"space key 'tower.dimm' is not a TrainConfig setting; "
                              r"valid keys: epochs, .*tower\.dim"),
    ({"device": "cat:cpu"}, "space key 'device' is not a TrainConfig setting"),
    ({"lr": "uniform:1:2"}, r"space lr='uniform:1:2': a spec is log:LOW:HIGH"),
    ({"lr": "log:0:1"}, r"space lr='log:0:1'"),
    ({"lr": "float:1"}, r"space lr='float:1': float takes two bounds"),
    ({"tower.dim": "float:8:16"}, r"space tower.dim=.*type int takes int, log or cat"),
    ({"tower.head": "cat:mlp,conv"}, r"space tower.head=.*invalid choice: 'conv'"),
    ({"tower.id_dropout": "float:0:1"}, r"space tower.id_dropout=.*id_dropout must lie"),
    ({"batch_size": "cat:64,big"}, r"space batch_size='cat:64,big'"),
    ({}, "the search space is empty"),
])
def test_a_bad_space_is_refused_naming_the_key(space, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(space=space)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="grace_seconds"):
        TuneConfig(heartbeat_seconds=10, grace_seconds=10)
    with pytest.raises(ValueError, match="storage must be a database URL"):
        TuneConfig(storage="study.db")
    with pytest.raises(ValueError, match="n_trials must be ≥ 1"):
        TuneConfig(n_trials=0)


def test_the_command_line_and_a_config_file_reach_the_base_and_the_space(tmp_path, capsys):
    cfg = parse_config(TuneConfig, cli.stage_argv(
        "tune", TuneConfig, ROOT / "configs" / "movielens.toml",
        ["n_trials=7", "space=lr=log:1e-4:1e-2 tower.dim=cat:32,64"]))
    assert (cfg.base.run_dir, cfg.base.device, cfg.base.name) == ("runs/movielens", "auto",
                                                                  "id_only")
    assert (cfg.base.train.val_k, cfg.base.train.batch_size, cfg.n_trials) == (20, 512, 7)
    assert cfg.space == {"lr": "log:1e-4:1e-2", "tower.dim": "cat:32,64"}
    assert cfg.storage_url.endswith("runs/movielens/tune/id_only/study.db")

    path = tmp_path / "tune.toml"
    path.write_text('run_dir = "r"\n[train_two_tower.train]\nepochs = 3\nval_k = 5\n'
                    '[tune]\nn_trials = 4\n[tune.base.train]\nepochs = 9\n'
                    '[tune.space]\nlr = "log:1e-3:1e-1"\n"tower.dim" = "cat:8,16"\n')
    cfg = parse_config(TuneConfig, cli.stage_argv("tune", TuneConfig, path))
    assert (cfg.base.run_dir, cfg.base.train.epochs, cfg.base.train.val_k) == ("r", 9, 5)
    assert cfg.space == {"lr": "log:1e-3:1e-1", "tower.dim": "cat:8,16"}
    assert cfg.n_trials == 4

    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("twotower tune --config configs/movielens.toml --set n_trials=30",
                 "postgresql://", "--study-name", "--storage", "--space", "run the same "
                 "command", "--base.train.lr", "Complete or pruned trials"):
        assert text in " ".join(out.split()), text
