"""The end-to-end demo: product retrieval without labels, on a shop the project makes itself.

    twotower demo --run-dir runs/demo
    twotower demo --catalog procedural --run-dir runs/procedural
    twotower demo --data-dir ../shared/data/fashion-mnist --run-dir runs/fashion_mnist

Stages, each in `<run_dir>/<stage>/` and each a nested MLflow run under one `demo` run (one
per model for `train_two_tower/<model>` and `build_index/<model>`):

    make_shop           the synthetic shop: product images, shoppers and their interaction log
    pretrain_vision     SimCLR on the product images (narrow ResNet), no labels
    embed_catalog       the frozen image embedding h of every product
    probe_vision        what h knows: kNN accuracy on the products' categories (the one place
                        labels are read), beside raw pixels and a random encoder
    prepare             the log → temporal train / valid / test split
    train_two_tower     two models: id_only (item ids) and image (item ids + image h); the
                        products on sale before the split that nobody bought get no vector
    build_index         a FAISS index of each model's item vectors
    evaluate_retrieval  both models beside popularity, EASE and image-kNN on the test users
    figures             products beside their image-h neighbours; the test users at the
                        50th, 75th and 90th percentile of the image model's recall@10, each
                        beside what both models retrieve for them; cold products beside the
                        users they were retrieved for

It ends by printing the probe, the results table and the cold-start table (warm and cold
recall with 95% bootstrap intervals over test users); `<run_dir>/evaluate_retrieval/` holds
`report.md` and the recall@k and NDCG@k plots, `<run_dir>/figures/` the three galleries.
Run it again and every finished stage is skipped; change a setting and the stages that read
what it changes run again, the others not (a new `--pretrain.*` setting leaves the shop, the
split and the id_only model alone); stop it and run it again and it resumes the stage it was in
(`pipelines.stages`). A run that skips every stage records no MLflow run: the `demo` run opens
when its first stage runs, and logs the headline metrics and the report at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from pipelines import (
    build_index,
    embed_catalog,
    evaluate_retrieval,
    figures,
    make_shop,
    prepare,
    pretrain_vision,
    probe_vision,
    train_two_tower,
)
from pipelines.config import parse_config
from pipelines.report import cold_start, headline, markdown
from pipelines.stages import Stages
from pipelines.tracking import pipeline_run
from simclr_vision.pretrain import PretrainConfig
from twotower.data import PrepareConfig
from twotower.synthetic import ShopConfig
from twotower.train import TrainConfig

__all__ = ["DemoConfig", "main", "run"]

MODELS = ("id_only", "image")
"""The two-tower models the demo trains: without and with the image embedding h."""


@dataclass
class DemoConfig:
    """The end-to-end demo: every stage from make_shop to figures, each skipped once done."""

    run_dir: str = "runs/demo"
    """Folder of every stage's outputs and of the MLflow store (mlflow.db)."""
    catalog: Literal["fashion-mnist", "procedural"] = "fashion-mnist"
    """The products' images: Fashion-MNIST product photos, or procedural drawings (on which
    SimCLR learns colour rather than shape: contrastive feature suppression)."""
    data_dir: str | None = None
    """Fashion-MNIST idx folder whose training split the products are drawn from; None: the
    10,000 test photos shipped with the package."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available), for every stage."""
    ks: tuple[int, ...] = (10, 20, 50, 100)
    """Cut-offs k of the evaluation's metrics@k."""
    report_k: int = 50
    """The k of the printed results table."""
    shop: ShopConfig = field(default_factory=ShopConfig)
    """The synthetic shop's catalog, shoppers and log."""
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        arch="resnet_narrow", image_size=28, epochs=20, batch_size=128, temperature=0.2,
        min_crop=0.3, knn_every=0))
    """SimCLR pretraining; the narrow ResNet trains in about two minutes on two CPU cores. τ 0.2,
    batch 128 and crops of at least 30% of the photo: the settings whose h knows the category
    best on the demo's shops within that budget (benchmarks/README.md)."""
    data: PrepareConfig = field(default_factory=lambda: PrepareConfig(
        protocol="temporal", min_user_interactions=3, min_item_interactions=1))
    """The split; every item stays in, so products first sold after the cut are cold."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Two-tower training, the same for both models."""

    def __post_init__(self) -> None:
        for name, kind in (("shop", ShopConfig), ("pretrain", PretrainConfig),
                           ("data", PrepareConfig), ("train", TrainConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, kind(**getattr(self, name)))
        if self.catalog not in ("fashion-mnist", "procedural"):
            raise ValueError(f"catalog must be fashion-mnist or procedural, got {self.catalog!r}")
        if self.report_k not in self.ks:
            raise ValueError(f"report_k {self.report_k} must be one of ks {list(self.ks)}")


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage not already done; return each stage's summary and the results table."""
    run_dir = Path(cfg.run_dir)
    with pipeline_run("demo", cfg, run_dir) as parent:
        stages = Stages(before_run=parent.open)
        shop = stages("make_shop", run_dir / make_shop.STAGE, make_shop.MakeShopConfig(
            run_dir=cfg.run_dir, data_dir=cfg.data_dir, shop=cfg.shop,
            images=cfg.catalog),
            make_shop.run)
        pretrained = stages(
            "pretrain_vision", run_dir / pretrain_vision.STAGE,
            pretrain_vision.PretrainVisionConfig(source=shop["catalog"], run_dir=cfg.run_dir,
                                                 device=cfg.device, pretrain=cfg.pretrain),
            pretrain_vision.run)
        embedded = stages("embed_catalog", run_dir / embed_catalog.STAGE,
                          embed_catalog.EmbedCatalogConfig(
                              catalog=shop["catalog"], run_dir=cfg.run_dir,
                              checkpoint=pretrained["checkpoint"], device=cfg.device),
                          embed_catalog.run)
        probed = stages("probe_vision", run_dir / probe_vision.STAGE,
                        probe_vision.ProbeVisionConfig(
                            catalog=shop["catalog"], embeddings=embedded["embeddings"],
                            run_dir=cfg.run_dir, device=cfg.device),
                        probe_vision.run)
        prepared = stages("prepare", run_dir / "prepare", prepare.PrepareStage(
            source=shop["interactions"], run_dir=cfg.run_dir, data=cfg.data), prepare.run)
        indexes, user_vectors = {}, {}
        for name in MODELS:
            trained = stages(
                f"train_two_tower/{name}", run_dir / train_two_tower.STAGE / name,
                train_two_tower.TrainTwoTowerConfig(
                    run_dir=cfg.run_dir, name=name, prepared=prepared["folder"],
                    embeddings=embedded["embeddings"] if name == "image" else None,
                    catalog=shop["catalog"], listed_at="release_time", device=cfg.device,
                    train=cfg.train),
                train_two_tower.run)
            index = stages(f"build_index/{name}", run_dir / build_index.STAGE / name,
                           build_index.BuildIndexConfig(
                               vectors=trained["vectors"]["items"], run_dir=cfg.run_dir,
                               name=name, device=cfg.device),
                           build_index.run)
            indexes[name] = index["index"]
            user_vectors[name] = trained["vectors"]["test"]
        evaluated = stages(
            "evaluate_retrieval", run_dir / evaluate_retrieval.STAGE,
            evaluate_retrieval.EvaluateRetrievalConfig(
                run_dir=cfg.run_dir, prepared=prepared["folder"], ks=cfg.ks, models=indexes,
                user_vectors=user_vectors, baselines=("popularity", "ease", "ials", "image_knn"),
                embeddings=embedded["embeddings"], device=cfg.device),
            evaluate_retrieval.run)
        drawn = stages("figures", run_dir / figures.STAGE, figures.FiguresConfig(
            catalog=shop["catalog"], embeddings=embedded["embeddings"], models=indexes,
            user_vectors=user_vectors, select_by="image", run_dir=cfg.run_dir,
            prepared=prepared["folder"]), figures.run)
        table = pd.read_csv(Path(evaluated["report"]).with_name("metrics.csv"))
        results = headline(table, cfg.report_k)
        if parent.run is not None:  # a stage ran: its results are news to MLflow
            parent.run.log({f"{scorer}/{column.replace('@', '_at_').replace(' ', '_')}": value
                            for scorer, row in results.iterrows()
                            for column, value in row.items() if pd.notna(value)}, step=0)
            parent.run.artifact(evaluated["report"], folder="report")
    return {"ran": stages.ran, "skipped": stages.skipped, "report": evaluated["report"],
            "probe": {name.removeprefix("knn_"): value for name, value in probed.items()
                      if name.startswith("knn_")},
            "cold_start": cold_start(table, cfg.report_k),
            "plots": [*(str(Path(evaluated["report"]).with_name(f"{m}_at_k.png"))
                        for m in ("recall", "ndcg")), *drawn.values()],
            "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `DemoConfig` from the command line, run the demo and print the results table."""
    cfg = parse_config(DemoConfig, argv)
    out = run(cfg)
    print(f"\nstages run: {', '.join(out['ran']) or 'none'}; "
          f"skipped (already done): {', '.join(out['skipped']) or 'none'}")
    probe = out["probe"]
    print(f"\nWhat the image embedding h knows: kNN accuracy on the products' categories "
          f"{probe['h']:.1%} (raw pixels {probe['pixels']:.1%}, the same encoder untrained "
          f"{probe['random_encoder']:.1%})")
    print(f"\nTest users, recall and NDCG at k = {cfg.report_k} (report: {out['report']}):\n")
    print(markdown(out["results"]))
    print(f"\nCold start: recall@{cfg.report_k} on products sold before the split (warm) and "
          "after it (cold), 95% bootstrap intervals over test users:\n")
    print(markdown(out["cold_start"]))
    print("\nplots:\n" + "\n".join(f"  {path}" for path in out["plots"]))
    return out


if __name__ == "__main__":  # one-line errors and --threads, as `twotower demo`
    import sys

    from pipelines.cli import main as cli

    cli(["demo", *sys.argv[1:]])
