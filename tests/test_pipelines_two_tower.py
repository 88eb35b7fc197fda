"""The `train_two_tower` stage: outputs, MLflow record, and the chain into index and evaluation."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.build_index import BuildIndexConfig
from pipelines.build_index import run as build_index
from pipelines.config import parse_config
from pipelines.evaluate_retrieval import EvaluateRetrievalConfig
from pipelines.evaluate_retrieval import run as evaluate_retrieval
from pipelines.retriever import load_retriever
from pipelines.tracking import tracking_uri
from pipelines.train_two_tower import TrainTwoTowerConfig, run
from twotower.data import PrepareConfig, prepare
from twotower.files import DataError
from twotower.inputs import load_training, unsold
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig
from twotower.vectors import read_vectors, write_vectors

pytestmark = pytest.mark.usefixtures("local_mlflow")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    made = make_shop(ShopConfig(num_items=80, num_users=60, num_interactions=3000, image_size=8))
    made.interactions.to_parquet(root / "log.parquet")
    made.catalog.to_parquet(root / "catalog.parquet")
    prepare(root / "log.parquet", root / "run" / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    rng = np.random.default_rng(0)
    write_vectors(made.catalog["item_id"], rng.normal(size=(len(made.catalog), 6)),
                  root / "embeddings.parquet", {"checkpoint": "random"})
    return root


TRAIN = TrainConfig(epochs=2, batch_size=64, val_k=10, max_history=5,
                    tower=TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4))


@pytest.mark.slow
def test_stage_trains_exports_and_tracks_the_model(shop, tmp_path):
    run_dir = shop / "run"
    cfg = TrainTwoTowerConfig(run_dir=str(run_dir), name="image",
                              embeddings=str(shop / "embeddings.parquet"),
                              catalog=str(shop / "catalog.parquet"), attributes=("category",),
                              listed_at="release_time", device="cpu", train=TRAIN)
    summary = run(cfg)

    out = run_dir / "train_two_tower" / "image"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "config.json", "history.json", "item_vectors.parquet", "last.pt", "model.pt",
        "user_vectors.parquet", "user_vectors_test.parquet", "user_vectors_valid.parquet"])
    history = json.loads((out / "history.json").read_text())
    assert len(history) == summary["epochs"] == 2 and 1 <= summary["best_epoch"] <= 2
    items = read_vectors(out / "item_vectors.parquet")
    assert items.metadata["embeddings"] == str(shop / "embeddings.parquet")
    catalog = pd.read_parquet(shop / "catalog.parquet", columns=["item_id", "release_time"])
    left_out = set(unsold(run_dir / "prepare", catalog, "release_time"))
    assert left_out and summary["unsold_left_out"] == len(left_out)  # every unsold product,
    assert set(items.ids) == set(catalog["item_id"]) - left_out  # and only those
    assert json.loads((out / "config.json").read_text())["train"]["checkpoint_dir"] == str(out)

    client = MlflowClient(tracking_uri(run_dir))
    logged = client.get_run(summary["run_id"])
    assert logged.info.run_name == "train_two_tower/image"  # one run per model, named so
    assert logged.data.params["train.logq"] == "counts"
    assert logged.data.params["train.tower.dim"] == "8"
    assert "loss" in logged.data.metrics and "epoch/val_recall_at_10" in logged.data.metrics
    steps = client.get_metric_history(summary["run_id"], "loss")
    assert len(steps) == 2 * (len(load_training(run_dir / "prepare")) // 64)  # every step
    artifacts = {a.path for folder in ("model", "vectors")
                 for a in client.list_artifacts(summary["run_id"], folder)}
    assert {"model/model.pt", "model/history.json", "vectors/item_vectors.parquet",
            "vectors/user_vectors_test.parquet"} <= artifacts


@pytest.mark.slow
def test_a_finished_model_is_not_resumed_on_changed_inputs(shop, tmp_path):
    """Embeddings rewritten under a trained model: the stage refuses, naming the old and the
    new stamp, and leaves every file of the model's folder as it was."""
    embeddings = tmp_path / "embeddings.parquet"
    shutil.copyfile(shop / "embeddings.parquet", embeddings)
    cfg = TrainTwoTowerConfig(run_dir=str(tmp_path / "run"), name="image",
                              prepared=str(shop / "run" / "prepare"),
                              embeddings=str(embeddings), device="cpu", train=TRAIN)
    run(cfg)
    out = tmp_path / "run" / "train_two_tower" / "image"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    catalog = pd.read_parquet(shop / "catalog.parquet")
    write_vectors(catalog["item_id"], np.ones((len(catalog), 6)), embeddings, {"checkpoint": "x"})
    with pytest.raises(ValueError, match=r"was trained with data=.*embeddings\.parquet") as err:
        run(cfg)
    assert str(err.value).count(str(embeddings)) == 2  # the stamp it had, the stamp it has
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_exported_vectors_feed_build_index_and_evaluate_retrieval(shop, tmp_path):
    run_dir = tmp_path / "run"
    cfg = TrainTwoTowerConfig(run_dir=str(run_dir), prepared=str(shop / "run" / "prepare"),
                              name="ids", device="cpu", train=TRAIN)
    out = run(cfg)["vectors"]
    index = build_index(BuildIndexConfig(vectors=out["items"], run_dir=str(run_dir),
                                         name="ids", device="cpu", register=False))
    summary = evaluate_retrieval(EvaluateRetrievalConfig(
        run_dir=str(run_dir), prepared=str(shop / "run" / "prepare"), ks=(10, 20),
        models={"two_tower": index["index"]}, user_vectors={"two_tower": out["test"]},
        baselines=("popularity",), device="cpu"))
    table = pd.read_csv(run_dir / "evaluate_retrieval" / "metrics.csv")
    assert set(table["scorer"]) == {"two_tower", "popularity"}
    assert 0.0 <= summary["metrics"]["two_tower"]["recall@20"] <= 1.0
    # The index of a trained model is a retriever, logged beside it (not registered: asked so);
    # an id-only one has no image encoder to carry.
    mlflow.set_tracking_uri(tracking_uri(run_dir))
    assert MlflowClient().search_registered_models() == []
    retriever = load_retriever(index["retriever"])
    assert retriever.image_encoder is None
    assert list(retriever.item_ids) == list(read_vectors(out["items"]).ids)


def test_a_catalog_without_the_attribute_column_is_named_and_nothing_is_written(shop, tmp_path):
    cfg = TrainTwoTowerConfig(run_dir=str(tmp_path), prepared=str(shop / "run" / "prepare"),
                              catalog=str(shop / "catalog.parquet"), attributes=("brand",),
                              device="cpu", train=TRAIN)
    with pytest.raises(DataError, match=r"catalog\.parquet, column 'brand': missing column"):
        run(cfg)
    assert not (tmp_path / "train_two_tower").exists()
    with pytest.raises(ValueError, match="listed_at 'release_time' needs --catalog"):
        TrainTwoTowerConfig(listed_at="release_time")
    cfg = TrainTwoTowerConfig(run_dir=str(tmp_path), prepared=str(shop / "run" / "prepare"),
                              catalog=str(shop / "catalog.parquet"), listed_at="listed",
                              device="cpu", train=TRAIN)
    with pytest.raises(DataError, match=r"catalog\.parquet, column 'listed': missing column"):
        run(cfg)  # before any training: nothing written
    assert not (tmp_path / "train_two_tower").exists()


def test_command_line_reaches_the_nested_train_and_tower_fields():
    cfg = parse_config(TrainTwoTowerConfig, [
        "--name", "x", "--train.logq", "streaming", "--train.tower.dim", "32",
        "--train.tower.user-id", "false", "--attributes", "category", "pattern",
        "--catalog", "c.parquet"])
    assert (cfg.train.logq, cfg.train.tower.dim, cfg.train.tower.user_id) == ("streaming", 32,
                                                                            False)
    assert cfg.attributes == ("category", "pattern")
    with pytest.raises(ValueError, match="need --catalog"):
        TrainTwoTowerConfig(attributes=("category",))
