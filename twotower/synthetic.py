"""The synthetic shop: product images joined to simulated shoppers, with known ground truth.

No public dataset has both product images and the interaction log of people who shop them,
so the demo and the tests generate one. The generative model, all of it seeded:

- **Items** i = 0..N−1 have a category c(i), a pattern p(i) and a colour k(i), drawn
  independently and uniformly. Their images are procedural (a category silhouette filled with
  a pattern in the item's colour, at a random position, scale and tilt, on a textured noisy
  background) or come from a given labelled array (e.g. Fashion-MNIST), whose classes are then
  the categories.
- **Popularity** is Zipf's law over a random ranking of the items (Zipf 1949; Breslau et al.
  1999, "Web caching and Zipf-like distributions": P(i) = Ω / i^α): pop(i) ∝ rank(i)^−s.
- **Releases**: a share of the items is on sale from the start; the rest are released at
  uniform random times over the span, so a temporal split has cold items.
- **Shoppers** u have Dirichlet tastes θ_u over categories and φ_u over patterns (small
  concentration, so tastes are peaky: a user cares about one or two of each), as the topic
  mixtures of LDA (Blei, Ng and Jordan 2003); colour is a nuisance nobody prefers. Activity is
  lognormal.
- **Each interaction** picks a user u ∝ activity(u), a time t uniform over the span, and an
  item among those released by t:
      P(i | u, t) = θ_u[c(i)] · φ_u[p(i)] · pop(i) · [release(i) ≤ t] / Z_u(t).
  Events are independent draws, so a user may return to an item (re-views and re-purchases,
  as in real logs); keeping them is what makes `Shop.true_scores` the exact distribution of
  the log. Anything that needs unique (user, item) pairs deduplicates downstream.

Ids are strings: items ``"p00042"`` (row 42 of `Shop.catalog` and of `Shop.images`), users
``"u00007"`` (row 7 of the taste arrays); the digits widen for more than 100,000 of either.
Timestamps and release times are int64 seconds since the Unix epoch.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from twotower.files import DataError, atomic_path

__all__ = [
    "CATEGORY_NAMES",
    "COLOUR_NAMES",
    "PATTERN_NAMES",
    "Shop",
    "ShopConfig",
    "ShopOracle",
    "make_shop",
    "render_images",
    "write_shop",
]

# ---------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class ShopConfig:
    """Sizes and knobs of the synthetic shop; the defaults are the demo's shop."""

    num_items: int = 2000
    """Products in the catalog (with given images: how many of them to draw, at random)."""
    num_users: int = 1000
    """Simulated shoppers; some may end up with no interaction."""
    num_interactions: int = 50_000
    """Events in the log, repeats of a (user, item) pair included."""
    image_size: int = 32
    """Side S of the procedural (3, S, S) images; ignored when images are given."""
    num_categories: int = 8
    """Procedural silhouettes used (≤ 8); with given images the labels decide."""
    num_patterns: int = 4
    """Procedural fill patterns used (≤ 6); with given images there is one pattern, 0."""
    num_colours: int = 8
    """Palette colours used (≤ 10); the nuisance attribute that tastes ignore."""
    taste_concentration: float = 0.3
    """Dirichlet concentration of user tastes; below 1 each user prefers few categories."""
    zipf_exponent: float = 1.1
    """s in pop ~ rank^-s; 0 makes every item equally popular."""
    activity_sigma: float = 1.0
    """sigma of the lognormal user activity; 0 makes every user equally active."""
    start_time: int = 1_700_000_000
    """First second of the log (Unix epoch seconds)."""
    time_span: int = 90 * 86_400
    """Length of the log in seconds; event times are uniform over it."""
    initial_fraction: float = 0.7
    """Share of items on sale at `start_time`; the rest are released uniformly over the span."""
    purchase_rate: float = 0.1
    """Probability that an event is a "purchase" rather than a "click"."""
    seed: int = 0
    """Seed of everything: the same seed gives the same shop, byte for byte."""

    def __post_init__(self) -> None:
        for name in ("num_items", "num_users", "num_interactions"):
            self._int(name, low=1)
        self._int("time_span", low=2)
        self._int("image_size", low=8)
        self._int("num_categories", low=1, high=len(CATEGORY_NAMES),
                  hint="pass images= and labels= to make_shop for more classes")
        self._int("num_patterns", low=1, high=len(PATTERN_NAMES))
        self._int("num_colours", low=1, high=len(COLOUR_NAMES))
        self._int("start_time", low=0)
        self._int("seed", low=0)
        self._real("taste_concentration", low=0.0, low_open=True)
        # Beyond s = 10 the tail's pop(i) underflows towards 0 and items become unreachable.
        self._real("zipf_exponent", low=0.0, high=10.0)
        self._real("activity_sigma", low=0.0)
        self._real("initial_fraction", low=0.0, low_open=True, high=1.0)
        self._real("purchase_rate", low=0.0, high=1.0)

    def _int(self, name: str, *, low: int, high: int | None = None, hint: str = "") -> None:
        """Check an integer field and store it as a Python int (numpy ints are accepted)."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"{name} must be {allowed}, got {value}"
                             + (f"; {hint}" if hint else ""))
        object.__setattr__(self, name, int(value))

    def _real(self, name: str, *, low: float, low_open: bool = False,
              high: float | None = None) -> None:
        """Check a real field against its bounds and store it as a Python float."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ValueError(f"{name} must be a number, got {value!r}")
        bad_low = value <= low if low_open else value < low
        if not math.isfinite(value) or bad_low or (high is not None and value > high):
            bounds = f"{'>' if low_open else '>='} {low}" + ("" if high is None
                                                            else f" and <= {high}")
            raise ValueError(f"{name} must be finite and {bounds}, got {value}")
        object.__setattr__(self, name, float(value))


# ---------------------------------------------------------------------------------------------
# The shop and its ground truth.


@dataclass(frozen=True, eq=False)
class Shop:
    """A generated shop: what a real one would log, plus the truth a real one would hide."""

    config: ShopConfig
    """The configuration it was made from."""
    catalog: pd.DataFrame
    """One row per item, row i = item index i: item_id (str), category, pattern, colour
    (int; colour -1 and pattern 0 with given images), release_time (int64 s), popularity
    (float, sums to 1)."""
    images: np.ndarray
    """(N, C, S, S) uint8, row i = item i; C = 3 for procedural images."""
    interactions: pd.DataFrame
    """user_id (str), item_id (str), timestamp (int64 s), event ("click" or "purchase"),
    sorted by timestamp."""
    user_tastes_category: np.ndarray
    """(U, K) float64, rows sum to 1: θ_u, user u's taste over categories."""
    user_tastes_pattern: np.ndarray
    """(U, P) float64, rows sum to 1: φ_u, user u's taste over patterns."""
    user_activity: np.ndarray
    """(U,) float64, sums to 1: the probability that an event is user u's."""

    @property
    def user_ids(self) -> np.ndarray:
        """(U,) str ids; row u of the taste arrays is user `user_ids[u]`."""
        return _ids("u", len(self.user_activity))

    def true_scores(self, users: int | np.ndarray, *, time: int | None = None) -> np.ndarray:
        """The true P(item | user): (N,) for one user index, (len(users), N) for several.

        With `time` (epoch seconds) it is the distribution of that user's event at that
        second, zero on items not yet released. With `time=None` it is averaged over the
        span: the distribution of the items in the user's logged events, computed exactly
        over the stretches between releases. Rows sum to 1; ranking by them is the oracle.
        """
        rows = np.atleast_1d(np.asarray(users))
        if not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise ValueError(f"users must be an int or a 1-d array of user indices, got {users!r}")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.user_activity)):
            raise ValueError(f"user indices must lie in [0, {len(self.user_activity)})")
        weights = _item_weights(self, rows)  # (R, N) θ_u[c(i)] φ_u[p(i)] pop(i)
        release = self.catalog["release_time"].to_numpy() - self.config.start_time
        if time is None:
            scores = _span_average(weights, release, self.config.time_span)
        else:
            scores = np.where(release <= time - self.config.start_time, weights, 0.0)
            total = scores.sum(axis=1, keepdims=True)
            if not np.all(total > 0):
                raise ValueError(f"no item is released by time {time}")
            scores = scores / total
        return scores[0] if np.ndim(users) == 0 else scores


def _item_weights(shop: Shop, rows: np.ndarray) -> np.ndarray:
    """(R, N) unnormalised choice weights θ_u[c(i)] · φ_u[p(i)] · pop(i) of the given users."""
    category = shop.catalog["category"].to_numpy()
    pattern = shop.catalog["pattern"].to_numpy()
    popularity = shop.catalog["popularity"].to_numpy()
    return (shop.user_tastes_category[rows][:, category]
            * shop.user_tastes_pattern[rows][:, pattern] * popularity)


def _span_average(weights: np.ndarray, release: np.ndarray, span: int) -> np.ndarray:
    """Average over integer t in [0, span) of weights · [release ≤ t] / Z(t); (R, N) → (R, N).

    Z(t) only changes at release times, so the span splits into stretches k = [r_k, r_k+1)
    of L_k seconds, and P(i) = w_i · Σ_{k: r_k ≥ release(i)} L_k / (span · Z_k).
    """
    starts = np.unique(release)  # (K,) stretch starts; starts[0] = 0
    lengths = np.diff(np.append(starts, span))  # (K,)
    order = np.argsort(release, kind="stable")
    cumulative = np.cumsum(weights[:, order], axis=1)  # (R, N) in release order
    last = np.searchsorted(release[order], starts, side="right") - 1  # last item out by r_k
    per_stretch = lengths / (span * cumulative[:, last])  # (R, K)
    from_stretch = np.cumsum(per_stretch[:, ::-1], axis=1)[:, ::-1]  # Σ over stretches ≥ k
    stretch_of_item = np.searchsorted(starts, release)  # (N,)
    return weights * from_stretch[:, stretch_of_item]


class ShopOracle:
    """A scorer (`twotower.evaluate.Scorer`) that ranks by the shop's true P(item | user).

    The scores are `Shop.true_scores` averaged over the given `times` (epoch seconds, e.g.
    spread over the test window): the best ranking any model can reach on the shop, and the
    exact optimum of the logQ-corrected in-batch softmax, which learns log P(i | u). With
    `divide_by_q` it ranks by P(i | u) / (count(i) + 1) instead, count being the item's
    training interactions: the optimum of the uncorrected softmax, which learns
    log P(i | u) − log q(i) (Yi et al. 2019, sec. 3), add-one smoothed so that cold items
    (count 0) stay finite. Queries must come from a log of this shop.
    """

    def __init__(self, shop: Shop, times: np.ndarray, *, divide_by_q: bool = False) -> None:
        self.times = np.atleast_1d(np.asarray(times, dtype=np.int64))
        if self.times.size == 0:
            raise ValueError("times must hold at least one epoch second")
        self.shop, self.divide_by_q = shop, divide_by_q
        self.n_items = len(shop.catalog)

    def rank(self, queries, k: int) -> np.ndarray:
        """(U, k) item ids, best first, none of them in the user's `seen` items."""
        users = pd.Index(self.shop.user_ids).get_indexer(queries.user_id)
        columns = pd.Index(self.shop.catalog["item_id"]).get_indexer(queries.item_ids)
        if (users < 0).any() or (columns < 0).any():
            raise ValueError("the queries name users or items this shop does not have")
        scores = np.mean([self.shop.true_scores(users, time=int(t)) for t in self.times],
                         axis=0)[:, columns]  # (U, I) in item_index order
        if self.divide_by_q:
            scores = scores / (queries.item_counts + 1)
        for row, seen in enumerate(queries.seen):
            scores[row, seen] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return queries.item_ids[top]


# ---------------------------------------------------------------------------------------------
# Making a shop.


def make_shop(
    config: ShopConfig | None = None,
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Shop:
    """Generate the catalog, its images, the shoppers and their interaction log.

    Procedural by default. With `images` ((M, H, W) or (M, C, H, W) uint8, channels first)
    and `labels` ((M,) non-negative ints), `config.num_items` of them are drawn at random
    (kept in their original order), category = label, and there is a single pattern 0 and no
    colour (−1): `image_size`, `num_categories`, `num_patterns` and `num_colours` are unused.
    Each stage draws from its own seeded stream, so changing how images are drawn never
    changes who buys what.
    """
    config = ShopConfig() if config is None else config
    streams = np.random.SeedSequence(config.seed).spawn(4)
    item_rng, image_rng, user_rng, event_rng = (np.random.default_rng(s) for s in streams)
    n = config.num_items

    if images is None and labels is None:
        category = item_rng.integers(config.num_categories, size=n)
        pattern = item_rng.integers(config.num_patterns, size=n)
        colour = item_rng.integers(config.num_colours, size=n)
        num_categories, num_patterns = config.num_categories, config.num_patterns
        pictures = render_images(category, pattern, colour, size=config.image_size, rng=image_rng)
    else:
        pictures, category = _given_items(images, labels, n, item_rng)
        pattern, colour = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        num_categories, num_patterns = int(category.max()) + 1, 1

    popularity = _zipf_popularity(n, config.zipf_exponent, item_rng)
    release = _release_offsets(n, config.initial_fraction, config.time_span, item_rng)
    tastes_category = _dirichlet(config.num_users, num_categories,
                                 config.taste_concentration, user_rng)
    tastes_pattern = _dirichlet(config.num_users, num_patterns,
                                config.taste_concentration, user_rng)
    activity = user_rng.lognormal(0.0, config.activity_sigma, size=config.num_users)
    activity /= activity.sum()

    user, when, item = _sample_events(
        tastes_category, tastes_pattern, activity, category, pattern, popularity, release,
        num_events=config.num_interactions, span=config.time_span, rng=event_rng,
    )
    purchase = event_rng.random(config.num_interactions) < config.purchase_rate
    order = np.lexsort((item, user, when))  # by time, ties by user then item
    item_ids, user_ids = _ids("p", n), _ids("u", config.num_users)

    catalog = pd.DataFrame({
        "item_id": item_ids,
        "category": category.astype(np.int64),
        "pattern": pattern.astype(np.int64),
        "colour": colour.astype(np.int64),
        "release_time": release + config.start_time,
        "popularity": popularity,
    })
    interactions = pd.DataFrame({
        "user_id": user_ids[user[order]],
        "item_id": item_ids[item[order]],
        "timestamp": when[order] + config.start_time,
        "event": np.where(purchase, "purchase", "click"),
    })
    return Shop(config, catalog, pictures, interactions, tastes_category, tastes_pattern,
                activity)


def _ids(prefix: str, count: int) -> np.ndarray:
    width = max(5, len(str(count - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(count)])


def _given_items(
    images: np.ndarray | None, labels: np.ndarray | None, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Check a given labelled image array and draw n items from it: (n, C, H, W), (n,)."""
    if images is None or labels is None:
        raise DataError("images and labels go together: pass both or neither")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {images.dtype}; scale to 0..255 and cast")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError("images must be (M, H, W) or (M, C, H, W) with C = 1 or 3, channels "
                        f"first (transpose (M, H, W, C) arrays), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"labels must have shape ({images.shape[0]},), one per image, "
                        f"got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise DataError(f"labels must be non-negative integers, got dtype {labels.dtype}",
                        value=labels.min() if labels.size else None)
    if images.shape[0] < n:
        raise DataError(f"{images.shape[0]} images given but num_items = {n}; "
                        "lower num_items or give more images")
    chosen = np.sort(rng.choice(images.shape[0], size=n, replace=False))
    return np.ascontiguousarray(images[chosen]), labels[chosen].astype(np.int64)


def _zipf_popularity(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) pop(i) = rank(i)^−s / Σ_r r^−s over a random ranking (Zipf 1949)."""
    rank = rng.permutation(n) + 1
    weight = rank.astype(np.float64) ** -exponent
    return weight / weight.sum()


def _release_offsets(n: int, initial: float, span: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64 seconds after the start: 0 for the initial share, uniform in [1, span) else."""
    release = np.zeros(n, dtype=np.int64)
    late = rng.permutation(n)[max(1, round(initial * n)):]
    release[late] = rng.integers(1, span, size=late.size)
    return release


def _dirichlet(rows: int, size: int, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """(rows, size) Dirichlet(α·1) draws, floored at 1e-12 so every item stays reachable."""
    tastes = np.maximum(rng.dirichlet(np.full(size, concentration), size=rows), 1e-12)
    return tastes / tastes.sum(axis=1, keepdims=True)


_EVENT_BLOCK = 1 << 16
"""Events sampled per block: bounds the (block, cells) arrays whatever num_interactions is."""


def _sample_events(
    tastes_category: np.ndarray,
    tastes_pattern: np.ndarray,
    activity: np.ndarray,
    category: np.ndarray,
    pattern: np.ndarray,
    popularity: np.ndarray,
    release: np.ndarray,
    *,
    num_events: int,
    span: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (user, time offset, item) index arrays of `num_events` independent events.

    Two stages, exact and without a loop over events: the cell g = (category, pattern) with
    probability ∝ θ_u[c_g] φ_u[p_g] W_g(t), where W_g(t) is the popularity of g's items
    released by t, then an item of g ∝ pop among those released. Items sorted by (cell,
    release) make "released by t" a prefix of each cell, so both W_g(t) and the item's inverse
    CDF are lookups in one cumulative popularity array.
    """
    num_patterns = tastes_pattern.shape[1]
    num_cells = tastes_category.shape[1] * num_patterns
    cell = category * num_patterns + pattern  # (N,)
    cell_category, cell_pattern = np.divmod(np.arange(num_cells), num_patterns)  # (G,), (G,)
    order = np.lexsort((release, cell))  # items by cell, then release time
    cumulative = np.concatenate([[0.0], np.cumsum(popularity[order])])  # (N + 1,)
    key = cell[order] * span + release[order]  # (N,) increasing; release < span
    cell_key = np.arange(num_cells) * span  # (G,)
    first = np.searchsorted(key, cell_key)  # (G,) first sorted position of each cell

    user = rng.choice(len(activity), size=num_events, p=activity)
    when = rng.integers(0, span, size=num_events)
    pick_cell, pick_item = rng.random(num_events), rng.random(num_events)
    item = np.empty(num_events, dtype=np.int64)
    for block in range(0, num_events, _EVENT_BLOCK):
        rows = slice(block, block + _EVENT_BLOCK)
        u, t = user[rows], when[rows]
        end = np.searchsorted(key, cell_key + t[:, None], side="right")  # (b, G) past released
        mass = cumulative[end] - cumulative[first]  # (b, G) W_g(t)
        weight = tastes_category[u][:, cell_category] * tastes_pattern[u][:, cell_pattern] * mass
        cdf = np.cumsum(weight, axis=1)
        target = pick_cell[rows] * cdf[:, -1]
        last = num_cells - 1 - np.argmax(weight[:, ::-1] > 0, axis=1)  # last cell with mass
        g = np.minimum((cdf <= target[:, None]).sum(axis=1), last)  # (b,) if target rounds up
        lo, hi = first[g], end[np.arange(len(g)), g]
        x = cumulative[lo] + pick_item[rows] * (cumulative[hi] - cumulative[lo])
        position = np.clip(np.searchsorted(cumulative, x, side="right") - 1, lo, hi - 1)
        item[rows] = order[position]
    return user, when, item


# ---------------------------------------------------------------------------------------------
# Procedural images.

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A shape or pattern: object coordinates u (right), v (down), both (n, S, S) → bool mask."""


def _radius(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v)


def _shirt(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sleeves = (v > -0.42) & (v < -0.16) & (np.abs(u) < 0.48)
    return sleeves | ((np.abs(u) < 0.22) & (v > -0.42) & (v < 0.46))


def _trousers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    band = (v > -0.46) & (v < -0.28) & (np.abs(u) < 0.3)
    legs = (v >= -0.28) & (v < 0.46) & (np.abs(u) < 0.3) & (np.abs(u) > 0.06)
    return band | legs


def _dress(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v > -0.45) & (v < 0.45) & (np.abs(u) < 0.06 + 0.4 * (v + 0.45))


def _shoe(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sole = (v > 0.08) & (v < 0.34) & (np.abs(u) < 0.46)
    return sole | ((u > -0.46) & (u < -0.04) & (v > -0.4) & (v <= 0.08))


def _bag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    handle = (v < -0.08) & (np.abs(_radius(u, v + 0.08) - 0.22) < 0.05)
    return handle | ((np.abs(u) < 0.4) & (v >= -0.08) & (v < 0.42))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(_radius(u, v) - 0.34) < 0.1


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    angle = np.arctan2(v, u)
    return _radius(u, v) < 0.2 + 0.27 * (0.5 + 0.5 * np.cos(5 * angle + np.pi / 2)) ** 2


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) < 0.12) & (np.abs(v) < 0.46)) | ((np.abs(v) < 0.12) & (np.abs(u) < 0.46))


_PERIOD = 0.22
"""Pattern period in object units (about 4 to 6 pixels on a 32-pixel image)."""


def _frac(x: np.ndarray) -> np.ndarray:
    return x / _PERIOD - np.floor(x / _PERIOD)


def _solid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.ones(u.shape, dtype=bool)


def _stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(v) < 0.5


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _radius(_frac(u) - 0.5, _frac(v) - 0.5) < 0.3


def _checks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u) < 0.5) ^ (_frac(v) < 0.5)


def _diagonal(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac((u + v) / math.sqrt(2)) < 0.5


def _grid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u) < 0.3) | (_frac(v) < 0.3)


_SHAPES: tuple[Mask, ...] = (_shirt, _trousers, _dress, _shoe, _bag, _ring, _star, _cross)
_PATTERNS: tuple[Mask, ...] = (_solid, _stripes, _dots, _checks, _diagonal, _grid)
CATEGORY_NAMES = ("shirt", "trousers", "dress", "shoe", "bag", "ring", "star", "cross")
"""Procedural category c is the silhouette CATEGORY_NAMES[c]."""
PATTERN_NAMES = ("solid", "stripes", "dots", "checks", "diagonal", "grid")
"""Procedural pattern p is the fill PATTERN_NAMES[p]."""
COLOUR_NAMES = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown",
                "white")
"""Colour k is COLOUR_NAMES[k], RGB `_PALETTE[k]` with a little jitter per image."""
_PALETTE = np.array([
    (220, 40, 40), (240, 140, 20), (235, 215, 40), (50, 170, 60), (30, 165, 165),
    (40, 90, 225), (140, 60, 200), (240, 110, 180), (150, 95, 50), (240, 240, 240),
], dtype=np.float64)


def render_images(
    category: np.ndarray,
    pattern: np.ndarray,
    colour: np.ndarray,
    *,
    size: int = 32,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw products: (n,) category, pattern, colour indices → (n, 3, size, size) uint8.

    The silhouette of CATEGORY_NAMES[c], filled with PATTERN_NAMES[p] (the pattern's "on"
    pixels in the colour, the rest in a darker shade of it), tilted by up to ±20°, scaled to
    60–90 % of the image and centred within ±12 % of the middle, over a background of smooth
    grey-ish noise plus pixel noise. All images are drawn at once in numpy.
    """
    n = len(category)
    for name, values, count in (("category", category, len(_SHAPES)),
                                ("pattern", pattern, len(_PATTERNS)),
                                ("colour", colour, len(_PALETTE))):
        values = np.asarray(values)
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be ({n},) integers like category, got {values.shape}")
        if n and (values.min() < 0 or values.max() >= count):
            raise ValueError(f"{name} indices must lie in [0, {count}), "
                             f"got {values.min()} to {values.max()}")
    centre = rng.uniform(0.38, 0.62, size=(n, 2)) * size  # (n, 2) x, y in pixels
    scale = rng.uniform(0.6, 0.9, size=n) * size  # pixels per object unit
    tilt = rng.uniform(-0.35, 0.35, size=n)
    shade = np.clip(_PALETTE[colour] + rng.normal(0.0, 12.0, size=(n, 3)), 0, 255)  # (n, 3)
    background = _background(n, size, rng)  # (n, 3, S, S)

    # float32 from here: the (n, 3, S, S) arrays are the cost, and halving them halves it.
    pixel = np.arange(size, dtype=np.float32) + 0.5
    dx = pixel[None, None, :] - centre[:, 0, None, None].astype(np.float32)  # (n, 1, S)
    dy = pixel[None, :, None] - centre[:, 1, None, None].astype(np.float32)  # (n, S, 1)
    cos = (np.cos(tilt) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(tilt) / scale).astype(np.float32)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (n, S, S) object coordinates
    inside, on = np.zeros(u.shape, dtype=bool), np.zeros(u.shape, dtype=bool)
    for k in np.unique(category):
        rows = category == k
        inside[rows] = _SHAPES[k](u[rows], v[rows])
    for k in np.unique(pattern):
        rows = pattern == k
        on[rows] = _PATTERNS[k](u[rows], v[rows])

    brightness = np.where(on, np.float32(1.0), np.float32(0.45))[:, None]  # (n, 1, S, S)
    fill = shade.astype(np.float32)[:, :, None, None] * brightness  # (n, 3, S, S)
    picture = np.where(inside[:, None], fill, background)
    picture += 6.0 * rng.standard_normal(picture.shape, dtype=np.float32)  # pixel noise
    return np.clip(np.rint(picture, out=picture), 0, 255, out=picture).astype(np.uint8)


def _background(n: int, size: int, rng: np.random.Generator, coarse: int = 4) -> np.ndarray:
    """(n, 3, S, S) float32: a grey level and tint per image plus smooth colour noise.

    The noise is a (coarse × coarse) grid per channel, upsampled bilinearly to S × S.
    """
    level = rng.uniform(70.0, 190.0, size=(n, 1, 1, 1)) + rng.normal(0.0, 8.0, size=(n, 3, 1, 1))
    grid = rng.normal(0.0, 22.0, size=(n, 3, coarse, coarse)).astype(np.float32)
    position = np.linspace(0.0, coarse - 1.0, size)  # bilinear interpolation matrix (S, coarse)
    up = np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(coarse)[None, :]))
    up = up.astype(np.float32)
    return (up @ grid @ up.T) + level.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Writing a shop.


def write_shop(shop: Shop, out_dir: str | Path) -> dict[str, Path]:
    """Write the shop as Parquet, each file atomically; returns {name: path}.

    - ``catalog.parquet``: the catalog contract's `item_id` and `image` (PNG bytes, RGB or
      greyscale), plus category, pattern, colour, release_time, popularity.
    - ``interactions.parquet``: user_id, item_id, timestamp (int64 s), event.
    - ``users.parquet``: the ground truth: user_id, activity, taste_category (list of K
      floats), taste_pattern (list of P floats).
    - ``shop.json``: the config that made it.
    Same shop, same bytes.
    """
    out_dir = Path(out_dir)
    catalog = shop.catalog.assign(image=[_png(picture) for picture in shop.images])
    catalog = catalog[["item_id", "image", *shop.catalog.columns.drop("item_id")]]
    users = pa.table({
        "user_id": shop.user_ids,
        "activity": shop.user_activity,
        "taste_category": _fixed_lists(shop.user_tastes_category),
        "taste_pattern": _fixed_lists(shop.user_tastes_pattern),
    })
    tables = {
        "catalog": pa.Table.from_pandas(catalog, preserve_index=False),
        "interactions": pa.Table.from_pandas(shop.interactions, preserve_index=False),
        "users": users,
    }
    paths = {}
    for name, table in tables.items():
        paths[name] = out_dir / f"{name}.parquet"
        with atomic_path(paths[name]) as tmp:
            pq.write_table(table, tmp)
    paths["config"] = out_dir / "shop.json"
    with atomic_path(paths["config"]) as tmp:
        tmp.write_text(json.dumps(asdict(shop.config), indent=2) + "\n")
    return paths


def _png(picture: np.ndarray) -> bytes:
    """(C, S, S) uint8 → PNG bytes, RGB for 3 channels and greyscale for 1."""
    pixels = picture[0] if picture.shape[0] == 1 else picture.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fixed_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    """(U, K) floats → a Parquet column of U fixed-size lists of K floats."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
