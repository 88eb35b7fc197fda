"""Fixtures and markers shared by the test modules."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `gpu` is skipped on a machine without a CUDA device: the one place that
    decides it, so a GPU test only says what it needs with `@pytest.mark.gpu`."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def local_mlflow(monkeypatch):
    """Stage runs go to the SQLite store of their run folder, whatever the environment says,
    and no MLflow run stays open after the test."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
