"""The vision stages end to end at toy size: pretrain_vision → embed_catalog, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ConfigError, parse_config
from pipelines.embed_catalog import EmbedCatalogConfig
from pipelines.embed_catalog import run as run_embed
from pipelines.pretrain_vision import PretrainVisionConfig
from pipelines.pretrain_vision import run as run_pretrain
from pipelines.tracking import tracking_uri
from simclr_vision.pretrain import PretrainConfig
from twotower.files import DataError
from twotower.synthetic import ShopConfig, make_shop, write_shop
from twotower.vectors import read_vectors

pytestmark = pytest.mark.usefixtures("local_mlflow")


def _png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _tiny(run_dir, source, **stage) -> PretrainVisionConfig:
    return PretrainVisionConfig(
        source=str(source), run_dir=str(run_dir), device="cpu", **stage,
        pretrain=PretrainConfig(arch="resnet_narrow", width=4, image_size=16, epochs=1,
                                batch_size=32, log_every=1, progress=False),
    )


@pytest.mark.slow
def test_pretrain_then_embed_the_catalog(tmp_path):
    shop = make_shop(ShopConfig(num_items=128, num_users=10, num_interactions=100, image_size=16))
    catalog = str(write_shop(shop, tmp_path / "shop")["catalog"])
    run_dir = tmp_path / "run"
    cfg = PretrainVisionConfig(
        source=catalog, run_dir=str(run_dir), device="cpu",
        pretrain=PretrainConfig(arch="resnet_narrow", width=4, image_size=16, epochs=2,
                                batch_size=64, log_every=1, progress=False),
    )
    summary = run_pretrain(cfg)
    assert summary["images"] == 128 and summary["epoch"] == 2.0
    stage = run_dir / "pretrain_vision"
    assert sorted(p.name for p in stage.iterdir()) == ["config.json", "history.json", "last.pt"]
    assert json.loads((stage / "config.json").read_text())["pretrain"]["device"] == "cpu"

    client = mlflow.MlflowClient(tracking_uri(run_dir))
    (run,) = client.search_runs(client.get_experiment_by_name("twotower").experiment_id)
    assert run.info.run_name == "pretrain_vision"
    assert run.data.params["pretrain.epochs"] == "2" and run.data.params["source"] == catalog
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4  # 2 steps × 2 epochs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"checkpoint", "history.json"}

    # A second run finds the finished checkpoint and trains no further.
    again = run_pretrain(cfg)
    assert again["epoch_loss"] == summary["epoch_loss"]

    out = run_embed(EmbedCatalogConfig(catalog=catalog, run_dir=str(run_dir), device="cpu"))
    assert out["items"] == 128 and out["dim"] == 32 and out["skipped"] == 0
    assert pq.read_table(out["embeddings"]).num_rows == 128
    (embedded,) = client.search_runs(client.get_experiment_by_name("twotower").experiment_id,
                                     "attributes.run_name = 'embed_catalog'")
    assert [a.path for a in client.list_artifacts(embedded.info.run_id, "embeddings")] == [
        "embeddings/embeddings.parquet"]  # the vectors the README says are logged


@pytest.mark.slow
@pytest.mark.parametrize(("shapes", "trained_on"), [
    ([(20, 20), (32, 24)], [3, 16, 16]),  # mixed: resized to pretrain.image_size
    ([(20, 20)], [3, 20, 20]),  # one size: kept as it is, as before
])
def test_catalog_images_of_mixed_sizes_pretrain_and_embed(tmp_path, shapes, trained_on):
    catalog = tmp_path / "catalog.parquet"
    images = [_png(*shapes[i % len(shapes)], seed=i) for i in range(64)]
    pq.write_table(pa.table({"item_id": range(64), "image": images}), catalog)
    run_dir = tmp_path / "run"
    summary = run_pretrain(_tiny(run_dir, catalog))
    assert summary["images"] == 64 and summary["image_shape"] == trained_on
    out = run_embed(EmbedCatalogConfig(catalog=str(catalog), run_dir=str(run_dir), device="cpu"))
    assert out["items"] == 64 and out["skipped"] == 0
    embedded = read_vectors(out["embeddings"])
    assert embedded.ids.tolist() == [str(i) for i in range(64)]
    assert embedded.metadata["image_size"] == 16  # the size mixed images were trained at


def test_resize_sets_the_size_for_a_folder_of_one_size(tmp_path):
    for i in range(32):
        (tmp_path / f"{i:02}.png").write_bytes(_png(20, 20, seed=i))
    summary = run_pretrain(_tiny(tmp_path / "run", tmp_path, resize=12))
    assert summary["image_shape"] == [3, 12, 12]


def test_a_corrupt_image_in_a_folder_names_it_and_writes_nothing(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(33):
        (tmp_path / "imgs" / f"{i:02}.png").write_bytes(_png(20, 20, seed=i))
    (tmp_path / "imgs" / "07.png").write_bytes(_png(20, 20, seed=7)[:40])  # truncated
    with pytest.raises(DataError, match=r"imgs/07\.png: unreadable image"):
        run_pretrain(_tiny(tmp_path / "run", tmp_path / "imgs"))
    assert not (tmp_path / "run").exists()
    summary = run_pretrain(_tiny(tmp_path / "run", tmp_path / "imgs", skip_bad=True))
    assert summary["images"] == 32 and summary["skipped"] == 1


def test_embed_without_a_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run pipelines\.pretrain_vision first"):
        run_embed(EmbedCatalogConfig(catalog="c.parquet", run_dir=str(tmp_path)))


def test_stage_configs_come_from_the_command_line():
    cfg = parse_config(PretrainVisionConfig, [
        "--source", "imgs.npz", "--monitor-split", "test", "--skip-bad",
        "--pretrain.epochs", "3", "--pretrain.lr", "none", "--pretrain.optimizer", "adamw",
        "--no-pretrain.amp", "--pretrain.small-images", "true", "--resize", "48",
    ])
    assert cfg.source == "imgs.npz" and cfg.monitor_split == "test" and cfg.skip_bad
    assert cfg.resize == 48 and parse_config(PretrainVisionConfig, ["--source", "x"]).resize is None
    assert cfg.pretrain == PretrainConfig(epochs=3, lr=None, optimizer="adamw", amp=False,
                                          small_images=True)
    with pytest.raises(ConfigError, match=r"--pretrain\.optimizer: invalid choice: 'adam'"):
        parse_config(PretrainVisionConfig, ["--pretrain.optimizer", "adam", "--source", "x"])
    with pytest.raises(ConfigError, match="required: --source"):
        parse_config(PretrainVisionConfig, [])
    with pytest.raises(ValueError, match="resize must be a positive side"):
        PretrainVisionConfig(source="x", resize=0)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_stale_or_bad_inputs_leave_the_stage_folders_byte_identical(tmp_path):
    """A finished SimCLR folder given other images (another catalog, or the same file changed)
    refuses naming both sources; a failed embed keeps the old embeddings and config.json."""
    catalogs = {}
    for seed in (0, 1):
        shop = make_shop(ShopConfig(num_items=64, num_users=10, num_interactions=100,
                                    image_size=8, seed=seed))
        catalogs[seed] = str(write_shop(shop, tmp_path / f"shop{seed}")["catalog"])
    run_dir = tmp_path / "run"
    cfg = PretrainVisionConfig(
        source=catalogs[0], run_dir=str(run_dir), device="cpu",
        pretrain=PretrainConfig(arch="resnet_narrow", width=4, image_size=8, epochs=1,
                                batch_size=32, knn_every=0, progress=False))
    run_pretrain(cfg)
    run_embed(EmbedCatalogConfig(catalog=catalogs[0], run_dir=str(run_dir), device="cpu"))
    pretrained, embedded = _files(run_dir / "pretrain_vision"), _files(run_dir / "embed_catalog")

    with pytest.raises(ValueError, match="was trained on images from") as err:
        run_pretrain(dataclasses.replace(cfg, source=catalogs[1]))
    assert catalogs[0] in str(err.value) and catalogs[1] in str(err.value)
    shutil.copyfile(catalogs[1], catalogs[0])  # the same path, other images
    with pytest.raises(ValueError, match="was trained on images from"):
        run_pretrain(cfg)
    assert _files(run_dir / "pretrain_vision") == pretrained

    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "image": [b"not a png", b"nor this"]}),
                   broken)
    with pytest.raises(DataError, match=r"broken\.parquet"):
        run_embed(EmbedCatalogConfig(catalog=str(broken), run_dir=str(run_dir), device="cpu"))
    assert _files(run_dir / "embed_catalog") == embedded
