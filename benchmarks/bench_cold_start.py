"""What any model can do for cold products on the demo's shop: the optima, with what they know.

    .venv/bin/twotower demo --run-dir runs/demo_s1 --set shop.seed=1      # for each seed
    .venv/bin/python benchmarks/bench_cold_start.py runs/demo runs/demo_s1 runs/demo_s2

Reads finished demo runs (their prepared split, their image h and their evaluation) and
scores, through `twotower.evaluate`, three rankings computed from the shop's ground truth
(the shop is rebuilt from the settings its `make_shop/done.json` records):

    oracle                     the true P(i | u) over the test window: the best any model does
    content oracle             P(i | u) with each cold product's popularity unknown and replaced
                               by its posterior mean given what the log says of it: no sale in
                               the training split over the time it was on sale (none for a
                               product listed after the split); its category known: the
                               optimum of expected recall for a model that knows everything
                               but a cold product's popularity
    content oracle, h kNN      the same, with the cold product's category known only as well
                               as its image h tells it: the vote of its 20 nearest products by h
                               (probe_vision's kNN), as a prior over categories

beside the run's own image model (from its metrics.csv). The second row ranks every product
by its expected worth to the user given all the shop's truth but the cold products'
popularity, so its cold / warm ratio is that of the optimum: a ranking with a higher one
ranks cold products above their expected worth or warm ones below theirs, and finds fewer of
the products users choose. The third row is the same for what image h knows. The posterior
assumes Poisson sales (each event a thinned draw) and a product's popularity any of the
catalog's, equally likely.

With `--frontier`, what a higher cold / warm ratio costs: each ranking again with every cold
product's score raised by a factor c (its log-score by log c; for the image model, its dot
products by an offset), over a grid of c. Maximising expected recall subject to a floor on
expected cold recall puts a Lagrange multiplier on the cold products' expected hits, which
is such a factor, so the sweep traces the best overall recall at each cold / warm ratio for
what each ranking knows. It prints, per ranking, the overall recall where the ratio first
reaches `--ratio` (0.6, issue 15's target).
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
from twotower.data import prepared_files
from twotower.evaluate import EvalQueries, evaluate, load_queries
from twotower.synthetic import Shop, ShopConfig
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


def sales_exposure(shop: Shop, train: pd.DataFrame) -> np.ndarray:
    """(N, K) A[i, c]: the expected training-split sales of product i per unit of popularity,
    were its category c: Σ over the split's events e of θ_u(e)[c] φ_u(e)[p_i] [r_i ≤ t_e] / Z_e,
    Z_e being the event's normaliser Σ_j θ_u(e)[c_j] φ_u(e)[p_j] pop_j [r_j ≤ t_e]
    (`twotower.synthetic.simulate`). With Poisson sales, a product of popularity v and
    category c sells nothing in the split with probability exp(−v · A[i, c])."""
    taste, pattern_taste = shop.user_tastes_category, shop.user_tastes_pattern
    catalog = shop.catalog
    category, pattern = catalog["category"].to_numpy(), catalog["pattern"].to_numpy()
    release = catalog["release_time"].to_numpy()
    popularity = catalog["popularity"].to_numpy()
    users = pd.Index(shop.user_ids).get_indexer(train["user_id"])
    times = train["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64)
    order = np.argsort(times, kind="stable")
    users, times = users[order], times[order]
    num_patterns = pattern_taste.shape[1]
    mass = np.zeros((len(times), taste.shape[1] * num_patterns))  # (E, G) released popularity
    for cell in range(mass.shape[1]):
        members = np.flatnonzero(category * num_patterns + pattern == cell)
        by_release = members[np.argsort(release[members])]
        cumulative = np.concatenate([[0.0], np.cumsum(popularity[by_release])])
        mass[:, cell] = cumulative[np.searchsorted(release[by_release], times, side="right")]
    cell_weight = (taste[users][:, :, None] * pattern_taste[users][:, None, :]).reshape(mass.shape)
    share = cell_weight / (cell_weight * mass).sum(axis=1, keepdims=True)  # (E, G) θφ / Z_e
    after = np.concatenate([np.cumsum(share[::-1], axis=0)[::-1], np.zeros((1, mass.shape[1]))])
    first = np.searchsorted(times, release, side="left")  # each product's first event on sale
    by_cell = after[first].reshape(len(catalog), taste.shape[1], num_patterns)  # (N, K, P)
    return by_cell[np.arange(len(catalog)), :, pattern]


def posterior_weights(exposure: np.ndarray, known: np.ndarray,
                      popularity: np.ndarray) -> np.ndarray:
    """(N, K) E[[c_i = c] · pop_i | no sale in the split] over (category, popularity), the
    prior being `known` (N, K) on the category and the catalog's popularities, equally likely,
    on pop_i: what a user of taste θ expects of product i is θ · row i. Exact under the
    Poisson sales of `sales_exposure`."""
    likelihood = np.exp(-exposure[:, :, None] * popularity[None, None, :])  # (N, K, V)
    first = (likelihood * popularity).mean(axis=2) * known  # (N, K)
    evidence = (likelihood.mean(axis=2) * known).sum(axis=1, keepdims=True)  # (N, 1)
    return first / evidence


def rankings(run: Path) -> tuple[EvalQueries, dict[str, np.ndarray]]:
    """The test queries and (U, I) log-scores, in item_index order, of the three rankings from
    the shop's truth and of the run's two-tower models (their dot products)."""
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
    scores = {"oracle": shop_scores(exact, release, times)[:, columns]}
    files = prepared_files(run / "prepare", "train", "users")
    train = pd.read_parquet(files["train"], columns=["user_index", "timestamp"]).merge(
        pd.read_parquet(files["users"], columns=["user_index", "user_id"]), on="user_index")
    exposure = sales_exposure(shop, train)[cold]
    for name, known in knowledge.items():
        weights = exact.copy()
        weights[:, cold] = (taste @ posterior_weights(exposure, known[cold], popularity).T
                            * pattern[:, cold])
        scores[name] = shop_scores(weights, release, times)[:, columns]
    scores = {name: np.log(np.maximum(value, 1e-300)) for name, value in scores.items()}
    for model in ("id_only", "image"):
        folder = run / "train_two_tower" / model
        items = read_vectors(folder / "item_vectors.parquet")
        people = read_vectors(folder / "user_vectors_test.parquet", id_column="user_id")
        item_rows = pd.Index(items.ids).get_indexer(queries.item_ids)
        user_rows = pd.Index(people.ids).get_indexer(queries.user_id)
        scores[model] = np.where(item_rows >= 0,  # a product left unexported is never ranked
                                 people.vectors[user_rows] @ items.vectors[item_rows].T, -np.inf)
    return queries, scores


def _recall(queries: EvalQueries, scorers: dict[str, _Scores]) -> pd.DataFrame:
    """recall@50 overall, warm, cold and cold / warm of each scorer (no intervals)."""
    table = evaluate(queries, scorers, ks=(50,), n_boot=0)
    rows = table[table["metric"] == "recall"].pivot_table(index="scorer", columns="slice",
                                                          values="value", sort=False)
    out = rows[["all", "warm", "cold"]].copy()
    out["cold / warm"] = out["cold"] / out["warm"]
    return out


def bounds(run: Path) -> pd.DataFrame:
    """recall@50 overall, warm, cold and cold / warm of the three rankings and the run's image
    model."""
    queries, scores = rankings(run)
    table = _recall(queries, {name: _Scores(scores[name], queries.user_id)
                              for name in ("oracle", "content oracle", "content oracle, h kNN",
                                           "image")})
    return table.rename(index={"image": "image model"})


def frontier(run: Path, ratio: float, steps: int = 60) -> pd.DataFrame:
    """Per ranking: recall@50 as is, and where raising its cold products' scores first lifts
    cold / warm to `ratio` (the offset in its own score units), beside the id-only model."""
    queries, scores = rankings(run)
    cold = queries.item_counts == 0
    rows = []
    for name in ("content oracle", "content oracle, h kNN", "image"):
        value = scores[name]
        spread = np.subtract(*np.percentile(value[np.isfinite(value)], [99, 1]))
        offsets = np.linspace(0.0, spread, steps)
        swept = _recall(queries, {f"{b:.6g}": _Scores(value + b * cold, queries.user_id)
                                  for b in offsets})
        reached = swept[swept["cold / warm"] >= ratio]
        row = {"ranking": name, "all": swept["all"].iloc[0],
               "cold / warm": swept["cold / warm"].iloc[0]}
        if len(reached):
            first = reached.iloc[0]
            row |= {"offset": float(reached.index[0]), f"all at {ratio}": first["all"],
                    f"warm at {ratio}": first["warm"], f"cold at {ratio}": first["cold"]}
        rows.append(row)
    base = _recall(queries, {"id_only": _Scores(scores["id_only"], queries.user_id)})
    rows.append({"ranking": "id_only", "all": base["all"].iloc[0], "cold / warm": 0.0})
    return pd.DataFrame(rows).set_index("ranking")


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
    parser.add_argument("--frontier", action="store_true",
                        help="also what raising the cold products' scores costs")
    parser.add_argument("--ratio", type=float, default=0.6,
                        help="the cold / warm ratio the frontier reports at")
    args = parser.parse_args()
    if args.frontier:
        for run in args.runs:
            print(f"\n{run.name}: raising the cold products' scores until cold / warm >= "
                  f"{args.ratio} (recall@50)\n")
            print(markdown(frontier(run, args.ratio)))
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
