"""Ranking metrics against naive twins written from the definitions, hand-worked 2-user numbers
and the edge cases: empty relevant sets, fewer relevant ids than k, perfect rankings, bad input;
the bootstrap interval against a loop over resamples and its analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower import metrics
from twotower.metrics import (
    bootstrap_interval,
    coverage_at_k,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    per_query_metrics,
    ranking_metrics,
    recall_at_k,
    recall_capped_at_k,
)

TOL = {"rtol": 1e-12, "atol": 1e-12}

# ---------------------------------------------------------------------------------------------
# Naive twins: one query at a time, a list and a set, a loop over positions.


def _mean_over_nonempty(retrieved, relevant, per_query) -> float:
    """Mean of per_query(ranked list, relevant set) over queries whose relevant set is non-empty."""
    values = []
    for ranked, rel in zip(retrieved, relevant, strict=True):
        rel = set(rel)
        if rel:
            values.append(per_query(list(ranked), rel))
    if not values:
        raise ValueError("no query has a relevant id")
    return sum(values) / len(values)


def _hits(ranked, rel, k) -> int:
    return sum(1 for item in ranked[:k] if item in rel)


def naive_recall(retrieved, relevant, k) -> float:
    """hits@k / |rel|."""
    return _mean_over_nonempty(retrieved, relevant, lambda r, rel: _hits(r, rel, k) / len(rel))


def naive_recall_capped(retrieved, relevant, k) -> float:
    """Liang et al. 2018, Recall@R: hits@k / min(k, |rel|)."""
    return _mean_over_nonempty(
        retrieved, relevant, lambda r, rel: _hits(r, rel, k) / min(k, len(rel))
    )


def naive_ndcg(retrieved, relevant, k) -> float:
    """Binary NDCG: Σ_{i<k} hit_i / log2(i+2) over Σ_{i<min(k,|rel|)} 1 / log2(i+2)."""

    def one(ranked, rel):
        dcg = 0.0
        for i in range(k):
            if ranked[i] in rel:
                dcg += 1.0 / math.log2(i + 2)
        idcg = 0.0
        for i in range(min(k, len(rel))):
            idcg += 1.0 / math.log2(i + 2)
        return dcg / idcg

    return _mean_over_nonempty(retrieved, relevant, one)


def naive_hit_rate(retrieved, relevant, k) -> float:
    """1 if any of the top k is relevant."""
    return _mean_over_nonempty(retrieved, relevant, lambda r, rel: float(_hits(r, rel, k) > 0))


def naive_mrr(retrieved, relevant, k) -> float:
    """1 / (1-based rank of the first relevant id) if it is within k, else 0."""

    def one(ranked, rel):
        for i in range(k):
            if ranked[i] in rel:
                return 1.0 / (i + 1)
        return 0.0

    return _mean_over_nonempty(retrieved, relevant, one)


def naive_coverage(retrieved, k, n_items) -> float:
    """Distinct ids in every query's top k over the catalog size."""
    seen = set()
    for ranked in retrieved:
        for item in list(ranked)[:k]:
            seen.add(item)
    return len(seen) / n_items


PAIRS = {
    "recall": (recall_at_k, naive_recall),
    "recall_capped": (recall_capped_at_k, naive_recall_capped),
    "ndcg": (ndcg_at_k, naive_ndcg),
    "hit_rate": (hit_rate_at_k, naive_hit_rate),
    "mrr": (mrr_at_k, naive_mrr),
}

# ---------------------------------------------------------------------------------------------
# Random cases: Q queries ranking K distinct ids from a catalog a little larger than K, relevant
# sets of any size (empty, under k, over k, with duplicates and never-retrieved ids).

ID_KINDS = ("int64", "int32", "uint64", "big", "str")


def _catalog(kind: str, n: int) -> tuple[list, object]:
    """n distinct ids of the given kind and the dtype `retrieved` is built with."""
    if kind == "str":
        return [f"sku-{i}" for i in range(n)], None
    if kind == "big":
        return [10**12 + 7 * i for i in range(n)], np.int64
    return list(range(3, 3 + 5 * n, 5)), np.dtype(kind)


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(ID_KINDS))
    n_queries = draw(st.integers(1, 8))
    n_cols = draw(st.integers(1, 12))
    catalog, dtype = _catalog(kind, n_cols + draw(st.integers(0, 10)))
    retrieved = [draw(st.permutations(catalog))[:n_cols] for _ in range(n_queries)]
    relevant = []
    for _ in range(n_queries):
        ids = draw(st.lists(st.sampled_from(catalog), max_size=len(catalog) + 3))
        container = draw(st.sampled_from(("set", "list", "array")))
        if container == "set":
            relevant.append(set(ids))
        elif container == "array":
            relevant.append(np.array(ids, dtype=dtype) if ids else np.array([], dtype=dtype))
        else:
            relevant.append(ids)  # duplicates allowed: they must count once
    if not any(len(r) for r in relevant):
        relevant[draw(st.integers(0, n_queries - 1))] = [draw(st.sampled_from(catalog))]
    k = draw(st.integers(1, n_cols))
    return retrieved, np.array(retrieved, dtype=dtype), relevant, k, len(catalog)


@settings(max_examples=100, deadline=None)
@given(cases())
def test_each_metric_matches_naive_twin(case):
    ranked_lists, retrieved, relevant, k, _ = case
    for name, (metric, twin) in PAIRS.items():
        expected = twin(ranked_lists, relevant, k)
        np.testing.assert_allclose(metric(retrieved, relevant, k), expected, **TOL, err_msg=name)


@settings(max_examples=100, deadline=None)
@given(cases(), st.data())
def test_ranking_metrics_matches_naive_twins(case, data):
    ranked_lists, retrieved, relevant, _, _ = case
    n_cols = retrieved.shape[1]
    ks = data.draw(st.lists(st.integers(1, n_cols), min_size=1, max_size=4))
    got = ranking_metrics(retrieved, relevant, ks)
    assert set(got) == {f"{name}@{k}" for name in PAIRS for k in ks}
    for k in ks:
        for name, (_, twin) in PAIRS.items():
            expected = twin(ranked_lists, relevant, k)
            np.testing.assert_allclose(got[f"{name}@{k}"], expected, **TOL, err_msg=f"{name}@{k}")


@settings(max_examples=100, deadline=None)
@given(cases(), st.data())
def test_per_query_metrics_match_naive_twins_query_by_query(case, data):
    ranked_lists, retrieved, relevant, _, _ = case
    ks = data.draw(st.lists(st.integers(1, retrieved.shape[1]), min_size=1, max_size=3))
    got = per_query_metrics(retrieved, relevant, ks)
    means = ranking_metrics(retrieved, relevant, ks)
    assert list(got) == list(means)
    for q, (ranked, rel) in enumerate(zip(ranked_lists, relevant, strict=True)):
        for k in ks:
            for name, (_, twin) in PAIRS.items():
                value = got[f"{name}@{k}"][q]
                if not len(rel):  # undefined: NaN, and left out of the mean
                    assert np.isnan(value)
                else:
                    np.testing.assert_allclose(value, twin([ranked], [rel], k), **TOL)
    for key, values in got.items():
        assert values.shape == (len(relevant),)
        np.testing.assert_allclose(np.nanmean(values), means[key], **TOL)


@settings(max_examples=60, deadline=None)
@given(cases(), st.integers(0, 5))
def test_coverage_matches_naive_twin(case, extra_items):
    ranked_lists, retrieved, _, k, n_catalog = case
    n_items = n_catalog + extra_items
    expected = naive_coverage(ranked_lists, k, n_items)
    np.testing.assert_allclose(coverage_at_k(retrieved, k, n_items), expected, **TOL)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_bounds_and_orderings(case):
    """0 ≤ every metric ≤ 1; capped recall ≥ recall; hit rate ≥ mrr, recall, ndcg > 0 ⇒ hit."""
    _, retrieved, relevant, k, _ = case
    got = ranking_metrics(retrieved, relevant, [k])
    for value in got.values():
        assert -1e-12 <= value <= 1 + 1e-12
    assert got[f"recall_capped@{k}"] >= got[f"recall@{k}"] - 1e-12
    assert got[f"hit_rate@{k}"] >= got[f"mrr@{k}"] - 1e-12
    assert got[f"hit_rate@{k}"] >= got[f"recall_capped@{k}"] - 1e-12


# ---------------------------------------------------------------------------------------------
# Hand-worked: two users, every number derived in the comments.
#
#   user A: retrieved [3, 1, 7, 5], relevant {1, 5, 9}  -> hits [0, 1, 0, 1], |rel| = 3
#   user B: retrieved [2, 4, 6, 8], relevant {8}        -> hits [0, 0, 0, 1], |rel| = 1

RETRIEVED = np.array([[3, 1, 7, 5], [2, 4, 6, 8]])
RELEVANT = [{1, 5, 9}, {8}]
L3, L4, L5 = math.log2(3), math.log2(4), math.log2(5)  # ≈ 1.58496, 2, 2.32193


def test_two_users_recall():
    # recall@2: A 1 hit / 3 = 1/3, B 0 / 1 = 0          -> (1/3 + 0) / 2 = 1/6
    assert recall_at_k(RETRIEVED, RELEVANT, 2) == pytest.approx(1 / 6, rel=1e-12)
    # recall@4: A 2 / 3, B 1 / 1                         -> (2/3 + 1) / 2 = 5/6
    assert recall_at_k(RETRIEVED, RELEVANT, 4) == pytest.approx(5 / 6, rel=1e-12)


def test_two_users_recall_capped():
    # recall_capped@2: A 1 / min(2, 3) = 1/2, B 0 / min(2, 1) = 0   -> 1/4
    assert recall_capped_at_k(RETRIEVED, RELEVANT, 2) == pytest.approx(1 / 4, rel=1e-12)
    # recall_capped@4: A 2 / min(4, 3) = 2/3, B 1 / min(4, 1) = 1   -> 5/6 (= recall@4)
    assert recall_capped_at_k(RETRIEVED, RELEVANT, 4) == pytest.approx(5 / 6, rel=1e-12)


def test_two_users_ndcg():
    # ndcg@2, A: DCG = 0/log2(2) + 1/log2(3) = 0.63093
    #            IDCG over min(2, 3) = 2 positions = 1/log2(2) + 1/log2(3) = 1.63093
    #            -> 0.63093 / 1.63093 = 0.38685
    #         B: DCG = 0 -> 0
    #         mean = 0.19343
    ndcg_a2 = (1 / L3) / (1 + 1 / L3)
    assert ndcg_a2 == pytest.approx(0.38685, abs=1e-5)
    assert ndcg_at_k(RETRIEVED, RELEVANT, 2) == pytest.approx(ndcg_a2 / 2, rel=1e-12)
    assert ndcg_at_k(RETRIEVED, RELEVANT, 2) == pytest.approx(0.19343, abs=1e-5)
    # ndcg@4, A: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    #            IDCG over min(4, 3) = 3 positions = 1 + 1/log2(3) + 1/log2(4) = 2.13093
    #            -> 1.06161 / 2.13093 = 0.49819
    #         B: DCG = 1/log2(5) = 0.43068, IDCG over min(4, 1) = 1 position = 1 -> 0.43068
    #         mean = (0.49819 + 0.43068) / 2 = 0.46444
    ndcg_a4 = (1 / L3 + 1 / L5) / (1 + 1 / L3 + 1 / L4)
    ndcg_b4 = (1 / L5) / 1
    assert ndcg_at_k(RETRIEVED, RELEVANT, 4) == pytest.approx((ndcg_a4 + ndcg_b4) / 2, rel=1e-12)
    assert ndcg_at_k(RETRIEVED, RELEVANT, 4) == pytest.approx(0.46444, abs=1e-5)


def test_two_users_hit_rate_and_mrr():
    # hit_rate@2: A hits at rank 2, B none in top 2       -> (1 + 0) / 2 = 0.5
    # hit_rate@4: both hit                                -> 1.0
    assert hit_rate_at_k(RETRIEVED, RELEVANT, 2) == 0.5
    assert hit_rate_at_k(RETRIEVED, RELEVANT, 4) == 1.0
    # mrr@2: A first hit rank 2 -> 1/2, B none -> 0       -> 0.25
    # mrr@4: A 1/2, B first hit rank 4 -> 1/4             -> 0.375
    assert mrr_at_k(RETRIEVED, RELEVANT, 2) == 0.25
    assert mrr_at_k(RETRIEVED, RELEVANT, 4) == 0.375


def test_two_users_coverage():
    # top-2 ids: A {3, 1}, B {2, 4} -> 4 distinct of n_items = 10 -> 0.4
    # top-4 ids: all 8 distinct                             -> 0.8
    assert coverage_at_k(RETRIEVED, 2, n_items=10) == pytest.approx(0.4, rel=1e-12)
    assert coverage_at_k(RETRIEVED, 4, n_items=10) == pytest.approx(0.8, rel=1e-12)


def test_two_users_ranking_metrics_dict():
    got = ranking_metrics(RETRIEVED, RELEVANT, [2, 4])
    assert list(got) == [
        "recall@2", "recall_capped@2", "ndcg@2", "hit_rate@2", "mrr@2",
        "recall@4", "recall_capped@4", "ndcg@4", "hit_rate@4", "mrr@4",
    ]  # fmt: skip
    for key, value in got.items():
        name, k = key.split("@")
        assert value == pytest.approx(PAIRS[name][0](RETRIEVED, RELEVANT, int(k)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Edge cases.


def test_fewer_relevant_than_k():
    # One relevant id at rank 2 of 4: recall@4 = capped = 1/1; IDCG = 1 (|rel| = 1 position),
    # DCG = 1/log2(3) -> ndcg = 1/log2(3).
    retrieved, relevant = np.array([[1, 2, 3, 4]]), [{2}]
    assert recall_capped_at_k(retrieved, relevant, 4) == recall_at_k(retrieved, relevant, 4) == 1.0
    assert ndcg_at_k(retrieved, relevant, 4) == pytest.approx(1 / L3, rel=1e-12)
    # Two relevant ids, k = 3: both found, IDCG uses 2 positions -> ndcg = 1 for ranks 1, 2.
    assert ndcg_at_k(np.array([[5, 6, 7]]), [{5, 6}], 3) == pytest.approx(1.0, rel=1e-12)


def test_perfect_ranking():
    retrieved, relevant = np.array([[1, 2, 3, 4, 5]]), [{1, 2, 3}]
    for k in (1, 2, 3, 4, 5):
        assert ndcg_at_k(retrieved, relevant, k) == pytest.approx(1.0, rel=1e-12)
        assert recall_capped_at_k(retrieved, relevant, k) == pytest.approx(1.0, rel=1e-12)
        assert mrr_at_k(retrieved, relevant, k) == 1.0
    # plain recall cannot reach 1 with more relevant ids than k: 2 of 3
    assert recall_at_k(retrieved, relevant, 2) == pytest.approx(2 / 3, rel=1e-12)


def test_empty_relevant_queries_are_left_out_of_the_mean():
    retrieved = np.array([[3, 1, 7, 5], [9, 9 + 1, 0, 2], [2, 4, 6, 8], [1, 2, 3, 4]])
    relevant = [{1, 5, 9}, set(), {8}, []]
    full = ranking_metrics(retrieved, relevant, [1, 2, 4])
    nonempty = ranking_metrics(retrieved[[0, 2]], [relevant[0], relevant[2]], [1, 2, 4])
    assert full == nonempty
    assert recall_at_k(retrieved, relevant, 4) == pytest.approx(5 / 6, rel=1e-12)


def test_all_empty_relevant_raises():
    with pytest.raises(ValueError, match="no query has a relevant id"):
        recall_at_k(np.array([[1, 2], [3, 4]]), [set(), []], 1)
    with pytest.raises(ValueError, match="no query has a relevant id"):
        ranking_metrics(np.array([[1, 2]]), [np.array([], dtype=np.int64)], [1, 2])


def test_duplicate_relevant_ids_count_once_and_unretrieved_ids_are_misses():
    retrieved = np.array([[1, 2, 3]])
    as_list = ranking_metrics(retrieved, [[2, 2, 2, 42]], [3])
    as_set = ranking_metrics(retrieved, [{2, 42}], [3])
    assert as_list == as_set
    assert as_set["recall@3"] == 0.5  # 2 found, 42 never retrieved: 1 of 2
    assert as_set["recall_capped@3"] == 0.5  # min(3, 2) = 2


def test_string_ids():
    retrieved = np.array([["shoe", "sock", "hat"], ["hat", "coat", "scarf"]])
    relevant = [{"sock", "belt"}, ["scarf"]]
    # A: hit at rank 2 of {sock, belt}; B: hit at rank 3 of {scarf}
    assert recall_at_k(retrieved, relevant, 3) == pytest.approx((1 / 2 + 1) / 2, rel=1e-12)
    assert mrr_at_k(retrieved, relevant, 3) == pytest.approx((1 / 2 + 1 / 3) / 2, rel=1e-12)
    # a relevant string longer than any retrieved one must not be truncated into a match
    assert hit_rate_at_k(np.array([["ab", "cd"]]), [{"abc"}], 2) == 0.0
    assert coverage_at_k(retrieved, 1, n_items=5) == pytest.approx(2 / 5, rel=1e-12)


def test_large_unsigned_ids_are_not_merged_by_float_promotion():
    # uint64 with int64 promotes to float64, where 2**53 + 1 rounds to 2**53: a naive encoding
    # would call rank 1 a hit as well.
    retrieved = np.array([[2**53, 2**53 + 1]], dtype=np.uint64)
    assert mrr_at_k(retrieved, [[2**53 + 1]], 2) == 0.5
    assert hit_rate_at_k(retrieved, [[2**53 + 1]], 1) == 0.0


def test_mixed_integer_dtypes_agree():
    retrieved = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.int32)
    relevant = [np.array([20, 99], dtype=np.int64), [60]]
    expected = ranking_metrics(retrieved.astype(np.int64), relevant, [1, 2, 3])
    assert ranking_metrics(retrieved, relevant, [1, 2, 3]) == expected


# ---------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2)])
def test_retrieved_not_2d(shape):
    retrieved = np.arange(int(np.prod(shape))).reshape(shape)
    with pytest.raises(ValueError, match=r"2-D \(Q, K\)"):
        recall_at_k(retrieved, [{1}], 1)
    with pytest.raises(ValueError, match=r"2-D \(Q, K\)"):
        coverage_at_k(retrieved, 1, n_items=10)


def test_relevant_length_mismatch():
    with pytest.raises(ValueError, match="relevant has 1 entries but retrieved has Q=2 rows"):
        ranking_metrics(RETRIEVED, [{1}], [1])


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "2", None])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        ndcg_at_k(RETRIEVED, RELEVANT, k)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        ranking_metrics(RETRIEVED, RELEVANT, [2, k])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        coverage_at_k(RETRIEVED, k, n_items=10)


def test_k_above_K_names_K():
    with pytest.raises(ValueError, match="k=5 exceeds K=4"):
        mrr_at_k(RETRIEVED, RELEVANT, 5)
    with pytest.raises(ValueError, match="k=5 exceeds K=4"):
        ranking_metrics(RETRIEVED, RELEVANT, [1, 5])
    with pytest.raises(ValueError, match="k=5 exceeds K=4"):
        coverage_at_k(RETRIEVED, 5, n_items=10)


def test_numpy_integer_k_is_accepted():
    assert recall_at_k(RETRIEVED, RELEVANT, np.int64(4)) == pytest.approx(5 / 6, rel=1e-12)


def test_duplicate_id_in_a_row_names_row_and_id():
    retrieved = np.array([[1, 2, 3], [4, 7, 7]])
    with pytest.raises(ValueError, match="retrieved row 1 contains id 7 more than once"):
        recall_at_k(retrieved, [{1}, {7}], 1)
    with pytest.raises(ValueError, match="retrieved row 0 contains id 'a' more than once"):
        ranking_metrics(np.array([["a", "b", "a"]]), [{"a"}], [1])
    with pytest.raises(ValueError, match="retrieved row 1 contains id 7 more than once"):
        coverage_at_k(retrieved, 1, n_items=10)


def test_empty_ks():
    with pytest.raises(ValueError, match="ks is empty"):
        ranking_metrics(RETRIEVED, RELEVANT, [])


@pytest.mark.parametrize("n_items", [0, -3, 2.5, True])
def test_bad_n_items(n_items):
    with pytest.raises(ValueError, match="n_items must be an int >= 1"):
        coverage_at_k(RETRIEVED, 2, n_items=n_items)


def test_n_items_below_distinct_retrieved():
    # top 2 hold 4 distinct ids; a catalog of 3 would give coverage 4/3
    with pytest.raises(ValueError, match="4 distinct ids but n_items=3"):
        coverage_at_k(RETRIEVED, 2, n_items=3)


# ---------------------------------------------------------------------------------------------
# Bootstrap intervals.


def naive_bootstrap(values, n_boot, level, seed):
    """Efron & Tibshirani's percentile interval with a loop: resample b draws U row numbers
    (the documented draws), averages those rows, and the interval is the quantiles of the means."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(values), size=len(values), dtype=np.int32)
        means.append(np.mean([values[r] for r in rows], axis=0))
    return np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)


@pytest.mark.parametrize("block", [1, 7, 1 << 21])  # one resample per block, some, all at once
def test_bootstrap_interval_matches_a_loop_over_resamples(block, monkeypatch):
    monkeypatch.setattr(metrics, "_BOOT_BLOCK", block)
    rng = np.random.default_rng(0)
    values = rng.random((13, 3)) ** 3  # skewed, odd U
    low, high = bootstrap_interval(values, n_boot=50, level=0.9, seed=4)
    expected = naive_bootstrap(values, 50, 0.9, 4)
    np.testing.assert_allclose(low, expected[0], rtol=1e-12)
    np.testing.assert_allclose(high, expected[1], rtol=1e-12)
    one = bootstrap_interval(values[:, 1], n_boot=50, level=0.9, seed=4)
    assert isinstance(one[0], float)
    np.testing.assert_allclose(one, (low[1], high[1]), rtol=1e-12)  # columns share resamples


def test_bootstrap_interval_of_constant_values_has_zero_width():
    low, high = bootstrap_interval(np.full(40, 0.3), n_boot=200)
    assert low == pytest.approx(0.3, abs=1e-15) and high == pytest.approx(0.3, abs=1e-15)
    low, high = bootstrap_interval(np.zeros((5, 2)), n_boot=10)
    assert (low == 0).all() and (high == 0).all()


def test_bootstrap_interval_covers_the_mean_and_shrinks_like_one_over_root_u():
    rng = np.random.default_rng(1)
    widths = {}
    for n_users in (2_000, 8_000):
        values = rng.exponential(1.0, n_users)  # true mean 1, sd 1
        low, high = bootstrap_interval(values, n_boot=1000, seed=2)
        assert low < values.mean() < high and low < 1.0 < high
        # the normal approximation's 95% width: 2 · 1.96 · sd / √U
        assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(n_users), rel=0.1)
        widths[n_users] = high - low
    assert widths[2_000] / widths[8_000] == pytest.approx(2.0, rel=0.15)  # √(8000 / 2000)


def test_paired_interval_of_a_difference_is_narrower_than_either_mean():
    rng = np.random.default_rng(3)
    user = rng.random(500)  # how easy each user is, shared by both rankers
    a, b = user + 0.05 * rng.random(500), user + 0.05 * rng.random(500) + 0.01
    (low_a, low_b, low_d), (high_a, high_b, high_d) = bootstrap_interval(
        np.column_stack([a, b, b - a]), n_boot=500)
    assert high_d - low_d < 0.2 * min(high_a - low_a, high_b - low_b)
    assert 0.0 < low_d < 0.01 < high_d  # b is better by 0.01, and the interval says so


@pytest.mark.parametrize(("values", "options", "message"), [
    (np.zeros(0), {}, r"U ≥ 1 users, got shape \(0,\)"),
    (np.zeros((2, 2, 2)), {}, r"\(U,\) or \(U, M\)"),
    (np.array([0.5, np.nan]), {}, "must be finite"),
    (np.ones(3), {"n_boot": 0}, "n_boot must be an int >= 1"),
    (np.ones(3), {"n_boot": 10.0}, "n_boot must be an int >= 1"),
    (np.ones(3), {"level": 95}, r"level must lie in \(0, 1\)"),
])
def test_bootstrap_interval_rejects_bad_input(values, options, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values, **options)
