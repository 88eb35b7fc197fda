"""Two-tower retrieval against popularity and EASE, with and without logQ, on one split.

Side by side on the test users of one prepared split, every scorer ranking the full catalog
with the user's training items masked (`twotower.evaluate`):

    popularity             training counts
    EASE                   Steck 2019, closed form (λ = --ease-l2)
    two-tower id-only      item-id embeddings (cold items share the unknown row)
    two-tower image h      the frozen SimCLR h of every product, plus the item id (shop only)
    two-tower attributes   the shop's true category and pattern of every product, plus the
                           item id (shop only): what the item tower does with features that
                           hold exactly what shoppers choose by, an upper reference for image h

each two-tower model trained once with logQ ("counts": the exact in-batch q) and once without.
Columns: recall@k overall, on tail items (warm items outside the most popular 20%) and on cold
items (first seen after the test cut), and NDCG@k; "chance" is the recall of a uniformly random
ranking of the unseen items.

    python benchmarks/bench_two_tower.py                           # the synthetic shop, CPU
    python benchmarks/bench_two_tower.py --data movielens --k 20   # ml-latest-small, temporal
    python benchmarks/bench_two_tower.py --data movielens --protocol holdout_users --k 20 50

The shop's image h comes from a short SimCLR pretraining of the narrow ResNet on the shop's own
product images (`--simclr-epochs`). Needs the installed project (polars, faiss, scikit-learn).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model
from benchmarks.tables import print_tables
from simclr_vision.evaluate import knn_accuracy
from simclr_vision.model import encode_images
from simclr_vision.pretrain import PretrainConfig, pretrain
from twotower.data import PrepareConfig, prepare
from twotower.evaluate import (
    EASEScorer,
    PopularityScorer,
    VectorScorer,
    evaluate,
    load_queries,
)
from twotower.index import ItemIndex
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig, fit, user_vectors_for
from twotower.vectors import Vectors

MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def _shop(root: Path, args: argparse.Namespace) -> tuple[Path, Vectors | None,
                                                         pd.DataFrame | None]:
    """Prepare the synthetic shop's log; pretrain SimCLR on its images and embed them."""
    shop = make_shop(ShopConfig(seed=args.seed))
    shop.interactions.to_parquet(root / "log.parquet")
    prepared = prepare(root / "log.parquet", root / "prepare",
                       PrepareConfig(protocol=args.protocol, min_user_interactions=3,
                                     min_item_interactions=1))
    images = torch.from_numpy(shop.images)
    start = time.perf_counter()
    result = pretrain(images, PretrainConfig(
        arch="resnet_narrow", image_size=images.shape[-1], epochs=args.simclr_epochs,
        batch_size=256, knn_every=0, device=args.device))
    h, _ = encode_images(result.model, images, size=images.shape[-1])
    print(f"SimCLR: {args.simclr_epochs} epochs on {len(images):,} product images in "
          f"{time.perf_counter() - start:.0f} s; h has {h.shape[1]} dimensions", flush=True)
    bank = 3 * len(images) // 4  # what h knows: kNN (k=20) from the first 3/4 to the rest
    truth = {c: torch.from_numpy(shop.catalog[c].to_numpy()) for c in ("category", "pattern")}
    for name, features in (("raw pixels", images.flatten(1).float()), ("image h", h)):
        found = {c: knn_accuracy(features[:bank], y[:bank], features[bank:], y[bank:], k=20)
                 for c, y in truth.items()}
        print(f"  {name}: kNN accuracy of the category {found['category']:.3f} "
              f"({shop.config.num_categories} classes), of the pattern {found['pattern']:.3f} "
              f"({shop.config.num_patterns})", flush=True)
    return prepared, Vectors(ids=shop.catalog["item_id"].to_numpy().astype(str),
                             vectors=h.numpy()), shop.catalog


def _movielens(root: Path, args: argparse.Namespace) -> tuple[Path, None, None]:
    ratings = MOVIELENS / "ratings.csv"
    if not ratings.is_file():
        sys.exit(f"MovieLens ratings {ratings} is absent")
    prepared = prepare(ratings, root / "prepare", PrepareConfig(
        protocol=args.protocol, columns={"userId": "user_id", "movieId": "item_id"}))
    return prepared, None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("shop", "movielens"), default="shop")
    parser.add_argument("--protocol", default="temporal",
                        choices=("temporal", "leave_last_out", "holdout_users"))
    parser.add_argument("--k", type=int, nargs="+", default=[50], help="cut-offs of recall@k")
    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="two-tower epochs (at most: early stopping on validation)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--dim", type=int, default=defaults.tower.dim)
    parser.add_argument("--max-history", type=int, default=defaults.max_history)
    parser.add_argument("--simclr-epochs", type=int, default=15)
    parser.add_argument("--ease-l2", type=float, default=500.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"data {args.data} ({args.protocol})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared, images, catalog = (_shop if args.data == "shop" else _movielens)(root, args)
        queries = load_queries(prepared, "test")
        holdout = args.protocol == "holdout_users"
        tower = TowerConfig(dim=args.dim, user_id=not holdout)
        base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           temperature=args.temperature, max_history=args.max_history,
                           val_k=max(args.k), tower=tower, device=args.device, seed=args.seed)
        scorers = {"popularity": PopularityScorer.from_queries(queries),
                   "EASE": EASEScorer.from_prepared(prepared, l2=args.ease_l2)}
        variants = {"two-tower id-only": {}}  # name → fit's item inputs
        if images is not None:
            variants["two-tower image h"] = {"embeddings": images}
            variants["two-tower attributes"] = {"catalog": catalog,
                                                "attributes": ("category", "pattern")}
        seconds = {}
        for name, inputs in variants.items():
            for logq in ("none", "counts"):
                label = f"{name}, logQ {'on' if logq == 'counts' else 'off'}"
                start = time.perf_counter()
                result = fit(prepared, dataclasses.replace(base, logq=logq), **inputs,
                             progress=False)
                seconds[label] = time.perf_counter() - start
                print(f"{label}: {len(result.history)} epochs in {seconds[label]:.0f} s, "
                      f"best epoch {result.best_epoch}", flush=True)
                index = ItemIndex.build(result.model.item_vectors().numpy(), queries.item_ids,
                                        "flat", device="cpu")
                scorers[label] = VectorScorer(
                    index=index, user_vectors=user_vectors_for(result.model, args.max_history))
        table = evaluate(queries, scorers, ks=args.k)
    _report(table, queries, args, seconds)


def _report(table: pd.DataFrame, queries, args: argparse.Namespace,
            seconds: dict[str, float]) -> None:
    def value(scorer: str, slice_name: str, metric: str, k: int) -> str:
        rows = table[(table["scorer"] == scorer) & (table["slice"] == slice_name)
                     & (table["metric"] == metric) & (table["k"] == k)]
        return f"{rows['value'].iloc[0]:.4f}" if len(rows) else "-"

    unseen = len(queries.item_ids) - np.mean([s.size for s in queries.seen])
    metric = "recall_capped" if args.protocol == "holdout_users" else "recall"
    header = ["scorer"]
    for k in args.k:
        header += [f"{metric}@{k}", f"tail {metric}@{k}", f"cold {metric}@{k}", f"ndcg@{k}"]
    header.append("train s")
    rows = [header]
    for scorer in pd.unique(table["scorer"]):
        row = [scorer]
        for k in args.k:
            row += [value(scorer, "all", metric, k), value(scorer, "tail", metric, k),
                    value(scorer, "cold", metric, k), value(scorer, "all", "ndcg", k)]
        row.append(f"{seconds[scorer]:.0f}" if scorer in seconds else "-")
        rows.append(row)
    has_cold = (table["slice"] == "cold").any()
    chance = ["chance (random ranking)"]
    for k in args.k:
        chance += [f"{k / unseen:.4f}"] * 2 + [f"{k / unseen:.4f}" if has_cold else "-", "-"]
    rows.append([*chance, "-"])
    users = {s: int(table[(table["slice"] == s)]["users"].max()) for s in ("all", "tail", "cold")
             if (table["slice"] == s).any()}
    print(f"\n{len(queries):,} test users ({users}), {len(queries.item_ids):,} items")
    print_tables(rows, args.markdown)


if __name__ == "__main__":
    main()
