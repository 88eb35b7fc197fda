"""pipelines.tracking: config as params, metrics, artifacts, and the store in the run folder."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipelines.lock import FolderBusy
from pipelines.tracking import (
    RUN_DIR_TAG,
    flat_params,
    mark_killed,
    pipeline_run,
    stage_run,
    tracking_uri,
)

pytestmark = pytest.mark.usefixtures("local_mlflow")


@dataclasses.dataclass
class Inner:
    k: int = 5


@dataclasses.dataclass
class Stage:
    source: Path = Path("log.parquet")
    lr: float = 0.1
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_flat_params_nests_with_dots_and_stringifies():
    assert flat_params(Stage()) == {"source": "log.parquet", "lr": "0.1", "inner.k": "5"}


@pytest.mark.slow
def test_runs_land_in_each_run_folder_with_params_metrics_and_artifacts(tmp_path):
    for name in ("a", "b"):
        run_dir = tmp_path / name
        with (
            stage_run("outer", Stage(), run_dir),
            stage_run("prepare", Stage(lr=0.5), run_dir) as r,
        ):
            r.log({"rows": 3}, step=0)
            r.log({"rows": 2}, step=1)
            report = tmp_path / f"{name}.txt"
            report.write_text("report")
            r.artifact(report)
        assert (run_dir / "mlflow.db").exists()
        client = mlflow.MlflowClient(tracking_uri(run_dir))
        run = client.get_run(r.run_id)
        assert run.data.params["lr"] == "0.5" and run.data.params["inner.k"] == "5"
        assert [m.value for m in client.get_metric_history(r.run_id, "rows")] == [3, 2]
        assert run.data.tags["mlflow.parentRunId"]  # nested under the outer run
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_relative_to(run_dir.resolve())
        assert (artifacts / f"{name}.txt").read_text() == "report"
    assert not (Path.cwd() / "mlruns").exists()


@pytest.mark.slow
def test_mlflow_tracking_uri_overrides_the_run_folder(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking_uri(tmp_path / "run") == uri
    with stage_run("prepare", Stage(), tmp_path / "run"):
        pass
    assert (tmp_path / "server.db").exists()
    assert not (tmp_path / "run" / "mlflow.db").exists()


_KILLED_RUN = """
import sys, time
from pipelines.tracking import stage_run
from twotower.files import atomic_path
with stage_run("embed_catalog", {"lr": 1}, sys.argv[1]):
    with atomic_path(sys.argv[2]) as tmp:
        tmp.write_text("half")
        print("ready", flush=True)
        time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_run_is_marked_killed_and_its_leftovers_cleared(tmp_path):
    """kill -9 inside a stage: while it lives a second run is refused naming its pid; after,
    its lock is gone, its MLflow run is KILLED and its half-written file removed."""
    run_dir = tmp_path / "run"
    target = run_dir / "embed_catalog" / "embeddings.parquet"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(run_dir), str(target)],
                             stdout=subprocess.PIPE, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout.readline().strip() == "ready"
        leftovers = list(target.parent.glob(".embeddings.parquet.tmp-*"))
        assert len(leftovers) == 1
        with pytest.raises(FolderBusy, match=f"in use by pid {child.pid}") as busy:
            with stage_run("prepare", Stage(), run_dir):
                pass
        assert str(run_dir.resolve()) in str(busy.value)
    finally:
        child.kill()
        child.wait()
    client = mlflow.MlflowClient(tracking_uri(run_dir))
    (stale,) = client.search_runs([client.get_experiment_by_name("twotower").experiment_id])
    assert stale.info.status == "RUNNING"  # nobody told MLflow
    with stage_run("embed_catalog", Stage(), run_dir) as again:
        pass
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert client.get_run(again.run_id).info.status == "FINISHED"
    assert not leftovers[0].exists() and not target.exists()


@pytest.mark.slow
def test_a_shared_server_kills_only_the_folders_own_runs(tmp_path, monkeypatch):
    """With a tracking server shared by many folders, only runs tagged with this folder are
    stale; a RUNNING run of another folder may be alive."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")
    mine, other = tmp_path / "mine", tmp_path / "other"
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    with stage_run("a", Stage(), mine):
        pass
    experiment = client.get_experiment_by_name("twotower").experiment_id
    runs = {folder: client.create_run(experiment, tags={RUN_DIR_TAG: str(folder.resolve())})
            for folder in (mine, other)}
    assert mark_killed(experiment, mine, every=False) == [runs[mine].info.run_id]
    assert client.get_run(runs[other].info.run_id).info.status == "RUNNING"


@pytest.mark.slow
def test_a_pipeline_run_starts_only_when_a_stage_runs(tmp_path):
    """A rerun that skips every stage records no run, yet holds the folder (its killed runs
    are marked); the first stage that runs opens the pipeline's run and nests under it."""
    run_dir = tmp_path / "run"
    with stage_run("a", Stage(), run_dir):
        pass
    client = mlflow.MlflowClient(tracking_uri(run_dir))
    experiment = client.get_experiment_by_name("twotower").experiment_id
    stale = client.create_run(experiment, tags={RUN_DIR_TAG: str(run_dir.resolve())})
    with pipeline_run("pipe", Stage(), run_dir) as skipped:
        pass
    assert skipped.run is None and len(client.search_runs([experiment])) == 2
    assert client.get_run(stale.info.run_id).info.status == "KILLED"

    with pipeline_run("pipe", Stage(lr=0.5), run_dir) as pipeline:
        assert pipeline.open() is pipeline.open()  # one run, however many stages run
        with stage_run("train/image", Stage(), run_dir) as stage:
            pass
    parent, child = client.get_run(pipeline.run.run_id), client.get_run(stage.run_id)
    assert (parent.info.run_name, parent.info.status) == ("pipe", "FINISHED")
    assert parent.data.params["lr"] == "0.5"
    assert child.info.run_name == "train/image"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id

    with pytest.raises(RuntimeError), pipeline_run("pipe", Stage(), run_dir) as failing:
        failing.open()
        raise RuntimeError("a stage failed")
    assert client.get_run(failing.run.run_id).info.status == "FAILED"
