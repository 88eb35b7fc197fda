"""The `make_shop` stage: procedural or Fashion-MNIST products, and a clear error without data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.make_shop import MakeShopConfig, build_shop, run
from simclr_vision.data import find_fashion_mnist, load_idx
from twotower.files import DataError
from twotower.synthetic import ShopConfig

SMALL = ShopConfig(num_items=40, num_users=20, num_interactions=300, image_size=8)
FASHION_MNIST = find_fashion_mnist()


@pytest.mark.usefixtures("local_mlflow")
def test_the_stage_writes_the_shop(tmp_path):
    summary = run(MakeShopConfig(run_dir=str(tmp_path), shop=SMALL))
    catalog = pd.read_parquet(summary["catalog"])
    log = pd.read_parquet(summary["interactions"])
    assert len(catalog) == summary["num_items"] == 40
    assert len(log) == summary["num_interactions"] == 300
    assert set(log["item_id"]) <= set(catalog["item_id"])
    assert summary["catalog"].startswith(str(tmp_path / "make_shop"))


@pytest.mark.skipif(FASHION_MNIST is None, reason="Fashion-MNIST is absent from "
                    "../shared/data/fashion-mnist and /usr/share/datasets/fashion-mnist")
def test_fashion_mnist_products_are_training_images_with_their_class():
    shop = build_shop(MakeShopConfig(images="fashion-mnist", shop=SMALL))
    train = load_idx(FASHION_MNIST, "train")
    assert shop.images.shape == (40, 1, 28, 28)
    for row in range(3):  # each product is one training image, its class the category
        matches = np.flatnonzero((train.images.numpy() == shop.images[row]).all(axis=(1, 2, 3)))
        assert matches.size >= 1
        assert shop.catalog["category"].iloc[row] in set(train.labels.numpy()[matches])


def test_a_missing_fashion_mnist_folder_is_named(tmp_path):
    with pytest.raises((DataError, FileNotFoundError), match="nowhere"):
        build_shop(MakeShopConfig(images="fashion-mnist", data_dir=str(tmp_path / "nowhere"),
                                  shop=SMALL))
