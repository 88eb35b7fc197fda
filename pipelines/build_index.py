r"""Stage `build_index`: item vectors → a saved `ItemIndex`, tracked as one MLflow run.

    python -m pipelines.build_index --vectors runs/demo/train_two_tower/item_vectors.parquet \
        --run-dir runs/demo --kind ivf --params nlist=1024 nprobe=32

Reads a vectors Parquet (`item_id`, `embedding`: what `train_two_tower` exports, or the image
embeddings of `embed_catalog`), builds the index (flat, ivf, ivfpq or hnsw; the GPU index when
faiss sees a GPU) and saves it to `<run_dir>/build_index/<name>/` with its id map and metadata.
The run's params are the config, its metrics the build time, count and dimension, and its
artifact the index metadata. An index of a trained model's item vectors (those of
`<run_dir>/train_two_tower/<name>/`) makes a retriever: the run also logs it as an MLflow model,
`runs:/<run_id>/retriever` (`pipelines.retriever`, with the SimCLR encoder of the model's
embeddings), registered as `twotower-<name>` (`--no-register` does not), ready for
`mlflow models serve`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import check_folder_name, parse_config, save_config
from pipelines.retriever import ARTIFACT, log_retriever
from pipelines.tracking import stage_run
from twotower.index import KINDS, ItemIndex
from twotower.vectors import read_vectors

__all__ = ["BuildIndexConfig", "main", "run"]

STAGE = "build_index"


@dataclass
class BuildIndexConfig:
    """Build and save a retrieval index over item vectors (stage `build_index`)."""

    vectors: str
    """Item vectors Parquet: item_id plus a fixed-size float32 `embedding` per row."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/build_index/<name>/`."""
    name: str = "items"
    """Folder name of this index under the stage folder (one per model)."""
    kind: str = "flat"
    """flat (exact), ivf, ivfpq or hnsw."""
    params: dict[str, int] = field(default_factory=dict)
    """Index parameters overriding the defaults chosen from the catalog size (nlist, nprobe, m,
    nbits, M, ef_construction, ef_search)."""
    normalize: bool = True
    """L2-normalize item vectors and queries, so scores are cosine similarities."""
    device: str = "auto"
    """auto (faiss GPU index, or exact torch search on a GPU, when present), cpu or cuda."""
    register: bool = True
    """Register the retriever an index of a trained model makes as `twotower-<name>`, a new
    version each build (the tracking store needs a model registry, as a database or a tracking
    server has); it is logged to the run either way."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        check_folder_name(self.name)

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE / self.name

    @property
    def model_vectors(self) -> Path:
        """The item vectors of the trained model of this name: an index of them is a retriever."""
        return Path(self.run_dir) / "train_two_tower" / self.name / "item_vectors.parquet"

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return (self.vectors,)


def run(cfg: BuildIndexConfig) -> dict[str, Any]:
    """Build the index and save it; return its folder, kind, engine, size and build time."""
    vectors = read_vectors(cfg.vectors)
    with stage_run(f"{STAGE}/{cfg.name}", cfg, cfg.run_dir) as tracker:  # run and folder
        start = time.perf_counter()
        index = ItemIndex.build(vectors.vectors, vectors.ids, cfg.kind, device=cfg.device,
                                normalize=cfg.normalize, source=str(Path(cfg.vectors).resolve()),
                                progress=True, **cfg.params)
        seconds = time.perf_counter() - start
        index.save(cfg.out_dir)
        save_config(cfg, cfg.out_dir / "config.json")
        tracker.log({"build_seconds": seconds, "items": len(index), "dim": index.dim}, step=0)
        tracker.artifact(cfg.out_dir / "meta.json", folder=f"index/{cfg.name}")
        summary = {"index": str(cfg.out_dir), "kind": index.kind, "engine": index.engine,
                   "params": index.params, "items": len(index), "dim": index.dim,
                   "build_seconds": round(seconds, 3), "run_id": tracker.run_id}
        if cfg.model_vectors.is_file() and cfg.model_vectors.samefile(cfg.vectors):
            log_retriever(cfg.run_dir, name=cfg.name, artifact_path=ARTIFACT,
                          registered_model_name=f"twotower-{cfg.name}" if cfg.register else None)
            summary["retriever"] = f"runs:/{tracker.run_id}/{ARTIFACT}"
        return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `BuildIndexConfig` from the command line, run it and print its summary."""
    summary = run(parse_config(BuildIndexConfig, argv))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":  # one-line errors and --threads, as `twotower build_index`
    import sys

    from pipelines.cli import main as cli

    cli(["build_index", *sys.argv[1:]])
