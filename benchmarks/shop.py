"""The synthetic shop the benchmarks share: its prepared log, SimCLR's image h of its products,
and the test window its oracle averages over."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from simclr_vision.model import encode_images
from simclr_vision.pretrain import PretrainConfig, pretrain
from simclr_vision.shop import build_shop
from twotower.data import PrepareConfig, prepare, prepared_files
from twotower.synthetic import Shop, ShopConfig


@dataclass
class PreparedShop:
    """A shop, its prepared folder (temporal split, new products kept) and its image h."""

    shop: Shop
    folder: Path
    h: torch.Tensor
    """(num_products, d) SimCLR h of every product, in catalog order."""
    simclr_seconds: float


def prepared_shop(root: Path, images: str, data_dir: str, shop: ShopConfig,
                  simclr_epochs: int, device: str, seed: int = 0) -> PreparedShop:
    """Draw the shop, prepare its log under `root` (k-core 3 users / 1 item, so products first
    sold after the cut stay in as cold ones) and pretrain the narrow ResNet on its images."""
    made = build_shop(shop, images=images, data_dir=data_dir)
    made.interactions.to_parquet(root / "log.parquet")
    folder = prepare(root / "log.parquet", root / "prepare", PrepareConfig(
        protocol="temporal", min_user_interactions=3, min_item_interactions=1))
    pixels = torch.from_numpy(made.images)
    start = time.perf_counter()
    result = pretrain(pixels, PretrainConfig(
        arch="resnet_narrow", image_size=pixels.shape[-1], epochs=simclr_epochs,
        batch_size=256, knn_every=0, device=device, seed=seed))
    h, _ = encode_images(result.model, pixels, size=pixels.shape[-1])
    return PreparedShop(made, folder, h, time.perf_counter() - start)


def test_window(prepared: Path, num_times: int = 8) -> np.ndarray:
    """(num_times,) epoch seconds evenly spread from the first to the last test event."""
    test = pd.read_parquet(prepared_files(prepared, "test")["test"], columns=["timestamp"])
    seconds = test["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64)
    return np.linspace(seconds.min(), seconds.max(), num_times).round().astype(np.int64)
