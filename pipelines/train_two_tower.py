r"""Stage `train_two_tower`: the user–product model on a prepared folder, tracked in MLflow.

    python -m pipelines.train_two_tower --run-dir runs/demo --name image \
        --embeddings runs/demo/embed_catalog/embeddings.parquet --train.logq counts
    torchrun --nproc-per-node 8 -m pipelines.train_two_tower --run-dir runs/demo --device cuda \
        --train.batch-size 65536

Trains `twotower.train.fit` on `<prepared>` (default `<run_dir>/prepare`) and writes
`<run_dir>/train_two_tower/<name>/`: `last.pt` (resumed from when present), `model.pt` (the
best epoch's weights and the tower config), `history.json`, `config.json` and the exported
vectors `item_vectors.parquet`, `user_vectors.parquet` and `user_vectors_{valid,test}.parquet`
that `build_index` and `evaluate_retrieval` read. MLflow gets the config as params, the loss
and temperature per step, the validation metrics per epoch, and the history, model and
vectors as artifacts. Under torchrun every rank trains; rank 0 alone writes and logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.config import check_folder_name, parse_config, save_config
from pipelines.runtime import distributed_device, is_main
from pipelines.tracking import stage_run
from twotower.export import export_vectors
from twotower.files import atomic_path, stamped
from twotower.inputs import read_catalog, unsold
from twotower.train import TrainConfig, fit
from twotower.vectors import read_vectors

__all__ = ["TrainTwoTowerConfig", "main", "run"]

STAGE = "train_two_tower"


@dataclass
class TrainTwoTowerConfig:
    """Train one two-tower model (stage `train_two_tower`)."""

    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/train_two_tower/<name>/`."""
    name: str = "two_tower"
    """This model's folder under the stage folder (e.g. id_only, image)."""
    prepared: str | None = None
    """Prepared folder (`twotower.prepare` output); None: `<run_dir>/prepare`."""
    embeddings: str | None = None
    """Frozen image embeddings Parquet (item_id, embedding) for the item tower; None: none."""
    catalog: str | None = None
    """Catalog Parquet holding the categorical `attributes` and `listed_at` columns, keyed by
    item_id."""
    attributes: tuple[str, ...] = ()
    """Catalog columns the item tower embeds (e.g. category brand)."""
    new_products: bool = True
    """Export vectors for products of --embeddings / --catalog that the log never mentions."""
    listed_at: str | None = None
    """Catalog column of each product's listing time (Unix seconds or timestamps): products
    listed by the end of the training split that nobody bought in it get no vector, so only
    new products reach users through their content (`twotower.inputs.unsold`); None: every
    product gets one."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings; the stage sets their `device` and `checkpoint_dir` (its folder)."""

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.attributes and self.catalog is None:
            raise ValueError(f"attributes {list(self.attributes)} need --catalog")
        if self.listed_at and self.catalog is None:
            raise ValueError(f"listed_at {self.listed_at!r} needs --catalog")
        check_folder_name(self.name)

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared) if self.prepared is not None else Path(self.run_dir) / "prepare"

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE / self.name

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return tuple(p for p in (self.prepared_dir, self.embeddings, self.catalog) if p is not None)


def run(cfg: TrainTwoTowerConfig) -> dict[str, Any]:
    """Train, export the vectors, and return the best epoch's metrics and the file paths."""
    with distributed_device(cfg.device) as device:
        train_cfg = dataclasses.replace(cfg.train, device=device, checkpoint_dir=str(cfg.out_dir),
                                        data=stamped(*cfg.inputs))
        cfg = dataclasses.replace(cfg, train=train_cfg)
        embeddings = read_vectors(cfg.embeddings) if cfg.embeddings else None
        catalog = read_catalog(cfg.catalog, cfg.attributes) if cfg.attributes else None
        left_out = (unsold(cfg.prepared_dir, read_catalog(cfg.catalog, [cfg.listed_at]),
                           cfg.listed_at) if cfg.listed_at else [])  # fails before training
        tracking = (stage_run(f"{STAGE}/{cfg.name}", cfg, cfg.run_dir) if is_main()  # its folder
                    else contextlib.nullcontext())
        with tracking as tracker:
            result = fit(cfg.prepared_dir, cfg.train, embeddings=embeddings, catalog=catalog,
                         attributes=cfg.attributes, new_products=cfg.new_products,
                         log=tracker.log if tracker else None,
                         progress=is_main(), label=f"{STAGE}/{cfg.name}")
            if tracker is None:
                return {"best_epoch": result.best_epoch}
            paths = export_vectors(
                result.model, cfg.prepared_dir, cfg.out_dir, max_history=cfg.train.max_history,
                metadata={"checkpoint": str(cfg.out_dir / "model.pt"), "name": cfg.name,
                          "embeddings": cfg.embeddings}, leave_out=left_out)
            with atomic_path(cfg.out_dir / "model.pt") as tmp:
                torch.save({"model": result.model.state_dict(),
                            "tower": dataclasses.asdict(result.model.config),
                            "best_epoch": result.best_epoch}, tmp)
            with atomic_path(cfg.out_dir / "history.json") as tmp:
                tmp.write_text(json.dumps(result.history, indent=2) + "\n")
            save_config(cfg, cfg.out_dir / "config.json")  # last: a failure keeps the old one
            for path in (cfg.out_dir / "history.json", cfg.out_dir / "model.pt"):
                tracker.artifact(path, folder="model")
            for path in paths.values():
                tracker.artifact(path, folder="vectors")
            best = (result.history[result.best_epoch - 1] if result.best_epoch
                    else result.history[-1])
            return {"model": str(cfg.out_dir), "best_epoch": result.best_epoch,
                    "epochs": len(result.history), **best, "unsold_left_out": len(left_out),
                    "vectors": {k: str(v) for k, v in paths.items()},
                    "run_id": tracker.run_id}


def main(argv: list[str] | None = None) -> None:
    summary = run(parse_config(TrainTwoTowerConfig, argv))
    if is_main():
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower train_two_tower`
    import sys

    from pipelines.cli import main as cli

    cli(["train_two_tower", *sys.argv[1:]])
