"""Offline top-k ranking metrics for retrieval, as pure numpy functions.

Every metric takes `retrieved`, a (Q, K) array of item ids ranked best first (integers of any
dtype, or strings), and `relevant`, a sequence of Q collections of ids (sets, lists or arrays;
duplicates count once). With hit_qi = 1 when retrieved[q, i] is in rel_q (positions i are
0-based), R_q = |rel_q| and k ≤ K, the per-query values are

    recall@k          = Σ_{i<k} hit_qi / R_q
    recall_capped@k   = Σ_{i<k} hit_qi / min(k, R_q)        (Liang et al. 2018, "Variational
                                                              Autoencoders for Collaborative
                                                              Filtering", Recall@R in §Metrics)
    ndcg@k            = DCG / IDCG,  DCG = Σ_{i<k} hit_qi / log2(i + 2),
                                     IDCG = Σ_{i<min(k, R_q)} 1 / log2(i + 2)
                        (Järvelin & Kekäläinen 2002, binary relevance)
    hit_rate@k        = 1 if Σ_{i<k} hit_qi > 0 else 0
    mrr@k             = 1 / (i* + 1) where i* is the first hit position, if i* < k; else 0

and each metric is their mean over queries. **Queries with an empty relevant set are left out of
the mean**: recall and NDCG would be 0/0 for them, and hit rate and MRR would score as a miss a
query no ranking could satisfy; all five leave them out, so they average over the same queries.
If no query has a relevant id the mean is undefined and a ValueError is raised. Only

    coverage@k        = |{retrieved[q, i] : all q, i < k}| / n_items

uses no relevance and counts every query.

`per_query_metrics` builds the (Q, K) boolean hit matrix once, vectorized, and reads every
metric at every k off the hit positions, one value per query; `ranking_metrics` is their mean
over the queries with a relevant id. A relevant id that never appears in `retrieved` is simply a
miss; a row of `retrieved` that holds the same id twice is rejected, since it would count one
relevant item twice.

`bootstrap_interval` gives the percentile bootstrap interval (Efron & Tibshirani 1993, "An
Introduction to the Bootstrap", §13.3) of a mean over users, resampling users with replacement:
an evaluator passes it the per-query values, or the per-query differences of two rankers on the
same users for a paired interval.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "bootstrap_interval",
    "coverage_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "per_query_metrics",
    "ranking_metrics",
    "recall_at_k",
    "recall_capped_at_k",
]

Relevant = Sequence[Collection[Any]]
"""Q collections of relevant ids, one per row of `retrieved`."""

_METRICS = ("recall", "recall_capped", "ndcg", "hit_rate", "mrr")


# ---------------------------------------------------------------------------------------------
# Validation and the hit matrix.


def _as_retrieved(retrieved: ArrayLike) -> np.ndarray:
    """`retrieved` as a (Q, K) array, or a ValueError."""
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2:
        raise ValueError(
            f"retrieved must be a 2-D (Q, K) array of ids, got shape {retrieved.shape}"
        )
    return retrieved


def _check_k(k: Any, n_cols: int) -> int:
    """k as an int in 1..K, or a ValueError that names K."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > n_cols:
        raise ValueError(f"k={k} exceeds K={n_cols}, the number of retrieved ids per query")
    return int(k)


def _check_unique_rows(ordered: np.ndarray) -> None:
    """Reject a row holding the same id twice, naming the row and the id.

    `ordered` is `retrieved` (Q, K) with each row sorted, so a repeat sits next to itself.
    """
    dup = ordered[:, 1:] == ordered[:, :-1]  # (Q, K - 1)
    if dup.any():
        row, col = np.argwhere(dup)[0]
        item = ordered[row, col]
        item = item.item() if isinstance(item, np.generic) else item  # 7, not np.int64(7)
        raise ValueError(
            f"retrieved row {row} contains id {item!r} more than once; "
            "each row must rank distinct ids"
        )


def _common_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a and b in one dtype that compares ids exactly.

    numpy promotes uint64 with int64 to float64, which would merge distinct ids above 2**53;
    integer ids whose common type is not an integer type are compared as Python ints.
    """
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.promote_types(a.dtype, b.dtype).kind not in "iu":
            return a.astype(object), b.astype(object)
    return a, b


def _encode(retrieved: np.ndarray, relevant: Relevant) -> tuple[np.ndarray, np.ndarray]:
    """The (Q, K) boolean hit matrix and the (Q,) count of distinct relevant ids per query.

    Retrieved and relevant ids get one set of integer codes (`np.unique` over both), so a
    (query, id) pair becomes one integer key and the hits are a single `np.isin` of the Q·K
    retrieved keys in the distinct relevant keys.
    """
    n_rows, n_cols = retrieved.shape
    if len(relevant) != n_rows:
        raise ValueError(
            f"relevant has {len(relevant)} entries but retrieved has Q={n_rows} rows; "
            "give one collection of relevant ids per query"
        )
    _check_unique_rows(np.sort(retrieved, axis=1))
    lengths = np.fromiter(map(len, relevant), dtype=np.int64, count=n_rows)  # (Q,)
    flat = list(itertools.chain.from_iterable(relevant))
    rel = np.asarray(flat) if flat else np.empty(0, dtype=retrieved.dtype)  # (Σ len,)
    ids, rel = _common_ids(retrieved.reshape(-1), rel)
    _, codes = np.unique(np.concatenate([ids, rel]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)  # (Q·K + Σ len,)
    n_codes = int(codes.max(initial=0)) + 1
    retrieved_keys = np.repeat(np.arange(n_rows), n_cols) * n_codes + codes[:ids.size]
    relevant_keys = np.unique(np.repeat(np.arange(n_rows), lengths) * n_codes + codes[ids.size:])
    hits = np.isin(retrieved_keys, relevant_keys).reshape(n_rows, n_cols)
    return hits, np.bincount(relevant_keys // n_codes, minlength=n_rows)


def _discounts(n: int) -> np.ndarray:
    """(n,) DCG position discounts 1 / log2(i + 2) for i = 0..n-1."""
    return 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)


def _per_query_from_hits(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Every relevance metric at every k, per query, from the hit matrix (Q, K) and counts (Q,).

    Each value is a (Q,) float64 array, NaN for a query with no relevant id. The sums run over
    the hit positions only (at most Σ |rel_q| of them), not over all Q·K cells.
    """
    keep = np.flatnonzero(n_relevant > 0)  # (Q',) the queries that get a value
    hits, n_rel = hits[keep], n_relevant[keep]  # (Q', K), (Q',)
    n_queries, n_cols = hits.shape
    discount = _discounts(n_cols)  # (K,)
    ideal = np.cumsum(discount)  # (K,) IDCG of j relevant ids at ideal[j - 1]
    rows, cols = np.nonzero(hits)  # (H,) each: hit positions, row-major, so cols ascend per row
    first = np.full(n_queries, n_cols)  # (Q',) first hit position, K when none
    starts = np.flatnonzero(np.diff(rows, prepend=-1))  # (·,) first entry of each row with hits
    first[rows[starts]] = cols[starts]

    def scatter(values: np.ndarray) -> np.ndarray:  # (Q',) → (Q,), NaN where no relevant id
        out = np.full(len(n_relevant), np.nan)
        out[keep] = values
        return out

    out: dict[str, np.ndarray] = {}
    for k in ks:
        within = cols < k  # (H,)
        hits_k = np.bincount(rows[within], minlength=n_queries)  # (Q',)
        dcg = np.bincount(rows[within], weights=discount[cols[within]], minlength=n_queries)
        capped = np.minimum(n_rel, k)  # (Q',)
        out[f"recall@{k}"] = scatter(hits_k / n_rel)
        out[f"recall_capped@{k}"] = scatter(hits_k / capped)
        out[f"ndcg@{k}"] = scatter(dcg / ideal[capped - 1])
        out[f"hit_rate@{k}"] = scatter((hits_k > 0).astype(np.float64))
        out[f"mrr@{k}"] = scatter(np.where(first < k, 1.0 / (first + 1.0), 0.0))
    return out


def _one(name: str, retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    retrieved = _as_retrieved(retrieved)
    k = _check_k(k, retrieved.shape[1])
    return ranking_metrics(retrieved, relevant, [k])[f"{name}@{k}"]


# ---------------------------------------------------------------------------------------------
# Public metrics.


def per_query_metrics(
    retrieved: ArrayLike, relevant: Relevant, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Recall, capped recall, NDCG, hit rate and MRR at every k in `ks`, one value per query.

    Args:
        retrieved: (Q, K) item ids, best first; integers of any dtype or strings.
        relevant: Q collections of relevant ids (duplicates count once).
        ks: cut-offs, each an int in 1..K.

    Returns:
        {"recall@k", "recall_capped@k", "ndcg@k", "hit_rate@k", "mrr@k"} for every k, in the
        order of `ks`; each a (Q,) float64 array in the order of the queries, NaN for a query
        with an empty relevant set (its metrics are undefined, see the module docstring).

    Raises:
        ValueError: on a malformed input or a bad k.
    """
    retrieved = _as_retrieved(retrieved)
    if len(ks) == 0:
        raise ValueError("ks is empty; give at least one cut-off k")
    ks = [_check_k(k, retrieved.shape[1]) for k in ks]
    hits, n_relevant = _encode(retrieved, relevant)
    return _per_query_from_hits(hits, n_relevant, ks)


def ranking_metrics(
    retrieved: ArrayLike, relevant: Relevant, ks: Sequence[int]
) -> dict[str, float]:
    """Recall, capped recall, NDCG, hit rate and MRR at every k in `ks`, from one hit matrix.

    The means over queries of `per_query_metrics`, leaving out the queries with an empty
    relevant set. Arguments as there.

    Returns:
        {"recall@k", "recall_capped@k", "ndcg@k", "hit_rate@k", "mrr@k"} for every k, in the
        order of `ks`; each the mean over queries with at least one relevant id (queries with
        an empty relevant set are left out). Coverage is not included: see `coverage_at_k`.

    Raises:
        ValueError: on a malformed input, a bad k, or when no query has a relevant id.
    """
    per_query = per_query_metrics(retrieved, relevant, ks)
    keep = ~np.isnan(next(iter(per_query.values())))  # (Q,) the same rows for every metric
    if not keep.any():
        raise ValueError(
            "no query has a relevant id: every relevant set is empty, so the metrics are "
            "undefined (queries with an empty relevant set are left out of the mean)"
        )
    return {name: float(np.mean(values[keep])) for name, values in per_query.items()}


def recall_at_k(retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    """Mean of hits@k / |rel| over queries with a relevant id (empty relevant sets left out).

    retrieved is (Q, K) ids best first, relevant Q collections of ids, 1 ≤ k ≤ K. When
    |rel| > k the best possible value is k / |rel| < 1; `recall_capped_at_k` fixes that.
    """
    return _one("recall", retrieved, relevant, k)


def recall_capped_at_k(retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    """Mean of hits@k / min(k, |rel|) over queries with a relevant id (empty sets left out).

    Recall@R of Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering"
    (Metrics section): the denominator is capped at k so that a perfect ranking scores 1
    however many relevant items the query has. Equal to `recall_at_k` for queries with
    |rel| ≤ k.
    """
    return _one("recall_capped", retrieved, relevant, k)


def ndcg_at_k(retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    """Mean binary-relevance NDCG@k over queries with a relevant id (empty sets left out).

    DCG = Σ_{i<k} hit_i / log2(i + 2) and IDCG = Σ_{i<min(k, |rel|)} 1 / log2(i + 2), positions
    0-based (Järvelin & Kekäläinen 2002): the ideal ranking puts all min(k, |rel|) relevant ids
    first, so a perfect ranking scores 1.
    """
    return _one("ndcg", retrieved, relevant, k)


def hit_rate_at_k(retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    """Fraction of queries with at least one relevant id in their top k.

    Only queries with a non-empty relevant set count (empty ones are left out of the mean).
    """
    return _one("hit_rate", retrieved, relevant, k)


def mrr_at_k(retrieved: ArrayLike, relevant: Relevant, k: int) -> float:
    """Mean reciprocal rank of the first relevant id, 1 / rank (1-based), 0 if not in the top k.

    Only queries with a non-empty relevant set count (empty ones are left out of the mean).
    """
    return _one("mrr", retrieved, relevant, k)


def coverage_at_k(retrieved: ArrayLike, k: int, n_items: int) -> float:
    """Fraction of the catalog that appears in some query's top k: |∪_q top-k(q)| / n_items.

    Uses no relevance, so every query counts. `n_items` is the catalog size; fewer than the
    number of distinct ids retrieved is an error (the value would exceed 1).
    """
    retrieved = _as_retrieved(retrieved)
    k = _check_k(k, retrieved.shape[1])
    if isinstance(n_items, bool) or not isinstance(n_items, numbers.Integral) or n_items < 1:
        raise ValueError(f"n_items must be an int >= 1 (the catalog size), got {n_items!r}")
    _check_unique_rows(np.sort(retrieved, axis=1))
    n_distinct = len(np.unique(retrieved[:, :k]))
    if n_distinct > n_items:
        raise ValueError(
            f"the top {k} hold {n_distinct} distinct ids but n_items={n_items}; "
            "n_items must be the catalog size"
        )
    return n_distinct / int(n_items)


# ---------------------------------------------------------------------------------------------
# Uncertainty.

_BOOT_BLOCK = 1 << 21
"""Resampled user slots `bootstrap_interval` holds at once: 2M, some 50 MiB of draws and counts."""


def bootstrap_interval(
    values: ArrayLike, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Any, Any]:
    """Percentile bootstrap interval of the mean over rows of `values` (users).

    Efron & Tibshirani 1993, "An Introduction to the Bootstrap", §13.3: draw U rows with
    replacement `n_boot` times, take each resample's mean θ*_b, and return the (1 − level) / 2
    and (1 + level) / 2 quantiles of the θ*_b. Resample b's rows are
    `rng.integers(0, U, U, dtype=np.int32)`, b = 0, 1, …, from one `np.random.default_rng(seed)`,
    so two calls with the same seed and U resample the same users: intervals of two rankers on
    the same users are paired, and the interval of their per-user difference is the paired
    interval of the difference of their means.

    Each resample is a vector of counts c_b (U,) with Σ c = U, so θ*_b = c_b · values / U; the
    counts are built for a block of resamples at a time (at most ~2M user slots), so memory
    stays bounded for any U and n_boot.

    Args:
        values: (U,) or (U, M) finite numbers, one row per user; M means are bootstrapped
            together, every column with the same resamples.
        n_boot: resamples, ≥ 1.
        level: coverage of the interval, in (0, 1).
        seed: seeds the resampling.

    Returns:
        (low, high): floats for (U,) values, (M,) float64 arrays for (U, M) values.

    Raises:
        ValueError: on no rows, a non-finite value, n_boot < 1 or level outside (0, 1).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError(f"values must be (U,) or (U, M) with U ≥ 1 users, got shape "
                         f"{values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite; leave out the users without a value")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")
    table = values.reshape(values.shape[0], -1)  # (U, M)
    n_users = table.shape[0]
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK // n_users)  # resamples per block
    means = np.empty((n_boot, table.shape[1]))  # (B, M) θ*_b
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        rows = rng.integers(0, n_users, size=(b, n_users), dtype=np.int32)  # (b, U) draws
        slots = (np.arange(b, dtype=np.int64)[:, None] * n_users + rows).ravel()
        counts = np.bincount(slots, minlength=b * n_users).reshape(b, n_users)  # (b, U)
        means[start:start + b] = counts @ table / n_users  # (b, M)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)  # (M,)
    if values.ndim == 1:
        return float(low[0]), float(high[0])
    return low, high
