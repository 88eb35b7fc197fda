"""MLflow tracking for the stage scripts: one run per stage, nested under a pipeline's run.

A pipeline (the demo) opens its own run only when its first stage runs (`pipeline_run`): a
rerun that skips every finished stage records no run at all.

The packages never import MLflow; their loops take a `log(metrics, step)` callback, and
`stage_run` hands them one. By default runs go to a SQLite store inside the run folder
(`<run_dir>/mlflow.db`, artifacts beside it) so a demo leaves nothing outside its folder;
`MLFLOW_TRACKING_URI` points every stage at any other tracking server instead.

A stage runs holding its run folder's lock (`pipelines.lock`), so it is the only writer there.
That makes it safe to tidy what a killed run left: MLflow runs of the folder still RUNNING
are marked KILLED, and the stage's half-written temporaries are removed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipelines.lock import hold
from twotower.files import clear_leftovers

__all__ = ["PipelineRun", "StageRun", "flat_params", "mark_killed", "pipeline_run", "stage_run",
           "tracking_uri"]

EXPERIMENT = "twotower"
RUN_DIR_TAG = "twotower.run_dir"
"""Tag naming the run folder of every run, so a shared tracking server knows whose it is."""

# A new SQLite store announces its schema migration at INFO on stderr, in every new run folder.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

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
def _store(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock with MLflow pointed at its store and experiment; on the outermost
    hold, mark the folder's runs still RUNNING as KILLED: with the lock held, no live process
    owns them."""
    with hold(run_dir) as outermost:
        local = _user_uri() is None
        uri = tracking_uri(run_dir)
        mlflow.set_tracking_uri(uri)
        if local:
            _EXPORTED.add(uri)
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            artifacts = (run_dir.resolve() / "mlartifacts").as_uri() if local else None
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
        experiment = mlflow.set_experiment(EXPERIMENT)
        if outermost:
            mark_killed(experiment.experiment_id, run_dir, every=local)
        yield


@contextmanager
def stage_run(stage: str, config: Any, run_dir: str | os.PathLike[str],
              folder: str | os.PathLike[str] | None = None) -> Iterator[StageRun]:
    """Open the MLflow run named `stage`, with the config as params; nested if a run is active.

    Holds `run_dir`'s lock throughout; clears the leftovers of killed writes in the stage's
    `folder` (default `<run_dir>/<stage>`: `train_two_tower/image` names the run of one model
    and its folder) and, on the outermost hold, marks the folder's runs still RUNNING as KILLED.
    """
    run_dir = Path(run_dir)
    with _store(run_dir):
        clear_leftovers(run_dir / stage if folder is None else folder)
        nested = mlflow.active_run() is not None
        with mlflow.start_run(run_name=stage, nested=nested,
                              tags={RUN_DIR_TAG: str(run_dir.resolve())}) as run:
            mlflow.log_params(flat_params(config))
            yield StageRun(run.info.run_id)


class PipelineRun:
    """A pipeline's MLflow run, started by `open` (before its first stage that runs) rather
    than up front; `run` is None while no stage has run."""

    def __init__(self, start: Callable[[], StageRun]) -> None:
        self._start = start
        self.run: StageRun | None = None

    def open(self) -> StageRun:
        """The pipeline's run, started on the first call: the stages' runs nest under it."""
        if self.run is None:
            self.run = self._start()
        return self.run


@contextmanager
def pipeline_run(name: str, config: Any,
                 run_dir: str | os.PathLike[str]) -> Iterator[PipelineRun]:
    """Hold `run_dir`'s lock for a pipeline of stages, whose MLflow run `name` (the config as
    params) starts on `open()` and ends with the block, FAILED if the block raises."""
    run_dir = Path(run_dir)
    with _store(run_dir), ExitStack() as stack:
        yield PipelineRun(lambda: stack.enter_context(stage_run(name, config, run_dir)))


def mark_killed(experiment_id: str, run_dir: Path, *, every: bool) -> list[str]:
    """Mark RUNNING runs of `run_dir` (of the whole store when `every`) KILLED; their ids.

    A process killed by a signal never tells MLflow that its run ended. Call only while
    holding `run_dir`'s lock, which proves no live run of the folder exists.
    """
    client = MlflowClient()
    mine = str(run_dir.resolve())
    active = mlflow.active_run()  # a caller's own open run is alive, whatever its folder
    killed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=50_000):
        if active is not None and run.info.run_id == active.info.run_id:
            continue
        if every or run.data.tags.get(RUN_DIR_TAG) == mine:
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    return killed
