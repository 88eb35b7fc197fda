"""The synthetic shop with pictures for products: Fashion-MNIST photos or procedural drawings.

`twotower.synthetic.make_shop` draws the catalog, the shoppers and their log from any labelled
image array; this module chooses that array, so the `make_shop` stage and the benchmarks that
rebuild its shop make the same one. It lives in simclr_vision because the photos are read
here (`simclr_vision.data`) and twotower never imports simclr_vision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from simclr_vision.data import PathLike, load_idx, load_sample
from twotower.synthetic import Shop, ShopConfig, make_shop

__all__ = ["build_shop"]


def build_shop(
    config: ShopConfig,
    *,
    images: Literal["fashion-mnist", "procedural"] = "fashion-mnist",
    data_dir: PathLike | None = None,
) -> Shop:
    """The shop in memory. Fashion-MNIST products are the training split of the idx folder
    `data_dir`, or without one the 10,000 test photos shipped with the package (the same on
    every machine); a photo's class is its product's category."""
    if images == "procedural":
        return make_shop(config)
    photos = load_idx(Path(data_dir), "train") if data_dir else load_sample()
    return make_shop(config, images=photos.images.numpy(), labels=photos.labels.numpy())
