"""The `prepare` stage: one MLflow run with the config as params and row counts as metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import ConfigError, parse_config
from pipelines.prepare import PrepareStage, main, run
from pipelines.tracking import tracking_uri
from twotower.data import PrepareConfig
from twotower.files import DataError

pytestmark = pytest.mark.usefixtures("local_mlflow")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run folder, so one MLflow SQLite store, for the module: creating one takes seconds."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture
def log_path(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pl.DataFrame({
        "visitor": [f"v{u}" for u in (30 * rng.random(n) ** 2).astype(int)],
        "item_id": (25 * rng.random(n) ** 2).astype(int),
        "timestamp": 1_700_000_000 + rng.integers(0, 1000, n),
    })
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    return path


def test_run_logs_params_metrics_and_manifest(tmp_path, log_path, run_dir):
    config = PrepareConfig(min_user_interactions=3, min_item_interactions=3,
                           columns={"visitor": "user_id"})
    stage = PrepareStage(str(log_path), run_dir=str(run_dir), out_dir=tmp_path / "out",
                         data=config)
    summary = run(stage)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert summary["rows"] == manifest["rows"] and not summary["skipped"]
    client = MlflowClient(tracking_uri(run_dir))
    logged = client.get_run(summary["run_id"])
    assert logged.info.run_name == "prepare"
    params = logged.data.params
    assert params["data.protocol"] == "temporal"
    assert params["data.min_user_interactions"] == "3"
    assert params["data.columns.visitor"] == "user_id"
    assert params["source"] == str(log_path)
    metrics = logged.data.metrics
    for step in ("read", "dedup", "event_filter", "train", "valid", "test"):
        assert metrics[f"rows/{step}"] == manifest["rows"][step]
    assert metrics["items"] == manifest["items"]
    kcore = client.get_metric_history(summary["run_id"], "rows/kcore")
    assert [(m.step, m.value) for m in kcore] == list(
        enumerate(manifest["rows"]["kcore_rounds"], start=1))
    artifacts = [a.path for a in client.list_artifacts(summary["run_id"])]
    assert artifacts == ["manifest.json"]


def test_run_skips_an_up_to_date_folder_unless_forced(tmp_path, log_path, run_dir):
    stage = PrepareStage(str(log_path), run_dir=str(run_dir), out_dir=tmp_path / "out",
                         data={"min_user_interactions": 2, "min_item_interactions": 2,
                               "columns": {"visitor": "user_id"}})
    first = run(stage)
    second = run(stage)
    assert second["skipped"] and second["rows"] == first["rows"]
    stage.force = True
    assert not run(stage)["skipped"]
    stage.data = PrepareConfig(protocol="leave_last_out", columns={"visitor": "user_id"},
                               min_user_interactions=2, min_item_interactions=2)
    assert run(stage)["protocol"] == "leave_last_out"


def test_run_prepares_again_when_the_source_changed_in_place(tmp_path, log_path, run_dir):
    stage = PrepareStage(str(log_path), run_dir=str(run_dir), out_dir=tmp_path / "out",
                         data={"min_user_interactions": 2, "min_item_interactions": 2,
                               "columns": {"visitor": "user_id"}})
    assert run(stage)["rows"]["read"] == 400
    pl.read_parquet(log_path).head(300).write_parquet(log_path)  # same path, other rows
    again = run(stage)
    assert not again["skipped"] and again["rows"]["read"] == 300
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows"]["read"] == 300 and run(stage)["skipped"]
    del manifest["source_stamp"]  # as written before stamps existed
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    assert not run(stage)["skipped"]


def test_run_raises_data_error_and_writes_no_folder(tmp_path, log_path, run_dir):
    stage = PrepareStage(str(log_path), run_dir=str(run_dir), out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="user_id"):  # no visitor → user_id mapping
        run(stage)
    assert not (tmp_path / "out").exists()
    assert PrepareStage("log.parquet", run_dir="runs/x").folder == Path("runs/x/prepare")


def test_the_command_line_is_the_stage_config():
    argv = ["--source", "ratings.csv", "--run-dir", "runs/ml", "--data.protocol", "temporal",
            "--data.columns", "userId=user_id", "movieId=item_id",
            "--data.event-weights", "purchase=3", "view=0.5", "--data.events", "view", "purchase"]
    assert parse_config(PrepareStage, argv) == PrepareStage(
        "ratings.csv", run_dir="runs/ml",
        data=PrepareConfig(columns={"userId": "user_id", "movieId": "item_id"},
                           event_weights={"purchase": 3.0, "view": 0.5},
                           events=("view", "purchase")))
    stage = parse_config(PrepareStage, ["--source", "x.csv", "--out-dir", "none", "--force"])
    assert stage.out_dir is None and stage.force and stage.data == PrepareConfig()


def test_main_parses_flags_and_prints_a_summary(tmp_path, log_path, run_dir, capsys):
    out = tmp_path / "prepared"
    summary = main(["--source", str(log_path), "--run-dir", str(run_dir), "--out-dir", str(out),
                    "--data.protocol", "holdout_users", "--data.min-user-interactions", "3",
                    "--data.min-item-interactions", "3", "--data.columns", "visitor=user_id",
                    "--data.max-history", "10"])
    assert (out / "manifest.json").is_file()
    assert summary["protocol"] == "holdout_users"
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["columns"] == {"visitor": "user_id"}
    printed = capsys.readouterr().out
    assert f"{out} (holdout_users): written" in printed and "kcore" in printed
    with pytest.raises(ConfigError, match=r"argument --data\.columns: expected KEY=VALUE, got "
                       r"'visitor'"):
        main(["--source", str(log_path), "--data.columns", "visitor"])
