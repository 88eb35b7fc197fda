"""Stage: the frozen encoder's h for every catalog product, as the embeddings Parquet.

    python -m pipelines.embed_catalog --catalog CATALOG.parquet --run-dir runs/demo

Reads the checkpoint `pretrain_vision` wrote (or `--checkpoint`), encodes every catalog image
and writes `<run_dir>/embed_catalog/embeddings.parquet` (item_id, embedding, metadata naming
the checkpoint), which the two-tower model's item tower reads; the file is logged to the stage's
MLflow run too (`embeddings/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.config import parse_config, resolve_device, save_config
from pipelines.tracking import stage_run
from simclr_vision.embed import embed_catalog
from twotower.vectors import METADATA_KEY

STAGE = "embed_catalog"


@dataclass
class EmbedCatalogConfig:
    """Embed every catalog image with the pretrained encoder (stage `embed_catalog`)."""

    catalog: str
    """Catalog Parquet: item_id plus image_path or image bytes."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/embed_catalog/`."""
    checkpoint: str | None = None
    """SimCLR checkpoint; None: `<run_dir>/pretrain_vision/last.pt`."""
    normalize: bool = False
    """L2-normalize h before writing (recorded in the file's metadata)."""
    batch_size: int = 1024
    """Images per forward pass."""
    skip_bad: bool = False
    """Leave unreadable images out (named in the metadata) instead of stopping."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint is not None:
            return Path(self.checkpoint)
        return Path(self.run_dir) / "pretrain_vision" / "last.pt"

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return self.catalog, self.checkpoint_path


def run(cfg: EmbedCatalogConfig) -> dict[str, Any]:
    """Write the embeddings Parquet; return its path, row count, dimension and skipped images."""
    if not cfg.checkpoint_path.exists():
        raise FileNotFoundError(
            f"no SimCLR checkpoint at {cfg.checkpoint_path}; run pipelines.pretrain_vision "
            "first or pass --checkpoint"
        )
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        out = embed_catalog(
            cfg.catalog, cfg.checkpoint_path, cfg.out_dir / "embeddings.parquet",
            batch_size=cfg.batch_size, normalize=cfg.normalize,
            device=resolve_device(cfg.device), skip_bad=cfg.skip_bad,
        )
        save_config(cfg, cfg.out_dir / "config.json")  # after the work: a failure keeps the old
        footer = pq.read_metadata(out)
        meta = json.loads(footer.metadata[METADATA_KEY])
        summary = {"embeddings": str(out), "items": footer.num_rows,
                   "dim": meta["dim"], "skipped": len(meta["skipped"])}
        tracker.log({"items": summary["items"], "dim": summary["dim"],
                     "skipped": summary["skipped"]}, step=0)
        tracker.artifact(out, folder="embeddings")
    return summary


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(EmbedCatalogConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower embed_catalog`
    import sys

    from pipelines.cli import main as cli

    cli(["embed_catalog", *sys.argv[1:]])
