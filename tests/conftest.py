"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def local_mlflow(monkeypatch):
    """Stage runs go to the SQLite store of their run folder, whatever the environment says,
    and no MLflow run stays open after the test."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
