"""Offline retrieval evaluation over a prepared split: any scorer, the baselines, slices.

Protocol (DESIGN.md, "Retrieval and evaluation"): every user with targets in the split gets a
full-catalog ranking; the items the user has already seen (training items and the query
history) are masked, so they are neither returned nor counted as targets; a target the user
had already seen is dropped. The metrics (twotower.metrics) are reported for each k, overall
and per slice of items:

    all     every target
    warm    targets with training interactions        cold   targets with none (new items)
    head    warm targets among the `head_fraction` most popular items (by training count)
    tail    the other warm targets

A slice restricts the targets, never the ranking: tail recall@50 is the share of a user's
tail targets found in the same top 50 that overall recall is computed from. Every mean over
users comes with its 95% bootstrap interval over the slice's users, the same resamples for
every scorer, and optionally its paired difference from a reference scorer (`evaluate`).

A scorer is anything with `rank(queries, k) -> (U, k) item ids`. Here: `PopularityScorer`
(training counts), `EASEScorer` (Steck 2019), `IALSScorer` (implicit ALS, Hu et al. 2008, through
the `implicit` library), and `VectorScorer` (user vectors searched in an `ItemIndex`), which also
serves the image-kNN baseline (`image_knn`) and trained two-tower models (`VectorScorer.from_saved`:
an index folder and a user vectors Parquet). A `VectorScorer` given an exact index beside an
approximate one also reports the ANN index's recall@k against exact search.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import polars as pl
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from twotower.data import prepared_files
from twotower.files import DataError
from twotower.index import ItemIndex
from twotower.metrics import bootstrap_interval, coverage_at_k, per_query_metrics
from twotower.progress import progress as show_progress
from twotower.vectors import Vectors, read_vectors

__all__ = [
    "KS",
    "SLICES",
    "EASEScorer",
    "EvalQueries",
    "IALSConfig",
    "IALSScorer",
    "PopularityScorer",
    "Scorer",
    "VectorScorer",
    "evaluate",
    "image_knn",
    "item_slices",
    "load_queries",
]

KS = (10, 20, 50, 100)
SLICES = ("all", "warm", "cold", "head", "tail")


@dataclass(frozen=True)
class EvalQueries:
    """The users of one evaluation split, as scorers see them (item lists hold item_index)."""

    user_index: np.ndarray
    """(U,) int: the users, in user_index order."""
    user_id: np.ndarray
    """(U,) str."""
    history: list[np.ndarray]
    """Per user, the time-ordered recent items before the user's first target (fold-in items
    for holdout users): what a model may read."""
    seen: list[np.ndarray]
    """Per user, every item to mask: training items and the history."""
    relevant: list[np.ndarray]
    """Per user, the targets not already seen (never empty)."""
    item_ids: np.ndarray
    """(I,) str: item_index → item_id for the prepared catalog."""
    item_counts: np.ndarray
    """(I,) int: training interactions per item."""
    dropped: int = 0
    """Users of the split left out because every target was an item they had already seen."""

    def __len__(self) -> int:
        return len(self.user_index)

    def take(self, rows: np.ndarray | slice) -> EvalQueries:
        """The queries of some users (rows of this set)."""
        picked = np.arange(len(self))[rows]
        return replace(
            self,
            user_index=self.user_index[picked], user_id=self.user_id[picked],
            history=[self.history[i] for i in picked], seen=[self.seen[i] for i in picked],
            relevant=[self.relevant[i] for i in picked],
        )


def load_queries(prepared: str | os.PathLike[str], split: str = "test") -> EvalQueries:
    """The users of `split` ("valid" or "test") of a prepared folder, with what to mask."""
    folder = Path(prepared)
    if split not in ("valid", "test"):
        raise DataError(f"unknown split {split!r}; choose 'valid' or 'test'", path=folder)
    paths = prepared_files(folder, split, "users", "items")
    targets = pl.read_parquet(paths[split], columns=["user_index", "item_index", "timestamp",
                                                     "history"])
    users = pl.read_parquet(paths["users"], columns=["user_index", "user_id", "history"])
    items = pl.read_parquet(paths["items"], columns=["item_index", "item_id", "count"])
    items = items.sort("item_index")
    if not (items["item_index"].to_numpy() == np.arange(len(items))).all():
        raise DataError("item_index is not 0..I-1", path=paths["items"], column="item_index")
    per_user = (
        targets.sort(["user_index", "timestamp"])
        .group_by("user_index", maintain_order=True)
        .agg(pl.col("history").first(), pl.col("item_index").unique().alias("targets"))
        .join(users.rename({"history": "train"}), on="user_index", how="left")
        .with_columns(seen=pl.concat_list("train", "history").list.unique())
        .with_columns(relevant=pl.col("targets").list.set_difference("seen"))
    )
    if per_user["user_id"].null_count():
        raise DataError("a target's user_index is not in users.parquet", path=paths[split],
                        column="user_index")
    kept = per_user.filter(pl.col("relevant").list.len() > 0)
    return EvalQueries(
        user_index=kept["user_index"].to_numpy().astype(np.int64),
        user_id=np.asarray(kept["user_id"].to_numpy(), dtype=str),
        history=_arrays(kept["history"]),
        seen=[np.sort(a) for a in _arrays(kept["seen"])],
        relevant=[np.sort(a) for a in _arrays(kept["relevant"])],
        item_ids=np.asarray(items["item_id"].to_numpy(), dtype=str),
        item_counts=items["count"].to_numpy().astype(np.int64),
        dropped=len(per_user) - len(kept),
    )


def item_slices(queries: EvalQueries, head_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Slice name → the item_index values in it (see the module docstring)."""
    if not 0.0 < head_fraction < 1.0:
        raise ValueError(f"head_fraction must lie in (0, 1), got {head_fraction!r}")
    counts = queries.item_counts
    warm = np.flatnonzero(counts > 0)
    by_popularity = warm[np.argsort(-counts[warm], kind="stable")]
    n_head = math.ceil(head_fraction * warm.size)
    return {
        "all": np.arange(counts.size),
        "warm": warm,
        "cold": np.flatnonzero(counts == 0),
        "head": np.sort(by_popularity[:n_head]),
        "tail": np.sort(by_popularity[n_head:]),
    }


class Scorer(Protocol):
    """Ranks the catalog for each query user."""

    n_items: int
    """How many distinct items it can return (the denominator of coverage@k)."""

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        """(U, k) item ids, best first, none of them in the user's `seen` items."""
        ...


class PopularityScorer:
    """Every user gets the most-interacted training items they have not seen."""

    def __init__(self, item_ids: np.ndarray, counts: np.ndarray) -> None:
        # Popularity is a 1-d inner product (count · 1) in an exact index, so masking and the
        # top-k are the ItemIndex's own; stable ties by catalog order.
        self._index = ItemIndex.build(np.asarray(counts, np.float32)[:, None], item_ids,
                                      "flat", device="cpu", normalize=False)
        self.n_items = len(item_ids)

    @classmethod
    def from_queries(cls, queries: EvalQueries) -> PopularityScorer:
        return cls(queries.item_ids, queries.item_counts)

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        ones = np.ones((len(queries), 1), np.float32)
        return self._index.search(ones, k, exclude=_seen_ids(queries))[1]


class EASEScorer:
    """EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

    B = argmin ‖X − XB‖² + λ‖B‖² s.t. diag(B) = 0 has the closed form (eq. 8)
        P = (XᵀX + λI)⁻¹,   B_ij = −P_ij / P_jj  (i ≠ j),   B_jj = 0,
    with X the binary user × item training matrix; a user's scores are x_u B. Ties are broken
    by training popularity: a user with no history scores 0 everywhere and gets the most
    popular items, as any deployed system would serve them.
    It holds three dense I × I float64 matrices while fitting, so it refuses catalogs whose
    matrices do not fit in memory.
    """

    def __init__(self, weights: np.ndarray, item_ids: np.ndarray, popularity: np.ndarray) -> None:
        self.weights = weights  # (I, I) float32, B
        self.item_ids = item_ids
        self.popularity = popularity  # (I,) training users per item, the tie-break
        self.n_items = len(item_ids)

    @classmethod
    def fit(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        item_ids: np.ndarray,
        *,
        l2: float = 500.0,
        max_memory_gib: float | None = None,
    ) -> EASEScorer:
        """Fit B on (user, item) training pairs; items index `item_ids` (I,)."""
        if l2 <= 0:
            raise ValueError(f"EASE needs an L2 penalty λ > 0, got {l2!r}")
        n = len(item_ids)
        need = 3 * n * n * 8 / 2**30
        budget = _available_gib() if max_memory_gib is None else max_memory_gib
        if need > budget:
            raise MemoryError(
                f"EASE on {n:,} items needs about {need:.1f} GiB for its three dense "
                f"{n:,}-by-{n:,} float64 matrices, more than the {budget:.1f} GiB available; "
                "shrink the catalog (raise min_item_interactions when preparing) or leave EASE "
                "out of the baselines"
            )
        x = _binary(users, items, n)
        gram = (x.T @ x).toarray()  # (I, I) co-occurrence counts
        gram[np.diag_indices(n)] += l2
        precision = np.linalg.inv(gram)
        del gram
        weights = precision / -np.diag(precision)  # column j divided by −P_jj
        weights[np.diag_indices(n)] = 0.0
        popularity = np.asarray(x.sum(axis=0)).ravel()
        return cls(weights.astype(np.float32), np.asarray(item_ids), popularity)

    @classmethod
    def from_prepared(
        cls, prepared: str | os.PathLike[str], *, l2: float = 500.0,
        max_memory_gib: float | None = None,
    ) -> EASEScorer:
        """Fit on a prepared folder's training split."""
        return cls.fit(*_training_pairs(prepared), l2=l2, max_memory_gib=max_memory_gib)

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        rows, seen = _seen_cells(queries, self.n_items, k)
        x = np.zeros((len(queries), self.n_items), np.float32)  # (U, I) binary histories
        x[rows, seen] = 1.0
        return _top_unseen(x @ self.weights, rows, seen, self.popularity, self.item_ids, k)


@dataclass(frozen=True)
class IALSConfig:
    """Implicit ALS (Hu, Koren & Volinsky 2008) as `IALSScorer` fits it.

    The defaults are a starting point, not tuned values. On MovieLens-small (3.6k items once
    prepared, 63 validation users) recall@20 with 64 or 128 factors ranged 0.070–0.080 over
    regularization 1, 10, 100 and alpha 1, 10, 40 (EASE: 0.079); 10 / 10 gave 0.079. Rendle
    et al. 2022 ("Revisiting the Performance of iALS on Item Recommendation Benchmarks") show
    that iALS is only competitive once its regularization and the weight of the unobserved pairs
    (here 1 against 1 + alpha) are tuned per data set: a benchmark should tune them.
    """

    factors: int = 64
    """Dimension of the user and item vectors."""
    regularization: float = 10.0
    """λ, the L2 penalty on every user and item vector (Hu et al. 2008, eq. 3)."""
    alpha: float = 10.0
    """The extra confidence of an observed pair: c_ui = 1 + alpha for an observed pair and 1 for
    the others (Hu et al. 2008, eq. 1 and 2 with binary r_ui)."""
    iterations: int = 15
    """Alternating passes over the users and the items."""
    seed: int = 0
    """Seeds the random initial vectors; one seed gives one model."""
    num_threads: int = 0
    """CPU threads implicit solves users and items on; 0 is one per core."""

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be >= 1, got {self.factors!r}")
        if not self.regularization > 0:
            raise ValueError(f"regularization λ must be > 0 (it keeps every user's solve "
                             f"well-posed), got {self.regularization!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 (the confidence 1 + alpha of an observed pair "
                             f"is at least that of an unobserved one), got {self.alpha!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations!r}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0: one per core), got "
                             f"{self.num_threads!r}")


class IALSScorer:
    """Implicit ALS (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback
    Datasets"), fitted by the `implicit` library on its CPU.

    With p_ui = 1 for an observed (user, item) pair and 0 otherwise, and confidence
    c_ui = 1 + α p_ui (eq. 1–2), the user vectors U and item vectors V minimize
        Σ_ui c_ui (p_ui − u_uᵀ v_i)² + λ (Σ_u ‖u_u‖² + Σ_i ‖v_i‖²)        (eq. 3)
    over the binary user × item training matrix (repeated pairs count once, as in EASE).
    At `rank` time every query user's vector is solved afresh from their `seen` items with the
    item vectors fixed (eq. 4, implicit's `recalculate_user`):
        u = (Vᵀ C_u V + λI)⁻¹ Vᵀ C_u p_u,
    so training users, held-out users and temporal test users are all scored from what the
    evaluator masks, exactly what EASE reads. A user's scores are V u; ties are broken by
    training popularity, so a user with no history gets the most popular items.
    implicit parallelizes over users itself, so BLAS runs on one thread while it works (its
    documented advice: OpenBLAS threads on top of its own slow it down severely).
    """

    def __init__(self, model: AlternatingLeastSquares, item_ids: np.ndarray,
                 popularity: np.ndarray, config: IALSConfig) -> None:
        self.model = model  # fitted; model.item_factors is V, (I, factors) float32
        self.item_ids = item_ids
        self.popularity = popularity  # (I,) training users per item, the tie-break
        self.config = config
        self.n_items = len(item_ids)

    @classmethod
    def fit(
        cls, users: np.ndarray, items: np.ndarray, item_ids: np.ndarray, *,
        config: IALSConfig | None = None,
    ) -> IALSScorer:
        """Fit U and V on (user, item) training pairs; items index `item_ids` (I,)."""
        config = config or IALSConfig()
        x = _binary(users, items, len(item_ids))
        with threadpool_limits(1, "blas"):
            # implicit scales its input by its own `alpha`; it gets the confidences c_ui
            # themselves and alpha 1. An item without training pairs gets the zero vector.
            model = AlternatingLeastSquares(
                factors=config.factors, regularization=config.regularization, alpha=1.0,
                iterations=config.iterations, random_state=config.seed,
                num_threads=config.num_threads)
            model.fit(_confidences(x, config.alpha), show_progress=False)
        popularity = np.asarray(x.sum(axis=0)).ravel()
        return cls(model, np.asarray(item_ids), popularity, config)

    @classmethod
    def from_prepared(
        cls, prepared: str | os.PathLike[str], *, config: IALSConfig | None = None,
    ) -> IALSScorer:
        """Fit on a prepared folder's training split."""
        return cls.fit(*_training_pairs(prepared), config=config)

    def user_vectors(self, queries: EvalQueries) -> np.ndarray:
        """(U, factors) float32: each query user solved from their `seen` items (eq. 4)."""
        return self._fold_in(*_seen_cells(queries, self.n_items, 0), len(queries))

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        rows, seen = _seen_cells(queries, self.n_items, k)
        scores = self._fold_in(rows, seen, len(queries)) @ self.model.item_factors.T  # (U, I)
        return _top_unseen(scores, rows, seen, self.popularity, self.item_ids, k)

    def _fold_in(self, rows: np.ndarray, seen: np.ndarray, n_users: int) -> np.ndarray:
        history = _confidences(_binary(rows, seen, self.n_items, n_users=n_users),
                               self.config.alpha)  # (U, I) sparse
        with threadpool_limits(1, "blas"):
            return self.model.recalculate_user(np.arange(n_users), history)  # (U, factors)


@dataclass
class VectorScorer:
    """User vectors searched in an ItemIndex: two-tower models and the image-kNN baseline.

    `user_vectors(queries)` returns (U, d) float32, one row per query user. With `exact` (a
    flat index over the same item vectors) beside an approximate `index`, `evaluate` also
    reports the index's recall@k against exact search.
    """

    index: ItemIndex
    user_vectors: Callable[[EvalQueries], np.ndarray]
    exact: ItemIndex | None = None
    n_items: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_items = len(self.index)

    @classmethod
    def from_saved(cls, index_dir: str | os.PathLike[str], user_vectors: str | os.PathLike[str],
                   *, device: str = "cpu") -> VectorScorer:
        """A trained model as saved: its `ItemIndex` folder searched with its precomputed user
        vectors (a Parquet keyed by `user_id`), and an exact index beside an approximate one.

        The exact reference is a flat index over the vectors the approximate one was built from
        (its metadata's `source`), when that file is still there. A user of the queries without
        a vector, or vectors of another dimension than the index's, is a `DataError`.
        """
        index = ItemIndex.load(index_dir, device=device)
        users = read_vectors(user_vectors, id_column="user_id")
        if users.vectors.shape[1] != index.dim:
            raise DataError(f"user vectors have dimension {users.vectors.shape[1]} but the index "
                            f"{index_dir} has {index.dim}", path=user_vectors, column="embedding")
        exact = None
        if index.kind != "flat" and index.source and Path(index.source).is_file():
            items = read_vectors(index.source)
            exact = ItemIndex.build(items.vectors, items.ids, "flat", device=device,
                                    normalize=index.normalized)
        row_of = pd.Index(users.ids)

        def vectors_for(queries: EvalQueries) -> np.ndarray:
            rows = row_of.get_indexer(queries.user_id)
            if (rows < 0).any():
                missing = queries.user_id[rows < 0]
                raise DataError(f"no vector for {missing.size} user(s) of the split",
                                path=user_vectors, column="user_id", value=str(missing[0]))
            return users.vectors[rows]

        return cls(index=index, user_vectors=vectors_for, exact=exact)

    def rank(self, queries: EvalQueries, k: int) -> np.ndarray:
        return self._search(self.index, queries, k)

    def rank_exact(self, queries: EvalQueries, k: int) -> np.ndarray:
        if self.exact is None:
            raise ValueError("this VectorScorer has no exact index to compare against")
        return self._search(self.exact, queries, k)

    def _search(self, index: ItemIndex, queries: EvalQueries, k: int) -> np.ndarray:
        vectors = self.user_vectors(queries)
        ids = index.search(vectors, k, exclude=_seen_ids(queries))[1]
        return ids.astype(str) if ids.dtype.kind != "U" else ids


def image_knn(embeddings: Vectors, *, device: str = "auto") -> VectorScorer:
    """The image-kNN baseline: a user is the mean of their history's L2-normalized image
    embeddings, and gets the products nearest to it.

    History items without an embedding are skipped; a user with none gets the catalog's mean
    embedding (every user then sees the same, most central products).
    """
    unit = embeddings.vectors / np.linalg.norm(embeddings.vectors, axis=1, keepdims=True)
    index = ItemIndex.build(unit, embeddings.ids, "flat", device=device,
                            source=str(embeddings.metadata.get("checkpoint", "")) or None)
    row_of = pd.Index(embeddings.ids)
    fallback = unit.mean(axis=0)

    def user_vectors(queries: EvalQueries) -> np.ndarray:
        out = np.empty((len(queries), unit.shape[1]), np.float32)
        for u, history in enumerate(queries.history):
            rows = row_of.get_indexer(queries.item_ids[history])
            rows = rows[rows >= 0]
            out[u] = unit[rows].mean(axis=0) if rows.size else fallback
        return out

    return VectorScorer(index=index, user_vectors=user_vectors)


def evaluate(
    queries: EvalQueries,
    scorers: Mapping[str, Scorer],
    *,
    ks: Sequence[int] = KS,
    head_fraction: float = 0.2,
    batch_size: int = 1024,
    progress: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    reference: str | None = None,
) -> pd.DataFrame:
    """Rank the catalog for every query user with every scorer; return the metrics table.

    Columns: scorer, slice, metric (recall, recall_capped, ndcg, hit_rate, mrr; coverage and
    ann_recall on slice "all"), k, value, low, high, users (query users with a target in the
    slice). A slice without targets in this split is left out.

    `low`–`high` is the 95% percentile bootstrap interval of the value over users
    (`twotower.metrics.bootstrap_interval`, `n_boot` resamples of the slice's users, seeded by
    `seed`): every scorer gets the same resamples, so intervals are paired. ann_recall, a mean
    over users too, gets one; coverage, a property of all users' rankings together, does not
    (NaN). `n_boot=0` skips the bootstrap (NaN).

    With `reference` (the name of one of `scorers`) three more columns: `diff`, the value minus
    the reference's on the same users and metric (0 for the reference itself; NaN where the
    reference has no such row, e.g. ann_recall of a baseline), and `diff_low`–`diff_high`, the
    paired bootstrap interval of that difference (the interval of the per-user differences'
    mean; NaN for coverage). A difference whose interval holds 0 is a tie at this size.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0 (0 skips the intervals), got {n_boot!r}")
    if reference is not None and reference not in scorers:
        raise ValueError(f"reference {reference!r} is not one of the scorers {list(scorers)}")
    if not len(queries):
        raise DataError("no user of this split has a target they had not already seen")
    top = max(ks)
    for name, scorer in scorers.items():
        if top > scorer.n_items:
            raise ValueError(f"scorer {name!r} can return {scorer.n_items} items; largest k is "
                             f"{top}")
    targets = {}  # slice → (per user, the target ids in the slice; the users with any)
    for slice_name, items in item_slices(queries, head_fraction).items():
        mask = np.isin(np.arange(len(queries.item_ids)), items)
        relevant = [queries.item_ids[r[mask[r]]] for r in queries.relevant]
        users = np.flatnonzero([r.size > 0 for r in relevant])
        if users.size:
            targets[slice_name] = (relevant, users)
    # The reference is ranked first: its per-user values are kept, to pair the others with.
    paired: dict[str, _PerUser] = {}  # block (a slice, or "ann") → the reference's values
    paired_coverage: dict[int, float] = {}
    rows_of: dict[str, list[dict]] = {}
    for name in sorted(scorers, key=lambda name: name != reference):
        scorer = scorers[name]
        ranked = _in_batches(scorer.rank, queries, top, batch_size, f"rank {name}", progress)
        blocks: dict[str, _PerUser] = {
            slice_name: {(key.split("@")[0], int(key.split("@")[1])): values[users]
                         for key, values in per_query_metrics(ranked, relevant, ks).items()}
            for slice_name, (relevant, users) in targets.items()}
        if isinstance(scorer, VectorScorer) and scorer.exact is not None:
            exact = _in_batches(scorer.rank_exact, queries, top, batch_size, f"exact {name}",
                                progress)
            blocks["ann"] = {("ann_recall", k): _overlap(ranked[:, :k], exact[:, :k])
                             for k in ks}
        coverage = {k: coverage_at_k(ranked, k, scorer.n_items) for k in ks}
        if name == reference:
            paired, paired_coverage = blocks, coverage
        rows_of[name] = [row for block, values in blocks.items()
                         for row in _rows(name, "all" if block == "ann" else block, values,
                                          paired.get(block), n_boot=n_boot, seed=seed)]
        # Coverage is one value of all the rankings together, not a mean over users: no
        # interval; its difference from the reference's is a plain one.
        rows_of[name] += [{"scorer": name, "slice": "all", "metric": "coverage", "k": k,
                           "value": value, "low": np.nan, "high": np.nan, "users": len(queries),
                           "diff": value - paired_coverage[k] if reference else np.nan}
                          for k, value in coverage.items()]
    columns = ["scorer", "slice", "metric", "k", "value", "low", "high", "users"]
    if reference is not None:
        columns += ["diff", "diff_low", "diff_high"]
    return pd.DataFrame([row for name in scorers for row in rows_of[name]], columns=columns)


_PerUser = dict[tuple[str, int], np.ndarray]
"""(metric, k) → (U_b,) one value per user of a block: a slice's users, or all for ann_recall."""


def _rows(scorer: str, slice_name: str, values: _PerUser, reference: _PerUser | None, *,
          n_boot: int, seed: int) -> list[dict]:
    """The table rows of one scorer's block of per-user values, with the bootstrap intervals of
    every mean and of every difference from `reference` (same users) from one set of resamples.
    """
    names = list(values)
    shared = [n for n in names if reference is not None and n in reference]
    low = high = np.full(len(names) + len(shared), np.nan)
    if n_boot:
        table = np.column_stack([values[n] for n in names] +  # (U_b, M + M')
                                [values[n] - reference[n] for n in shared])
        low, high = bootstrap_interval(table, n_boot=n_boot, seed=seed)
    rows = []
    for j, (metric, k) in enumerate(names):
        value = float(np.mean(values[metric, k]))
        rows.append({"scorer": scorer, "slice": slice_name, "metric": metric, "k": k,
                     "value": value, "low": low[j], "high": high[j],
                     "users": values[metric, k].size})
        if (metric, k) in shared:  # else diff, diff_low and diff_high stay NaN in the table
            d = len(names) + shared.index((metric, k))
            rows[-1].update(diff=value - float(np.mean(reference[metric, k])),
                            diff_low=low[d], diff_high=high[d])
    return rows


# -------------------------------------------------------------------- helpers
def _arrays(column: pl.Series) -> list[np.ndarray]:
    """A list column as one int64 numpy array per row."""
    lengths = column.list.len().fill_null(0).to_numpy()
    values = column.explode().drop_nulls().to_numpy().astype(np.int64)
    return np.split(values, np.cumsum(lengths)[:-1])


def _seen_ids(queries: EvalQueries) -> list[np.ndarray]:
    return [queries.item_ids[s] for s in queries.seen]


def _training_pairs(
    prepared: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_index, item_index) of every training row, and item_ids (I,) in item_index order."""
    paths = prepared_files(prepared, "train", "items")
    train = pl.read_parquet(paths["train"], columns=["user_index", "item_index"])
    items = pl.read_parquet(paths["items"], columns=["item_index", "item_id"])
    item_ids = np.asarray(items.sort("item_index")["item_id"].to_numpy(), dtype=str)
    return train["user_index"].to_numpy(), train["item_index"].to_numpy(), item_ids


def _binary(users: np.ndarray, items: np.ndarray, n_items: int, *,
            n_users: int | None = None) -> sp.csr_matrix:
    """The binary user × item matrix of (user, item) pairs: repeated pairs count once.

    n_users rows (default: the largest user index + 1), float32.
    """
    users = np.asarray(users, np.int64)
    rows = int(users.max(initial=-1)) + 1 if n_users is None else n_users
    x = sp.csr_matrix((np.ones(users.size, np.float32), (users, np.asarray(items, np.int64))),
                      shape=(rows, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _confidences(x: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """The observed cells of binary x as iALS confidences c = 1 + α (Hu et al. 2008, eq. 2)."""
    return sp.csr_matrix(((1.0 + alpha) * x.data.astype(np.float32), x.indices, x.indptr),
                         shape=x.shape)


def _seen_cells(queries: EvalQueries, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) of every query user's seen items, flat; a ValueError when a user has
    seen so much of the catalog that fewer than k items are left to rank."""
    counts = np.array([s.size for s in queries.seen], np.int64)
    if (n_items - counts < k).any():
        u = int(np.flatnonzero(n_items - counts < k)[0])
        raise ValueError(f"user {queries.user_id[u]!r} has seen {counts[u]} of "
                         f"{n_items} items, leaving fewer than k={k} to rank")
    rows = np.repeat(np.arange(len(queries)), counts)
    seen = np.concatenate(queries.seen) if len(queries) else np.zeros(0, np.int64)
    return rows, seen


def _top_unseen(scores: np.ndarray, rows: np.ndarray, seen: np.ndarray,
                popularity: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """(U, k) item ids by score (U, I), ties by popularity (I,), the seen cells masked."""
    scores[rows, seen] = -np.inf
    order = np.lexsort((np.broadcast_to(-popularity, scores.shape), -scores), axis=1)[:, :k]
    return item_ids[order]


def _in_batches(
    rank: Callable[[EvalQueries, int], np.ndarray], queries: EvalQueries, k: int,
    batch_size: int, desc: str, progress: bool,
) -> np.ndarray:
    parts = [rank(queries.take(slice(start, start + batch_size)), k)
             for start in show_progress(range(0, len(queries), batch_size), desc=desc,
                                        unit="batch", enabled=progress)]
    return np.concatenate(parts)


def _overlap(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(U,) |found ∩ exact| / k per row: an ANN index's recall@k against exact search."""
    k = found.shape[1]
    return np.array([np.intersect1d(a, b).size / k for a, b in zip(found, exact, strict=True)])


def _available_gib() -> float:
    """Memory the OS could give us now (Linux MemAvailable; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
