"""The `make_shop` stage: Fashion-MNIST (shipped or full) or procedural products, and a clear
error for a missing folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.make_shop import MakeShopConfig, run
from simclr_vision.data import find_fashion_mnist, load_idx, load_sample
from simclr_vision.shop import build_shop
from twotower.files import DataError
from twotower.synthetic import ShopConfig

SMALL = ShopConfig(num_items=40, num_users=20, num_interactions=300, image_size=8)
FASHION_MNIST = find_fashion_mnist()


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_the_stage_writes_the_shop(tmp_path):
    summary = run(MakeShopConfig(run_dir=str(tmp_path), images="procedural", shop=SMALL))
    catalog = pd.read_parquet(summary["catalog"])
    log = pd.read_parquet(summary["interactions"])
    assert len(catalog) == summary["num_items"] == 40
    assert len(log) == summary["num_interactions"] == 300
    assert set(log["item_id"]) <= set(catalog["item_id"])
    assert summary["catalog"].startswith(str(tmp_path / "make_shop"))


def _are_photos_of(shop, photos) -> None:
    """Each product is one of the photos, its class the category."""
    assert shop.images.shape == (40, 1, 28, 28)
    for row in range(3):
        matches = np.flatnonzero((photos.images.numpy() == shop.images[row]).all(axis=(1, 2, 3)))
        assert matches.size >= 1
        assert shop.catalog["category"].iloc[row] in set(photos.labels.numpy()[matches])


def test_the_default_products_are_the_shipped_fashion_mnist_photos():
    shop = build_shop(SMALL)
    _are_photos_of(shop, load_sample())
    assert shop.catalog["category"].nunique() > 5


@pytest.mark.skipif(FASHION_MNIST is None, reason="Fashion-MNIST is absent from "
                    "../shared/data/fashion-mnist and /usr/share/datasets/fashion-mnist")
def test_a_data_dir_gives_products_from_its_training_images():
    shop = build_shop(SMALL, data_dir=FASHION_MNIST)
    _are_photos_of(shop, load_idx(FASHION_MNIST, "train"))


def test_a_missing_fashion_mnist_folder_is_named(tmp_path):
    with pytest.raises((DataError, FileNotFoundError), match="nowhere"):
        build_shop(SMALL, data_dir=tmp_path / "nowhere")
