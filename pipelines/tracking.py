"""MLflow tracking for the stage scripts: one run per stage, nested under a pipeline's run.

The packages never import MLflow; their loops take a `log(metrics, step)` callback, and
`stage_run` hands them one. By default runs go to a SQLite store inside the run folder
(`<run_dir>/mlflow.db`, artifacts beside it) so a demo leaves nothing outside its folder;
`MLFLOW_TRACKING_URI` points every stage at any other tracking server instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

__all__ = ["StageRun", "flat_params", "stage_run", "tracking_uri"]

EXPERIMENT = "twotower"

# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; remember the values we exported so
# a later stage with another run folder is not mistaken for a user's tracking server.
_EXPORTED: set[str] = set()


def _user_uri() -> str | None:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EXPORTED else None


def tracking_uri(run_dir: str | os.PathLike[str]) -> str:
    """`MLFLOW_TRACKING_URI` if the user set it, else a SQLite store at `<run_dir>/mlflow.db`."""
    return _user_uri() or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def flat_params(config: Any, prefix: str = "") -> dict[str, str]:
    """A dataclass (or mapping) as flat `a.b` → str params, the shape MLflow stores."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    out: dict[str, str] = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out


@dataclasses.dataclass
class StageRun:
    """The active MLflow run of one stage; `log` is the callback package loops take."""

    run_id: str

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metrics at a step (an epoch, an optimizer step)."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def artifact(self, path: str | os.PathLike[str], folder: str | None = None) -> None:
        """Attach a file (report, plot, checkpoint) to the run."""
        mlflow.log_artifact(os.fspath(path), artifact_path=folder)


@contextmanager
def stage_run(stage: str, config: Any, run_dir: str | os.PathLike[str]) -> Iterator[StageRun]:
    """Open the MLflow run of `stage`, with the config as params; nested if a run is active."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    local = _user_uri() is None
    uri = tracking_uri(run_dir)
    mlflow.set_tracking_uri(uri)
    if local:
        _EXPORTED.add(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (run_dir.resolve() / "mlartifacts").as_uri() if local else None
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=stage, nested=nested) as run:
        mlflow.log_params(flat_params(config))
        yield StageRun(run.info.run_id)
