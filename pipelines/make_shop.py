"""Stage `make_shop`: the synthetic shop as Parquet files, the demo's own data.

    python -m pipelines.make_shop --run-dir runs/demo --shop.num-items 2000
    python -m pipelines.make_shop --run-dir runs/drawings --images procedural
    python -m pipelines.make_shop --run-dir runs/fmnist --data-dir ../shared/data/fashion-mnist

Writes `<run_dir>/make_shop/`: `catalog.parquet` (item_id, image PNG bytes, category, pattern,
colour, release_time, popularity), `interactions.parquet` (user_id, item_id, timestamp, event),
`users.parquet` (the shoppers' true tastes) and `shop.json` (`twotower.synthetic.write_shop`).
The products are Fashion-MNIST photos, whose class is then the category: the test split shipped
in the package (`simclr_vision.data.load_sample`), or the training split of `--data-dir`; or
procedural drawings (`--images procedural`): `simclr_vision.shop.build_shop`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.config import parse_config
from pipelines.tracking import stage_run
from simclr_vision.shop import build_shop
from twotower.synthetic import ShopConfig, write_shop

__all__ = ["MakeShopConfig", "main", "run"]

STAGE = "make_shop"


@dataclass
class MakeShopConfig:
    """Generate the synthetic shop (stage `make_shop`)."""

    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/make_shop/`."""
    images: Literal["fashion-mnist", "procedural"] = "fashion-mnist"
    """The products' pictures: Fashion-MNIST photos or procedural drawings."""
    data_dir: str | None = None
    """Fashion-MNIST idx folder whose training split (60,000 images) the products are drawn
    from, e.g. ../shared/data/fashion-mnist or Debian's /usr/share/datasets/fashion-mnist;
    None: the 10,000 test images shipped with the package, the same on every machine."""
    shop: ShopConfig = field(default_factory=ShopConfig)
    """Catalog, shoppers and log sizes, tastes and seed."""

    def __post_init__(self) -> None:
        if isinstance(self.shop, dict):
            self.shop = ShopConfig(**self.shop)
        if self.images not in ("fashion-mnist", "procedural"):
            raise ValueError(f"images must be fashion-mnist or procedural, got {self.images!r}")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return (self.data_dir,) if self.data_dir is not None else ()


def run(cfg: MakeShopConfig) -> dict[str, Any]:
    """Write the shop's files; return their paths and sizes."""
    shop = build_shop(cfg.shop, images=cfg.images, data_dir=cfg.data_dir)
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        paths = write_shop(shop, cfg.out_dir)
        sizes = {"num_items": len(shop.catalog), "num_users": len(shop.user_ids),
                 "num_interactions": len(shop.interactions)}
        tracker.log(sizes, step=0)
        tracker.artifact(paths["config"])
    return {**{name: str(path) for name, path in paths.items()}, **sizes}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(MakeShopConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower make_shop`
    import sys

    from pipelines.cli import main as cli

    cli(["make_shop", *sys.argv[1:]])
