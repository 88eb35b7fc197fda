"""`make_shop`: a synthetic shop drawn from the generative model described in `twotower.synthetic`.

The items with their attributes, images, popularity and release times; the shoppers with
their tastes and activity; then the events, sampled exactly and without a loop over events.
Each of the four draws has its own seeded stream, so a change in one never moves the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower.files import DataError
from twotower.synthetic.images import render_images
from twotower.synthetic.shop import Shop, ShopConfig, numbered_ids

__all__ = ["make_shop"]


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
    item_ids, user_ids = numbered_ids("p", n), numbered_ids("u", config.num_users)

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
