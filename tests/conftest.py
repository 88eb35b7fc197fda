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


@pytest.fixture(scope="session")
def two_tower_run(tmp_path_factory):
    """A small shop trained through the stages: `<root>/run` holds the model "image" (image
    h and the category attribute, 5 epochs, max_history 5) and its flat index, beside
    `<root>/catalog.parquet` and `<root>/embeddings.parquet`; returns `<root>`.

    Its 60 users each want one or two of four categories (taste 0.05), and h is the category
    one-hot plus noise, what a good frozen image encoder keeps; the embeddings' metadata says
    the encoder takes 8x8 images. The k-core leaves the least-sold products out of the log:
    they are cold rows of the model (new_products). MLflow goes to the run folder.
    """
    import mlflow
    import numpy as np

    from pipelines.build_index import BuildIndexConfig
    from pipelines.build_index import run as build_index
    from pipelines.train_two_tower import TrainTwoTowerConfig
    from pipelines.train_two_tower import run as train_two_tower
    from twotower.data import PrepareConfig, prepare
    from twotower.synthetic import ShopConfig, make_shop
    from twotower.towers import TowerConfig
    from twotower.train import TrainConfig
    from twotower.vectors import write_vectors

    root = tmp_path_factory.mktemp("two_tower_run")
    made = make_shop(ShopConfig(num_items=80, num_users=60, num_interactions=3000, image_size=8,
                                num_categories=4, num_patterns=1, taste_concentration=0.05))
    made.interactions.to_parquet(root / "log.parquet")
    made.catalog.to_parquet(root / "catalog.parquet")
    run = root / "run"
    prepare(root / "log.parquet", run / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    rng = np.random.default_rng(0)
    h = 2.0 * np.eye(8)[made.catalog["category"]] + rng.normal(0, 0.3, (len(made.catalog), 8))
    write_vectors(made.catalog["item_id"], h, root / "embeddings.parquet", {"image_size": 8})
    train = TrainConfig(epochs=5, batch_size=64, val_k=10, max_history=5,
                        tower=TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = train_two_tower(TrainTwoTowerConfig(
            run_dir=str(run), name="image", embeddings=str(root / "embeddings.parquet"),
            catalog=str(root / "catalog.parquet"), attributes=("category",), device="cpu",
            train=train))
        build_index(BuildIndexConfig(vectors=trained["vectors"]["items"], run_dir=str(run),
                                     name="image", device="cpu"))
        while mlflow.active_run() is not None:
            mlflow.end_run()
    return root
