"""evaluate(): what is masked and counted, the baselines against naive twins, slices, ANN recall,
and popularity / EASE / iALS on MovieLens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.data import PrepareConfig, prepare
from twotower.evaluate import (
    EASEScorer,
    EvalQueries,
    IALSConfig,
    IALSScorer,
    PopularityScorer,
    VectorScorer,
    evaluate,
    image_knn,
    item_slices,
    load_queries,
)
from twotower.files import DataError
from twotower.index import ItemIndex
from twotower.metrics import bootstrap_interval, per_query_metrics, ranking_metrics
from twotower.vectors import Vectors, read_vectors, write_vectors

RATINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / \
    "ratings.csv"


def _log(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Three users, five items; the test cut falls after t=8 (temporal, 2/10 of the rows)."""
    root = tmp_path_factory.mktemp("tiny")
    log = _log([
        ("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 4), ("u3", "b", 5),
        ("u3", "d", 6), ("u1", "c", 7), ("u2", "d", 8),
        # test period: u1 gets e (new) and a (seen in training: dropped); u3 gets a.
        ("u1", "e", 9), ("u1", "a", 10), ("u3", "a", 11),
    ])
    log.to_parquet(root / "log.parquet")
    cfg = PrepareConfig(min_user_interactions=1, min_item_interactions=1, valid_fraction=0.05,
                        test_fraction=0.25)
    return prepare(root / "log.parquet", root / "prepared", cfg)


def test_queries_mask_training_items_and_drop_targets_already_seen(tiny):
    queries = load_queries(tiny, "test")
    ids = queries.item_ids
    assert queries.user_id.tolist() == ["u1", "u3"]
    as_ids = lambda arrays: [sorted(ids[a].tolist()) for a in arrays]  # noqa: E731
    assert as_ids(queries.relevant) == [["e"], ["a"]]  # u1's repeat of "a" is not a target
    assert as_ids(queries.seen) == [["a", "b", "c"], ["b", "d"]]
    # The history is what came before the user's first target, in time order.
    assert [ids[h].tolist() for h in queries.history] == [["a", "b", "c"], ["b", "d"]]
    assert queries.item_counts[ids.tolist().index("e")] == 0  # e is new: cold


def test_item_slices_split_warm_items_into_head_and_tail():
    counts = np.array([0, 10, 1, 5, 0, 3, 2])
    queries = EvalQueries(user_index=np.zeros(0, int), user_id=np.zeros(0, str), history=[],
                          seen=[], relevant=[], item_ids=np.array(list("abcdefg")),
                          item_counts=counts)
    slices = item_slices(queries, head_fraction=0.4)
    # warm items 1, 2, 3, 5, 6 by count: 1 (10), 3 (5), 5 (3), 6 (2), 2 (1); head = ceil(0.4·5)
    assert slices["head"].tolist() == [1, 3]
    assert slices["tail"].tolist() == [2, 5, 6]
    assert slices["cold"].tolist() == [0, 4]
    assert slices["warm"].tolist() == [1, 2, 3, 5, 6]


def _random_queries(rng, n_users=40, n_items=60) -> EvalQueries:
    counts = rng.integers(0, 30, n_items) * (rng.random(n_items) > 0.15)
    seen = [np.sort(rng.choice(n_items, rng.integers(0, 20), replace=False))
            for _ in range(n_users)]
    relevant = [np.setdiff1d(rng.choice(n_items, rng.integers(1, 8)), s) for s in seen]
    keep = [i for i, r in enumerate(relevant) if r.size]
    return EvalQueries(
        user_index=np.array(keep), user_id=np.array([f"u{i}" for i in keep]),
        history=[seen[i][::-1] for i in keep], seen=[seen[i] for i in keep],
        relevant=[relevant[i] for i in keep],
        item_ids=np.array([f"i{j:03d}" for j in range(n_items)]), item_counts=counts,
    )


def test_popularity_ranks_unseen_items_by_training_count():
    queries = _random_queries(np.random.default_rng(0))
    ranked = PopularityScorer.from_queries(queries).rank(queries, 10)
    for u, row in enumerate(ranked):
        allowed = np.setdiff1d(np.arange(len(queries.item_ids)), queries.seen[u])
        counts = np.sort(queries.item_counts[allowed])[::-1][:10]
        got = queries.item_counts[[int(i[1:]) for i in row]]
        np.testing.assert_array_equal(got, counts)
        assert not set(row) & set(queries.item_ids[queries.seen[u]])


def _ease_naive(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck 2019 from its definition: column j is a ridge regression of x_j on the other
    columns (the constraint B_jj = 0 removes x_j from its own inputs)."""
    n = x.shape[1]
    weights = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        a = x[:, others]
        weights[others, j] = np.linalg.solve(a.T @ a + l2 * np.eye(n - 1), a.T @ x[:, j])
    return weights


def test_ease_closed_form_equals_per_column_ridge_regressions():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 30, 200), rng.integers(0, 12, 200)
    fitted = EASEScorer.fit(users, items, np.array([f"i{j}" for j in range(12)]), l2=3.0)
    x = np.zeros((30, 12))
    x[users, items] = 1.0  # binary, repeats once
    np.testing.assert_allclose(fitted.weights, _ease_naive(x, 3.0), atol=1e-5)
    assert np.all(np.diag(fitted.weights) == 0)


def test_ease_ranks_by_history_times_b_without_seen_items():
    rng = np.random.default_rng(2)
    queries = _random_queries(rng)
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    scorer = EASEScorer.fit(users, items, queries.item_ids, l2=10.0)
    ranked = scorer.rank(queries, 5)
    for u, row in enumerate(ranked):
        scores = scorer.weights[queries.seen[u]].sum(axis=0)
        scores[queries.seen[u]] = -np.inf
        best = sorted(range(60), key=lambda i: (-scores[i], -scorer.popularity[i], i))[:5]
        np.testing.assert_array_equal(row, queries.item_ids[best])
    assert np.array_equal(scorer.popularity, np.bincount(
        np.unique(users * 60 + items) % 60, minlength=60))  # users per item


def test_ease_gives_a_user_without_history_the_most_popular_items():
    rng = np.random.default_rng(7)
    queries = _random_queries(rng)
    queries = EvalQueries(**{**queries.__dict__, "seen": [np.zeros(0, np.int64)] * len(queries)})
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    scorer = EASEScorer.fit(users, items, queries.item_ids, l2=10.0)
    top = queries.item_ids[np.argsort(-scorer.popularity, kind="stable")[:10]]
    assert (scorer.rank(queries, 10) == top).all()


def test_ease_refuses_a_catalog_too_large_for_memory():
    with pytest.raises(MemoryError, match=r"EASE on 100,000 items needs about 223\.5 GiB"):
        EASEScorer.fit(np.array([0]), np.array([0]), np.arange(100_000).astype(str),
                       max_memory_gib=16)


def _ials_naive_user(item_factors: np.ndarray, seen: np.ndarray, lam: float,
                     alpha: float) -> np.ndarray:
    """Hu et al. 2008, eq. 4 written out: u = (Vᵀ C_u V + λI)⁻¹ Vᵀ C_u p_u, with c_ui = 1 + α
    for a seen item and 1 otherwise, p_ui = 1 for a seen item and 0 otherwise."""
    v = item_factors.astype(np.float64)  # (I, f)
    n_items, factors = v.shape
    c = np.ones(n_items)
    p = np.zeros(n_items)
    for i in seen:
        c[i] = 1.0 + alpha
        p[i] = 1.0
    a = np.zeros((factors, factors))
    b = np.zeros(factors)
    for i in range(n_items):
        a += c[i] * np.outer(v[i], v[i])
        b += c[i] * p[i] * v[i]
    return np.linalg.solve(a + lam * np.eye(factors), b)


def test_ials_recommends_the_rest_of_the_block_a_user_has_seen():
    # Block A: 6 users who each saw all of items 0..4; block B: 20 users who each saw items
    # 5..9, so B's items are the more popular. A query user who saw items 0 and 1 must get A's
    # other three items first, one who saw 5 and 6 B's other three.
    users = np.concatenate([np.repeat(np.arange(6), 5), np.repeat(np.arange(6, 26), 5)])
    items = np.concatenate([np.tile(np.arange(5), 6), np.tile(np.arange(5, 10), 20)])
    ids = np.array([f"i{j}" for j in range(10)])
    scorer = IALSScorer.fit(users, items, ids, config=IALSConfig(factors=4, regularization=0.1,
                                                                  alpha=10.0))
    queries = EvalQueries(user_index=np.array([0, 1]), user_id=np.array(["a", "b"]),
                          history=[np.array([0, 1]), np.array([5, 6])],
                          seen=[np.array([0, 1]), np.array([5, 6])],
                          relevant=[np.array([2]), np.array([7])], item_ids=ids,
                          item_counts=np.bincount(items, minlength=10))
    ranked = scorer.rank(queries, 5)
    assert set(ranked[0, :3]) == {"i2", "i3", "i4"}
    assert set(ranked[1, :3]) == {"i7", "i8", "i9"}
    assert np.array_equal(scorer.popularity, [6] * 5 + [20] * 5)


def test_ials_user_vectors_are_the_closed_form_solve_from_the_seen_items():
    rng = np.random.default_rng(8)
    queries = _random_queries(rng)
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    config = IALSConfig(factors=6, regularization=2.0, alpha=5.0, iterations=5)
    scorer = IALSScorer.fit(users, items, queries.item_ids, config=config)
    got = scorer.user_vectors(queries)
    assert got.shape == (len(queries), 6)
    v = scorer.model.item_factors
    for u, seen in enumerate(queries.seen):
        expected = _ials_naive_user(v, seen, 2.0, 5.0)
        np.testing.assert_allclose(got[u], expected, rtol=1e-4, atol=1e-4)
    assert any(s.size == 0 for s in queries.seen)  # a user without history gets u = 0


def test_ials_ranks_by_score_then_popularity_and_never_returns_a_seen_item():
    rng = np.random.default_rng(9)
    queries = _random_queries(rng)
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    scorer = IALSScorer.fit(users, items, queries.item_ids, config=IALSConfig(factors=8))
    ranked = scorer.rank(queries, 10)
    scores = scorer.user_vectors(queries) @ scorer.model.item_factors.T
    for u, row in enumerate(ranked):
        assert not set(row) & set(queries.item_ids[queries.seen[u]])
        allowed = np.setdiff1d(np.arange(60), queries.seen[u])
        best = sorted(allowed, key=lambda i: (-scores[u, i], -scorer.popularity[i], i))[:10]
        np.testing.assert_array_equal(row, queries.item_ids[best])
    with pytest.raises(ValueError, match="leaving fewer than k=60 to rank"):
        scorer.rank(queries, 60)


def test_ials_is_deterministic_for_a_seed():
    rng = np.random.default_rng(10)
    queries = _random_queries(rng)
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    fit = lambda seed: IALSScorer.fit(users, items, queries.item_ids,  # noqa: E731
                                      config=IALSConfig(factors=8, seed=seed, num_threads=2))
    first, again, other = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(first.model.item_factors, again.model.item_factors)
    np.testing.assert_array_equal(first.rank(queries, 10), again.rank(queries, 10))
    assert not np.allclose(first.model.item_factors, other.model.item_factors)


@pytest.mark.parametrize(("options", "message"), [
    ({"factors": 0}, "factors must be >= 1"),
    ({"regularization": 0.0}, "regularization λ must be > 0"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"iterations": 0}, "iterations must be >= 1"),
    ({"num_threads": -1}, "num_threads must be >= 0"),
])
def test_ials_config_refuses_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        IALSConfig(**options)


def test_evaluate_equals_metrics_on_each_slice_computed_by_hand():
    rng = np.random.default_rng(3)
    queries = _random_queries(rng)
    scorer = PopularityScorer.from_queries(queries)
    table = evaluate(queries, {"pop": scorer}, ks=(5, 10), head_fraction=0.3)
    ranked = scorer.rank(queries, 10)
    for name, items in item_slices(queries, 0.3).items():
        relevant = [queries.item_ids[np.intersect1d(r, items)] for r in queries.relevant]
        if not any(r.size for r in relevant):
            assert name not in set(table["slice"])
            continue
        expected = ranking_metrics(ranked, relevant, [5, 10])
        got = table[table["slice"] == name].set_index(["metric", "k"])["value"]
        for key, value in expected.items():
            metric, k = key.split("@")
            assert got[(metric, int(k))] == pytest.approx(value)
    coverage = table[table["metric"] == "coverage"].set_index("k")["value"]
    assert coverage[10] == pytest.approx(len(np.unique(ranked)) / 60)


def test_intervals_are_the_bootstrap_of_each_slices_users_and_differences_are_paired():
    rng = np.random.default_rng(11)
    queries = _random_queries(rng, n_users=80)
    users, items = rng.integers(0, 50, 600), rng.integers(0, 60, 600)
    scorers = {"pop": PopularityScorer.from_queries(queries),
               "ease": EASEScorer.fit(users, items, queries.item_ids, l2=10.0)}
    table = evaluate(queries, scorers, ks=(5, 10), n_boot=200, seed=3, reference="ease")
    assert list(table.columns) == ["scorer", "slice", "metric", "k", "value", "low", "high",
                                   "users", "diff", "diff_low", "diff_high"]
    per_user = {}
    for name, scorer in scorers.items():
        ranked = scorer.rank(queries, 10)
        for slice_name, items in item_slices(queries).items():
            relevant = [queries.item_ids[np.intersect1d(r, items)] for r in queries.relevant]
            rows = [u for u, r in enumerate(relevant) if r.size]
            if rows:
                values = per_query_metrics(ranked, relevant, [5, 10])
                per_user[name, slice_name] = {key: v[rows] for key, v in values.items()}
    for row in table[table["metric"] != "coverage"].itertuples():
        mine = per_user[row.scorer, row.slice][f"{row.metric}@{row.k}"]
        theirs = per_user["ease", row.slice][f"{row.metric}@{row.k}"]
        assert (row.low, row.high) == pytest.approx(bootstrap_interval(mine, n_boot=200, seed=3))
        assert row.diff == pytest.approx(mine.mean() - theirs.mean())
        assert (row.diff_low, row.diff_high) == pytest.approx(
            bootstrap_interval(mine - theirs, n_boot=200, seed=3))
        assert row.users == mine.size
    ease = table[table["scorer"] == "ease"]
    assert (ease["diff"] == 0).all() and (ease[["diff_low", "diff_high"]].dropna() == 0).all().all()
    coverage = table[table["metric"] == "coverage"]
    assert coverage[["low", "high", "diff_low", "diff_high"]].isna().all().all()
    pop = coverage.set_index(["scorer", "k"])["value"]
    assert coverage.set_index(["scorer", "k"])["diff"]["pop", 10] == pytest.approx(
        pop["pop", 10] - pop["ease", 10])
    # Every scorer gets the same resamples: alone, a scorer's intervals are what they were.
    alone = evaluate(queries, {"pop": scorers["pop"]}, ks=(5, 10), n_boot=200, seed=3)
    assert list(alone.columns) == ["scorer", "slice", "metric", "k", "value", "low", "high",
                                   "users"]
    pd.testing.assert_frame_equal(alone, table[alone.columns][table["scorer"] == "pop"]
                                  .reset_index(drop=True))


def test_evaluate_without_bootstrap_and_its_errors():
    queries = _random_queries(np.random.default_rng(12))
    scorer = PopularityScorer.from_queries(queries)
    table = evaluate(queries, {"pop": scorer, "same": scorer}, ks=(5,), n_boot=0,
                     reference="pop")
    assert table[["low", "high", "diff_low", "diff_high"]].isna().all().all()
    assert (table["diff"] == 0).all()  # "same" ranks exactly as the reference
    with pytest.raises(ValueError, match=r"reference 'ease' is not one of the scorers \['pop'\]"):
        evaluate(queries, {"pop": scorer}, ks=(5,), reference="ease")
    with pytest.raises(ValueError, match="n_boot must be an int >= 0"):
        evaluate(queries, {"pop": scorer}, ks=(5,), n_boot=-1)


def test_an_oracle_scorer_scores_one_and_ann_recall_of_flat_is_one():
    rng = np.random.default_rng(4)
    queries = _random_queries(rng, n_items=80)
    dim = 80  # one-hot item vectors: a user vector that is the sum of its targets finds them
    items = np.eye(dim, dtype=np.float32)

    def oracle(q: EvalQueries) -> np.ndarray:
        out = np.full((len(q), dim), 1e-3, np.float32)
        for u, r in enumerate(q.relevant):
            out[u, r] = 1.0
        return out

    index = ItemIndex.build(items, queries.item_ids, "flat")
    scorer = VectorScorer(index=index, user_vectors=oracle, exact=index)
    table = evaluate(queries, {"oracle": scorer}, ks=(10,))
    capped = table.query("metric == 'recall_capped' and slice == 'all'")
    assert capped["value"].item() == pytest.approx(1.0)
    assert (capped["low"].item(), capped["high"].item()) == pytest.approx((1.0, 1.0))
    ann = table.query("metric == 'ann_recall'")
    assert (ann["value"].item(), ann["low"].item(), ann["high"].item()) == pytest.approx(
        (1.0, 1.0, 1.0))


def test_image_knn_user_is_the_mean_of_history_embeddings():
    rng = np.random.default_rng(5)
    queries = _random_queries(rng)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    embeddings = Vectors(ids=queries.item_ids[::-1].copy(), vectors=vectors[::-1].copy())
    scorer = image_knn(embeddings, device="cpu")
    users = scorer.user_vectors(queries)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for u, history in enumerate(queries.history):
        expected = unit[history].mean(axis=0) if history.size else unit.mean(axis=0)
        np.testing.assert_allclose(users[u], expected, atol=1e-6)
    ranked = scorer.rank(queries, 5)
    for u, row in enumerate(ranked):
        assert not set(row) & set(queries.item_ids[queries.seen[u]])


def test_ann_recall_against_exact_search_is_reported_for_an_approximate_index():
    rng = np.random.default_rng(6)
    queries = _random_queries(rng, n_users=200, n_items=2000)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    users = rng.standard_normal((len(queries), 16)).astype(np.float32)
    approx = ItemIndex.build(vectors, queries.item_ids, "ivf", nlist=40, nprobe=2)
    exact = ItemIndex.build(vectors, queries.item_ids, "flat")
    scorer = VectorScorer(index=approx, user_vectors=lambda q: users[
        np.searchsorted(queries.user_index, q.user_index)], exact=exact)
    table = evaluate(queries, {"ivf": scorer}, ks=(10, 20))
    ann = table.query("metric == 'ann_recall'").set_index("k")["value"]
    found = scorer.rank(queries, 20)
    truth = scorer.rank_exact(queries, 20)
    overlap = np.array([len(set(a) & set(b)) / 20 for a, b in zip(found, truth, strict=True)])
    assert ann[20] == pytest.approx(overlap.mean())
    interval = table.query("metric == 'ann_recall' and k == 20")[["low", "high"]]
    assert tuple(interval.iloc[0]) == pytest.approx(bootstrap_interval(overlap))
    assert 0.0 < ann[20] < 1.0  # nprobe=2 of 40 lists misses some, but not all


def test_a_saved_model_is_searched_with_its_user_vectors_and_exact_beside_an_ann_index(
        tmp_path):
    rng = np.random.default_rng(7)
    queries = _random_queries(rng, n_users=50, n_items=400)
    items = write_vectors(queries.item_ids, rng.standard_normal((400, 8)),
                          tmp_path / "items.parquet", {})
    users = rng.standard_normal((len(queries), 8)).astype(np.float32)
    write_vectors(queries.user_id[::-1], users[::-1], tmp_path / "users.parquet", {},
                  id_column="user_id")  # another row order than the queries'
    vectors = read_vectors(items)
    for kind in ("flat", "ivf"):
        ItemIndex.build(vectors.vectors, vectors.ids, kind, device="cpu", source=str(items),
                        **({"nlist": 8, "nprobe": 1} if kind == "ivf" else {})
                        ).save(tmp_path / kind)
    flat = VectorScorer.from_saved(tmp_path / "flat", tmp_path / "users.parquet")
    np.testing.assert_array_equal(flat.user_vectors(queries), users)
    assert flat.exact is None
    ivf = VectorScorer.from_saved(tmp_path / "ivf", tmp_path / "users.parquet")
    assert ivf.index.kind == "ivf" and ivf.exact is not None
    np.testing.assert_array_equal(ivf.rank_exact(queries, 10), flat.rank(queries, 10))


def test_a_saved_model_names_a_missing_user_and_a_dimension_it_cannot_search(tmp_path):
    rng = np.random.default_rng(8)
    queries = _random_queries(rng, n_items=60)
    ItemIndex.build(rng.standard_normal((60, 8)), queries.item_ids, device="cpu").save(
        tmp_path / "index")
    write_vectors(queries.user_id[1:], rng.standard_normal((len(queries) - 1, 8)),
                  tmp_path / "few.parquet", {}, id_column="user_id")
    scorer = VectorScorer.from_saved(tmp_path / "index", tmp_path / "few.parquet")
    absent = queries.user_id[0]
    with pytest.raises(DataError, match=rf"few\.parquet, column 'user_id': no vector for 1 "
                                        rf"user\(s\) of the split \(e\.g\. '{absent}'\)"):
        scorer.rank(queries, 5)
    write_vectors(queries.user_id, rng.standard_normal((len(queries), 4)),
                  tmp_path / "narrow.parquet", {}, id_column="user_id")
    with pytest.raises(DataError, match=r"user vectors have dimension 4 but the index .* has 8"):
        VectorScorer.from_saved(tmp_path / "index", tmp_path / "narrow.parquet")


@pytest.mark.slow
@pytest.mark.skipif(not RATINGS.is_file(), reason=f"MovieLens ratings {RATINGS} is absent")
def test_movielens_temporal_ease_beats_popularity(tmp_path):
    cfg = PrepareConfig(columns={"userId": "user_id", "movieId": "item_id"})
    folder = prepare(RATINGS, tmp_path / "ml", cfg)
    queries = load_queries(folder, "test")
    scorers = {"popularity": PopularityScorer.from_queries(queries),
               "ease": EASEScorer.from_prepared(folder, l2=500.0),
               "ials": IALSScorer.from_prepared(folder)}
    table = evaluate(queries, scorers, ks=(20,))
    recall = table.query("slice == 'all' and metric == 'recall'").set_index("scorer")["value"]
    assert len(queries) > 50
    assert recall["ease"] > recall["popularity"] > 0.0
    assert recall["ials"] > recall["popularity"]
