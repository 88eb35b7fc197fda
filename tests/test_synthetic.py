"""The synthetic shop: seeded, shoppers follow the stated model, images carry the categories.

The behavioural tests compare the log with distributions computed here from the generative
model by a naive loop over the stretches between releases (the module's `true_scores` is
checked against the same loop), using chi-square goodness-of-fit tests on heavy users.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from twotower.data import PrepareConfig, prepare
from twotower.evaluate import load_queries
from twotower.files import DataError
from twotower.synthetic import ShopConfig, ShopOracle, make_shop, render_images, write_shop

SMALL = ShopConfig(num_items=300, num_users=30, num_interactions=20_000, image_size=16, seed=3)
"""Few users, many events: the heaviest users have ~2,000 events each, enough for chi-square."""


@pytest.fixture(scope="module")
def shop():
    return make_shop(SMALL)


def naive_item_probs(shop, user: int) -> np.ndarray:
    """P(item | user) averaged over integer seconds of the span, straight from the model.

    Within the stretch [a, b) between consecutive release times the released set is fixed,
    so P = Σ_stretches (b − a)/span · w·[released by a] / Σ w·[released by a], with
    w_i = θ_u[c(i)] φ_u[p(i)] pop(i).
    """
    catalog, span = shop.catalog, shop.config.time_span
    release = catalog["release_time"].to_numpy() - shop.config.start_time
    w = (shop.user_tastes_category[user][catalog["category"].to_numpy()]
         * shop.user_tastes_pattern[user][catalog["pattern"].to_numpy()]
         * catalog["popularity"].to_numpy())
    bounds = [*sorted(set(release.tolist())), span]
    probs = np.zeros(len(catalog))
    for a, b in itertools.pairwise(bounds):
        available = release <= a
        probs += (b - a) / span * np.where(available, w, 0.0) / w[available].sum()
    return probs


def chi_square_p(observed: np.ndarray, expected_probs: np.ndarray) -> float:
    """Goodness-of-fit p-value, bins with expected count < 5 pooled into one."""
    expected = expected_probs / expected_probs.sum() * observed.sum()
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(observed, expected).pvalue)


def heavy_users(shop, count: int = 3) -> list[int]:
    top = shop.interactions["user_id"].value_counts().index[:count]
    return [int(user_id[1:]) for user_id in top]


def attribute_counts(shop, user: int, column: str, size: int) -> np.ndarray:
    mine = shop.interactions[shop.interactions["user_id"] == shop.user_ids[user]]
    values = shop.catalog.set_index("item_id").loc[mine["item_id"], column].to_numpy()
    return np.bincount(values, minlength=size)


# ---------------------------------------------------------------------------------------------
# Seeds and ground truth.


def test_same_seed_same_shop_other_seed_other_shop(shop):
    again = make_shop(SMALL)
    pd.testing.assert_frame_equal(shop.catalog, again.catalog)
    pd.testing.assert_frame_equal(shop.interactions, again.interactions)
    np.testing.assert_array_equal(shop.images, again.images)
    np.testing.assert_array_equal(shop.user_tastes_category, again.user_tastes_category)
    np.testing.assert_array_equal(shop.user_tastes_pattern, again.user_tastes_pattern)

    other = make_shop(ShopConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not shop.catalog["category"].equals(other.catalog["category"])
    assert not shop.interactions.equals(other.interactions)
    assert not np.array_equal(shop.images, other.images)


def test_true_scores_are_the_model_distribution(shop):
    users = heavy_users(shop)
    scores = shop.true_scores(np.array(users))
    assert scores.shape == (len(users), SMALL.num_items)
    for row, user in zip(scores, users, strict=True):
        np.testing.assert_allclose(row, naive_item_probs(shop, user), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(shop.true_scores(user), row)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)

    at_start = shop.true_scores(users[0], time=SMALL.start_time)
    late = shop.catalog["release_time"].to_numpy() > SMALL.start_time
    assert at_start[late].sum() == 0 and at_start.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="user indices"):
        shop.true_scores(SMALL.num_users)


def test_tastes_are_peaky_distributions(shop):
    for tastes in (shop.user_tastes_category, shop.user_tastes_pattern):
        np.testing.assert_allclose(tastes.sum(axis=1), 1.0)
        assert (tastes > 0).all()
    # Dirichlet(0.3) over 8 categories: the favourite holds about half the mass on average.
    assert shop.user_tastes_category.max(axis=1).mean() > 0.4


# ---------------------------------------------------------------------------------------------
# Shoppers follow their tastes, not colours.


def test_heavy_users_categories_fit_their_tastes(shop):
    k = SMALL.num_categories
    for user in heavy_users(shop):
        observed = attribute_counts(shop, user, "category", k)
        assert observed.sum() > 1000
        expected = np.bincount(shop.catalog["category"], weights=naive_item_probs(shop, user),
                               minlength=k)
        assert chi_square_p(observed, expected) > 1e-4
        # The test has power: ignoring the user's tastes is rejected outright.
        blind = np.bincount(shop.catalog["category"], weights=shop.catalog["popularity"],
                            minlength=k)
        assert chi_square_p(observed, blind) < 1e-6


def test_heavy_users_patterns_fit_their_tastes(shop):
    p = SMALL.num_patterns
    for user in heavy_users(shop):
        observed = attribute_counts(shop, user, "pattern", p)
        expected = np.bincount(shop.catalog["pattern"], weights=naive_item_probs(shop, user),
                               minlength=p)
        assert chi_square_p(observed, expected) > 1e-4


def test_colours_follow_a_model_that_ignores_colour(shop):
    # If tastes touched colour, a user's colour counts would leave this colour-blind fit.
    m = SMALL.num_colours
    users = heavy_users(shop)
    expected = {user: np.bincount(shop.catalog["colour"], weights=naive_item_probs(shop, user),
                                  minlength=m) for user in users}
    for user, other in zip(users, users[1:] + users[:1], strict=True):
        observed = attribute_counts(shop, user, "colour", m)
        assert chi_square_p(observed, expected[user]) > 1e-4
        # The test has power: another user's colour mix (through their tastes) is rejected.
        assert chi_square_p(observed, expected[other]) < 1e-6
    table = pd.crosstab(shop.catalog["category"], shop.catalog["colour"]).to_numpy()
    assert stats.chi2_contingency(table).pvalue > 1e-3  # colour says nothing about category


def test_events_are_clicks_and_purchases_at_the_rate(shop):
    events = shop.interactions["event"]
    assert set(events) == {"click", "purchase"}
    rate, n = SMALL.purchase_rate, len(events)
    assert abs((events == "purchase").mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)


# ---------------------------------------------------------------------------------------------
# Time and popularity.


def test_items_are_released_over_time_and_never_bought_before(shop):
    log = shop.interactions.merge(shop.catalog, on="item_id", validate="many_to_one")
    assert (log["timestamp"] >= log["release_time"]).all()
    assert log["timestamp"].is_monotonic_increasing
    start, span = SMALL.start_time, SMALL.time_span
    assert log["timestamp"].between(start, start + span - 1).all()

    initial = (shop.catalog["release_time"] == start).sum()
    assert initial == round(SMALL.initial_fraction * SMALL.num_items)
    first_seen = log.groupby("item_id")["timestamp"].min()
    cut = start + 0.8 * span  # a temporal split here has cold items
    assert (first_seen > cut).sum() >= 5


def test_popularity_is_zipf_and_counts_are_heavy_tailed(shop):
    popularity = shop.catalog["popularity"].to_numpy()
    ranks = np.arange(1, SMALL.num_items + 1)
    zipf = ranks ** -SMALL.zipf_exponent
    np.testing.assert_allclose(np.sort(popularity)[::-1], zipf / zipf.sum())

    counts = (shop.interactions["item_id"].value_counts()
              .reindex(shop.catalog["item_id"], fill_value=0).to_numpy())
    assert stats.spearmanr(popularity, counts).statistic > 0.5
    top_decile = np.argsort(popularity)[::-1][: SMALL.num_items // 10]
    assert counts[top_decile].sum() > 0.4 * counts.sum()


# ---------------------------------------------------------------------------------------------
# Images.


def test_images_shape_dtype_range(shop):
    assert shop.images.shape == (SMALL.num_items, 3, 16, 16)
    assert shop.images.dtype == np.uint8
    assert shop.images.min() < 40 and shop.images.max() > 215


def test_categories_and_patterns_are_visible_in_raw_pixels():
    # A linear probe on raw pixels must beat chance: SimCLR needs something to learn. Raw
    # pixels are a weak probe of a shape at a random place and of a texture at a random phase
    # (seeds 0-4 give 37-42 % on 8 categories, 41-50 % on 4 patterns); a learned encoder
    # does far better.
    shop = make_shop(ShopConfig(num_items=1000, num_interactions=1, seed=5))
    x = shop.images.reshape(len(shop.images), -1) / 255.0
    train, test = slice(0, 600), slice(600, None)
    for column, chance, factor in (("category", 1 / 8, 2.2), ("pattern", 1 / 4, 1.5)):
        y = shop.catalog[column].to_numpy()
        assert ridge_accuracy(x[train], y[train], x[test], y[test]) > factor * chance, column


def ridge_accuracy(x_train, y_train, x_test, y_test, alpha: float = 100.0) -> float:
    """One-vs-rest ridge regression on one-hot labels (dual form: n_train < n_features)."""
    mean = x_train.mean(axis=0)
    centred = x_train - mean
    targets = np.eye(y_train.max() + 1)[y_train]
    dual = np.linalg.solve(centred @ centred.T + alpha * np.eye(len(centred)), targets)
    predicted = ((x_test - mean) @ centred.T @ dual).argmax(axis=1)
    return float((predicted == y_test).mean())


def test_colour_varies_within_a_category():
    shop = make_shop(ShopConfig(num_items=400, num_interactions=1, seed=6))
    catalog = shop.catalog
    shirts = catalog["category"] == 0
    assert catalog.loc[shirts, "colour"].nunique() == SMALL.num_colours
    red = shop.images[(shirts & (catalog["colour"] == 0)).to_numpy()].astype(float)
    blue = shop.images[(shirts & (catalog["colour"] == 5)).to_numpy()].astype(float)
    # Mean red-minus-blue channel: the objects' colour shows through the background.
    red_minus_blue = lambda images: (images[:, 0] - images[:, 2]).mean()  # noqa: E731
    assert red_minus_blue(red) > red_minus_blue(blue) + 20


# ---------------------------------------------------------------------------------------------
# Given images (e.g. Fashion-MNIST).


def given_array(num: int = 60, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8),
            rng.integers(0, classes, size=num))


@pytest.mark.parametrize("channel_axis", [False, True])
def test_given_images_keep_their_labels_as_categories(channel_axis):
    images, labels = given_array()
    config = ShopConfig(num_items=40, num_users=10, num_interactions=500, seed=1)
    shop = make_shop(config, images=images[:, None] if channel_axis else images, labels=labels)
    assert shop.images.shape == (40, 1, 28, 28)
    source = {image.tobytes(): label for image, label in zip(images, labels, strict=True)}
    assert [source[image[0].tobytes()] for image in shop.images] == shop.catalog[
        "category"].tolist()
    assert (shop.catalog["pattern"] == 0).all() and (shop.catalog["colour"] == -1).all()
    assert shop.user_tastes_category.shape == (10, labels.max() + 1)
    assert shop.user_tastes_pattern.shape == (10, 1)
    assert set(shop.interactions["item_id"]) <= set(shop.catalog["item_id"])


@pytest.mark.parametrize(("images", "labels", "message"), [
    (np.zeros((10, 8, 8), dtype=np.float32), np.zeros(10, dtype=int), "uint8"),
    (np.zeros((10, 8, 8, 3), dtype=np.uint8), np.zeros(10, dtype=int), "channels"),
    (np.zeros((10, 8, 8), dtype=np.uint8), np.zeros(9, dtype=int), "one per image"),
    (np.zeros((10, 8, 8), dtype=np.uint8), np.full(10, -1), "non-negative"),
    (np.zeros((10, 8, 8), dtype=np.uint8), np.zeros(10), "non-negative integers"),
    (np.zeros((3, 8, 8), dtype=np.uint8), np.zeros(3, dtype=int), "lower num_items"),
    (np.zeros((10, 8, 8), dtype=np.uint8), None, "pass both"),
])
def test_bad_given_images_raise_data_error(images, labels, message):
    with pytest.raises(DataError, match=message):
        make_shop(ShopConfig(num_items=5, num_users=2, num_interactions=10),
                  images=images, labels=labels)


# ---------------------------------------------------------------------------------------------
# Files.


def test_write_shop_files_meet_the_contracts_and_are_reproducible(shop, tmp_path):
    paths = write_shop(shop, tmp_path / "a")
    assert set(paths) == {"catalog", "interactions", "users", "config"}
    assert all(path.is_file() for path in paths.values())

    catalog = pd.read_parquet(paths["catalog"])
    assert list(catalog.columns[:2]) == ["item_id", "image"]
    pd.testing.assert_frame_equal(catalog.drop(columns="image"), shop.catalog)
    for png, pixels in zip(catalog["image"], shop.images, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(decoded.transpose(2, 0, 1), pixels)

    pd.testing.assert_frame_equal(pd.read_parquet(paths["interactions"]), shop.interactions)
    users = pq.read_table(paths["users"]).to_pydict()
    assert users["user_id"] == shop.user_ids.tolist()
    np.testing.assert_array_equal(np.array(users["taste_category"]), shop.user_tastes_category)
    np.testing.assert_array_equal(np.array(users["taste_pattern"]), shop.user_tastes_pattern)

    again = write_shop(make_shop(SMALL), tmp_path / "b")
    for name, path in paths.items():
        assert path.read_bytes() == again[name].read_bytes(), name
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temps


def test_write_shop_greyscale_images_round_trip(tmp_path):
    images, labels = given_array()
    shop = make_shop(ShopConfig(num_items=20, num_users=5, num_interactions=50),
                     images=images, labels=labels)
    catalog = pd.read_parquet(write_shop(shop, tmp_path)["catalog"])
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in catalog["image"]])
    np.testing.assert_array_equal(decoded, shop.images[:, 0])


# ---------------------------------------------------------------------------------------------
# Configuration.


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_items", 0, "num_items must be >= 1"),
    ("num_users", 2.5, "num_users must be an integer"),
    ("num_interactions", True, "num_interactions must be an integer"),
    ("image_size", 4, "image_size must be >= 8"),
    ("num_categories", 9, "pass images= and labels="),
    ("num_patterns", 7, "num_patterns must be between 1 and 6"),
    ("num_colours", 0, "num_colours must be between 1 and 10"),
    ("taste_concentration", 0.0, "taste_concentration must be finite and > 0"),
    ("zipf_exponent", -1.0, "zipf_exponent must be finite and >= 0"),
    ("zipf_exponent", 11, "zipf_exponent must be finite and >= 0.0 and <= 10.0"),
    ("activity_sigma", float("nan"), "activity_sigma must be finite"),
    ("time_span", 1, "time_span must be >= 2"),
    ("initial_fraction", 0.0, "initial_fraction must be finite and > 0.0 and <= 1.0"),
    ("initial_fraction", 1.5, "initial_fraction"),
    ("purchase_rate", 1.1, "purchase_rate must be finite and >= 0.0 and <= 1.0"),
    ("seed", -1, "seed must be >= 0"),
])
def test_bad_config_says_what_to_change(field, value, message):
    with pytest.raises(ValueError, match=message):
        ShopConfig(**{field: value})


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    config = ShopConfig(num_items=np.int64(10), taste_concentration=np.float32(0.5))
    assert type(config.num_items) is int and type(config.taste_concentration) is float


def test_render_images_rejects_out_of_range_indices():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"category indices must lie in \[0, 8\)"):
        render_images(np.array([8]), np.array([0]), np.array([0]), rng=rng)
    with pytest.raises(ValueError, match="colour must be"):
        render_images(np.array([0]), np.array([0]), np.array([0, 1]), rng=rng)


@pytest.fixture(scope="module")
def oracle_queries(tmp_path_factory):
    """A small shop and the test queries of its temporal split, through the real pipeline."""
    small = make_shop(ShopConfig(num_items=200, num_users=120, num_interactions=6_000,
                                 image_size=8, seed=5))
    folder = tmp_path_factory.mktemp("oracle")
    small.interactions.to_parquet(folder / "log.parquet")
    prepared = prepare(folder / "log.parquet", folder / "prepared",
                       PrepareConfig(protocol="temporal", min_user_interactions=3,
                                     min_item_interactions=1))
    return small, load_queries(prepared, "test")


def naive_oracle_scores(shop, queries, times, divide_by_q: bool) -> np.ndarray:
    """(U, I) the oracle's scores one user and one time at a time, seen items at -inf."""
    columns = [int(i[1:]) for i in queries.item_ids]  # "p00042" is catalog row 42
    scores = np.empty((len(queries), len(columns)))
    for row, user_id in enumerate(queries.user_id):
        p = np.mean([shop.true_scores(int(user_id[1:]), time=int(t)) for t in times], axis=0)
        scores[row] = p[columns] / (queries.item_counts + 1 if divide_by_q else 1)
        scores[row, queries.seen[row]] = -np.inf
    return scores


@pytest.mark.parametrize("divide_by_q", [False, True])
def test_shop_oracle_returns_the_top_true_scores_and_never_a_seen_item(oracle_queries,
                                                                        divide_by_q):
    shop, queries = oracle_queries
    times = shop.config.start_time + np.array([60, 80, 89]) * 86_400
    k = 10
    ranked = ShopOracle(shop, times, divide_by_q=divide_by_q).rank(queries, k)
    expected = naive_oracle_scores(shop, queries, times, divide_by_q)
    row_of = {item: i for i, item in enumerate(queries.item_ids)}
    for row in range(len(queries)):
        got = expected[row, [row_of[item] for item in ranked[row]]]
        np.testing.assert_allclose(got, np.sort(expected[row])[::-1][:k], rtol=1e-12)
        assert np.isfinite(got).all()  # so none of them is a seen item


def test_the_uncorrected_optimum_ranks_less_popular_items(oracle_queries):
    """P/q is what the softmax without logQ learns: it pushes the popular items down."""
    shop, queries = oracle_queries
    times = shop.config.start_time + np.array([70, 85]) * 86_400
    count_of = dict(zip(queries.item_ids, queries.item_counts, strict=True))
    mean_count = {}
    for divide_by_q in (False, True):
        ranked = ShopOracle(shop, times, divide_by_q=divide_by_q).rank(queries, 20)
        mean_count[divide_by_q] = np.mean([count_of[item] for item in ranked.ravel()])
    assert mean_count[True] < 0.5 * mean_count[False]


def test_shop_oracle_rejects_other_shops_users_and_empty_times(oracle_queries):
    shop, queries = oracle_queries
    with pytest.raises(ValueError, match="at least one"):
        ShopOracle(shop, [])
    other = make_shop(ShopConfig(num_items=200, num_users=10, num_interactions=500, seed=1))
    with pytest.raises(ValueError, match="does not have"):
        ShopOracle(other, [shop.config.start_time]).rank(queries, 5)
