"""pipelines.tracking: config as params, metrics, artifacts, and the store in the run folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest

from pipelines.tracking import flat_params, stage_run, tracking_uri

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


def test_mlflow_tracking_uri_overrides_the_run_folder(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking_uri(tmp_path / "run") == uri
    with stage_run("prepare", Stage(), tmp_path / "run"):
        pass
    assert (tmp_path / "server.db").exists()
    assert not (tmp_path / "run" / "mlflow.db").exists()

