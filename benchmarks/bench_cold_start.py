"""What any model can do for cold products on the demo's shop: the optima, with what they know.

    .venv/bin/twotower demo --run-dir runs/demo_s1 --set shop.seed=1      # for each seed
    .venv/bin/python benchmarks/bench_cold_start.py runs/demo runs/demo_s1 runs/demo_s2

Reads finished demo runs (their prepared split, their image h and their evaluation) and
scores, through `twotower.evaluate`, three rankings computed from the shop's ground truth
(the shop is rebuilt from the settings its `make_shop/done.json` records):

    oracle                     the true P(i | u) over the test window: the best any model does
    content oracle             P(i | u) with each cold product's popularity unknown and replaced
                               by its expectation (the mean popularity), its category known:
                               the optimum of expected recall for a model that knows everything
                               but a cold product's popularity
    content oracle, h kNN      the same, with the cold product's category known only as well
                               as its image h tells it: the vote of its 20 nearest products by h
                               (probe_vision's kNN), as a posterior over categories

beside the run's own image model (from its metrics.csv). The cold / warm ratio of the second
row is the highest a model can reach without ranking a cold product above its expected worth
(and so lowering overall recall); the third row is what image h allows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shop import test_window
from pipelines.report import markdown
from simclr_vision.evaluate import cross_knn_votes
from simclr_vision.shop import build_shop
from twotower.evaluate import EvalQueries, evaluate, load_queries
from twotower.synthetic import ShopConfig
from twotower.vectors import read_vectors


@dataclasses.dataclass
class _Scores:
    """A `Scorer` over fixed (U, I) scores of the test users, in item_index order."""

    scores: np.ndarray
    user_id: np.ndarray
    n_items: int = 0

    def __post_init__(self) -> None:
        self.n_items = self.scores.shape[1]

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        rows = self.scores[pd.Index(self.user_id).get_indexer(queries.user_id)].copy()
        for r, seen in enumerate(queries.seen):
            rows[r, seen] = -np.inf
        return queries.item_ids[np.argsort(-rows, axis=1, kind="stable")[:, :k]]


def _posterior(embeddings: Path, catalog: pd.DataFrame) -> np.ndarray:
    """(N, K) category posterior of every product from the vote of its 20 nearest others by h
    (the demo's probe_vision kNN), rows in catalog order."""
    found = read_vectors(embeddings)
    rows = pd.Index(catalog["item_id"]).get_indexer(found.ids)
    votes = cross_knn_votes(found.vectors, catalog["category"].to_numpy()[rows])
    out = np.zeros((len(catalog), votes.shape[1]))
    out[rows] = (votes / votes.sum(1, keepdim=True)).numpy()
    return out


def bounds(run: Path) -> pd.DataFrame:
    """recall@50 overall, warm, cold and cold / warm of the three rankings and the run's image
    model."""
    saved = json.loads((run / "make_shop" / "done.json").read_text())["config"]
    shop = build_shop(ShopConfig(**saved["shop"]), images=saved["images"],
                      data_dir=saved["data_dir"])
    queries = load_queries(run / "prepare", "test")
    users = pd.Index(shop.user_ids).get_indexer(queries.user_id)
    columns = pd.Index(shop.catalog["item_id"]).get_indexer(queries.item_ids)
    cold = np.zeros(len(shop.catalog), bool)
    cold[columns[queries.item_counts == 0]] = True
    category = shop.catalog["category"].to_numpy()
    popularity = shop.catalog["popularity"].to_numpy()
    release = shop.catalog["release_time"].to_numpy()
    taste = shop.user_tastes_category[users]  # (U, K)
    pattern = shop.user_tastes_pattern[users][:, shop.catalog["pattern"].to_numpy()]  # known
    knowledge = {"content oracle": np.eye(taste.shape[1])[category],
                 "content oracle, h kNN": _posterior(run / "embed_catalog" / "embeddings.parquet",
                                                     shop.catalog)}
    times = test_window(run / "prepare")
    exact = taste[:, category] * pattern * popularity  # the shop's choice weights
    scorers = {"oracle": _Scores(shop_scores(exact, release, times)[:, columns],
                                 queries.user_id)}
    for name, known in knowledge.items():
        weights = np.where(cold, (taste @ known.T) * pattern * popularity.mean(), exact)
        scorers[name] = _Scores(shop_scores(weights, release, times)[:, columns],
                                queries.user_id)
    table = evaluate(queries, scorers, ks=(50,), n_boot=200)
    model = pd.read_csv(run / "evaluate_retrieval" / "metrics.csv")
    table = pd.concat([table, model[(model["scorer"] == "image") & (model["k"] == 50)]])
    rows = table[(table["metric"] == "recall")].pivot_table(index="scorer", columns="slice",
                                                            values="value", sort=False)
    out = rows[["all", "warm", "cold"]].copy()
    out["cold / warm"] = out["cold"] / out["warm"]
    return out


def shop_scores(weights: np.ndarray, release: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(U, N) choice weights → P(i | u) averaged over `times`, each normalised over the
    products released by then."""
    total = 0
    for t in times:
        on_sale = weights * (release <= t)
        total = total + on_sale / on_sale.sum(axis=1, keepdims=True)
    return total / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished demo run folders")
    args = parser.parse_args()
    tables = {run.name: bounds(run) for run in args.runs}
    for name, table in tables.items():
        print(f"\n{name}: recall@50 of the test users\n")
        print(markdown(table))
    if len(tables) > 1:
        cold = pd.DataFrame({name: t["cold"] for name, t in tables.items()})
        ratio = pd.DataFrame({name: t["cold / warm"] for name, t in tables.items()})
        summary = pd.DataFrame({"cold mean": cold.mean(axis=1), "cold sd": cold.std(axis=1),
                                "sd / mean": cold.std(axis=1) / cold.mean(axis=1),
                                "cold / warm, lowest": ratio.min(axis=1)})
        print("\nover the runs (sd with n - 1)\n")
        print(markdown(summary))


if __name__ == "__main__":
    main()
