"""Stage `probe_vision`: what the frozen image embedding h knows of the catalog's categories.

    python -m pipelines.probe_vision --run-dir runs/demo \
        --catalog runs/demo/make_shop/catalog.parquet \
        --embeddings runs/demo/embed_catalog/embeddings.parquet

SimCLR never sees a label; this probe is the one place labels are read. It scores the kNN
accuracy (`simclr_vision.evaluate.cross_knn_accuracy`: every product is classified by the vote
of its nearest other products) of three descriptions of every product, so h is judged against
what it must beat:

    h               the pretrained encoder's frozen h (the embeddings the item tower reads)
    pixels          the raw pixels, resized to the encoder's input size
    random_encoder  the same architecture with random weights: what the network's structure
                    alone gives, before any training

Writes `<run_dir>/probe_vision/probe.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import torch

from pipelines.config import parse_config, resolve_device
from pipelines.tracking import stage_run
from simclr_vision.augment import resize_view
from simclr_vision.data import load_catalog
from simclr_vision.evaluate import cross_knn_accuracy
from simclr_vision.model import encode_images
from simclr_vision.pretrain import load_simclr
from twotower.files import DataError, atomic_path
from twotower.vectors import read_vectors

__all__ = ["ProbeVisionConfig", "main", "probe", "run"]

STAGE = "probe_vision"


@dataclass
class ProbeVisionConfig:
    """kNN accuracy of h, raw pixels and a random encoder on a catalog label column."""

    catalog: str
    """Catalog Parquet: item_id, the images and the label column."""
    embeddings: str
    """The catalog's h (`embed_catalog` output); its metadata names the checkpoint."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/probe_vision/`."""
    label: str = "category"
    """Catalog column holding each product's class (read by this probe only)."""
    k: int = 20
    """Neighbours that vote."""
    seed: int = 0
    """Seed of the random encoder's weights."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return self.catalog, self.embeddings


def probe(cfg: ProbeVisionConfig) -> dict[str, float]:
    """{"h", "pixels", "random_encoder"} → kNN accuracy on the catalog's `label` column."""
    embeddings = read_vectors(cfg.embeddings)
    if cfg.label not in pq.read_schema(cfg.catalog).names:
        raise DataError(f"no label column {cfg.label!r} to probe with", path=cfg.catalog)
    labels = pd.read_parquet(cfg.catalog, columns=["item_id", cfg.label])
    by_id = labels.set_index(labels["item_id"].astype(str))[cfg.label]
    missing = [i for i in embeddings.ids if i not in by_id.index]
    if missing:
        raise DataError(f"{len(missing)} embedded items are not in the catalog, e.g. "
                        f"{missing[0]!r}", path=cfg.catalog)
    y = pd.factorize(by_id.loc[list(embeddings.ids)])[0]
    device = resolve_device(cfg.device)
    model, pretrained = load_simclr(embeddings.metadata["checkpoint"], device=device)
    size = pretrained.image_size
    images = load_catalog(cfg.catalog, size=size, channels=model.encoder.in_channels)
    rows = pd.Index(images.ids).get_indexer(list(embeddings.ids))
    pixels = resize_view(images.images[rows], size).flatten(1)
    torch.manual_seed(cfg.seed)
    random_model = pretrained.build_model(model.encoder.in_channels).to(device)
    random_h, _ = encode_images(random_model, images.images[rows], size=size, device=device)
    return {name: cross_knn_accuracy(x, y, k=cfg.k)
            for name, x in (("h", embeddings.vectors), ("pixels", pixels),
                            ("random_encoder", random_h))}


def run(cfg: ProbeVisionConfig) -> dict[str, Any]:
    """Write probe.json; return the three accuracies and its path."""
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        scores = probe(cfg)
        tracker.log({f"knn_{name}": value for name, value in scores.items()}, step=0)
        path = cfg.out_dir / "probe.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"label": cfg.label, "k": cfg.k, "knn_accuracy": scores},
                                      indent=2))
    return {"probe": str(path), **{f"knn_{name}": v for name, v in scores.items()}}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(ProbeVisionConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower probe_vision`
    import sys

    from pipelines.cli import main as cli

    cli(["probe_vision", *sys.argv[1:]])
