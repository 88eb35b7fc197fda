"""The cold-start optimum of benchmarks/bench_cold_start.py against naive twins: each
product's expected training sales per unit popularity, and the posterior of a product that
sold nothing."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.synthetic import ShopConfig, make_shop

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cold_start.py"
_SPEC = importlib.util.spec_from_file_location("bench_cold_start", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up there
_SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def shop():
    return make_shop(ShopConfig(num_items=40, num_users=12, num_interactions=300,
                                num_categories=3, num_patterns=2, image_size=8,
                                initial_fraction=0.5, seed=3))


def _train(shop, share=0.6):
    log = shop.interactions
    log = log[log["timestamp"] <= log["timestamp"].quantile(share)]
    return pd.DataFrame({"user_id": log["user_id"],
                         "timestamp": pd.to_datetime(log["timestamp"], unit="s")})


def test_sales_exposure_matches_a_loop_over_events_and_products(shop):
    train = _train(shop)
    got = bench.sales_exposure(shop, train)
    catalog = shop.catalog
    users = pd.Index(shop.user_ids).get_indexer(train["user_id"])
    times = train["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64)
    theta, phi = shop.user_tastes_category, shop.user_tastes_pattern
    c, p = catalog["category"].to_numpy(), catalog["pattern"].to_numpy()
    r, pop = catalog["release_time"].to_numpy(), catalog["popularity"].to_numpy()
    want = np.zeros((len(catalog), theta.shape[1]))
    for u, t in zip(users, times, strict=True):
        z = sum(theta[u, c[j]] * phi[u, p[j]] * pop[j] for j in range(len(catalog)) if r[j] <= t)
        for i in range(len(catalog)):
            if r[i] <= t:
                for k in range(theta.shape[1]):
                    want[i, k] += theta[u, k] * phi[u, p[i]] / z
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    listed_after = r > times.max()
    assert listed_after.any() and (got[listed_after] == 0).all()


def test_posterior_weights_match_enumerating_category_and_popularity():
    rng = np.random.default_rng(0)
    exposure = rng.gamma(2.0, 300.0, size=(5, 3))
    exposure[0] = 0.0  # listed after the split: the prior
    known = rng.dirichlet(np.ones(3), size=5)
    popularity = rng.dirichlet(np.ones(50))
    got = bench.posterior_weights(exposure, known, popularity)
    for i in range(5):
        joint = np.array([[known[i, k] * np.exp(-exposure[i, k] * v) for v in popularity]
                          for k in range(3)])
        joint /= joint.sum()
        np.testing.assert_allclose(got[i], joint @ popularity, rtol=1e-12)
    np.testing.assert_allclose(got[0], known[0] * popularity.mean(), rtol=1e-12)
    assert got[1:].sum(axis=1).max() < popularity.mean()  # no sale: less popular than a new one
