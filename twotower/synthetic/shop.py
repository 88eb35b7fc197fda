"""The synthetic shop's data: its configuration, its log and the truth it hides, its files.

`Shop.true_scores` is the exact P(item | user) of the generative model described in
`twotower.synthetic`, the ground truth a real shop never has; `write_shop` writes a shop as
the Parquet files the pipeline stages read.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from twotower.files import atomic_path
from twotower.synthetic.images import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES

__all__ = ["Shop", "ShopConfig", "numbered_ids", "write_shop"]

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
        return numbered_ids("u", len(self.user_activity))

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


def numbered_ids(prefix: str, count: int) -> np.ndarray:
    """(count,) str ids: the prefix and the index zero-padded to 5 digits or more ("p00042")."""
    width = max(5, len(str(count - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(count)])


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
