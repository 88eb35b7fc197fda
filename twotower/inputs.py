"""What the two-tower model reads from a prepared folder: training rows, histories, item features.

`load_training(prepared)` holds the training split as integer arrays plus each user's training
sequence (CSR), so a batch of rows gets its users' histories by index arithmetic:
row r = (user u, item i, position p) has history users.history[u][max(0, p − L) : p], the L
most recent training items strictly before it (DESIGN.md, prepared folder).

`item_features(prepared, embeddings=..., catalog=..., attributes=...)` lines up the frozen
image embeddings and categorical catalog attributes (`read_catalog`) with the prepared
item_index order; `attribute_codes` codes a new product's attribute values the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from twotower.data import prepared_files
from twotower.files import DataError
from twotower.towers import PAD, ItemFeatures
from twotower.vectors import Vectors

__all__ = ["TrainingRows", "attribute_codes", "item_features", "load_training", "read_catalog",
           "unsold"]


@dataclass(frozen=True)
class TrainingRows:
    """The training split of a prepared folder, as numpy."""

    user: np.ndarray
    """(N,) int64 user_index of each training row."""
    item: np.ndarray
    """(N,) int64 item_index of each training row."""
    position: np.ndarray
    """(N,) int64 index of the row in its user's time-ordered training sequence."""
    offsets: np.ndarray
    """(U + 1,) int64: user u's sequence is sequence_items[offsets[u]:offsets[u + 1]]."""
    sequence_items: np.ndarray
    """(N,) int64 every user's training items in time order, user after user."""
    item_counts: np.ndarray
    """(I,) int64 training rows per item."""
    weight: np.ndarray
    """(N,) float32 the `weight` of each training row (1 unless the log or event weights set
    it)."""

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_counts)

    @property
    def users_warm(self) -> np.ndarray:
        """(U,) bool: users with at least one training row."""
        return np.diff(self.offsets) > 0

    def histories(self, rows: np.ndarray, length: int) -> np.ndarray:
        """(B, length) int64: each row's most recent `length` earlier training items, newest
        last, PAD on the left."""
        first = self.offsets[self.user[rows]]
        return self._window(first, first + self.position[rows], length)

    def user_histories(self, users: np.ndarray, length: int) -> np.ndarray:
        """(U, length) int64: each user's last `length` training items, as for a new row."""
        return self._window(self.offsets[users], self.offsets[users + 1], length)

    def _window(self, first: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
        """(B, length): sequence_items[max(first, end − length) : end] per row, left-padded."""
        take = end[:, None] - length + np.arange(length)[None, :]  # (B, L) positions
        out = self.sequence_items[np.clip(take, 0, max(len(self.sequence_items) - 1, 0))]
        return np.where(take >= first[:, None], out, PAD)


def load_training(prepared: str | os.PathLike[str]) -> TrainingRows:
    """The training split and user sequences of a folder written by `twotower.prepare`."""
    paths = prepared_files(prepared, "train", "users", "items")
    train = pl.read_parquet(paths["train"],
                            columns=["user_index", "item_index", "position", "weight"])
    users = pl.read_parquet(paths["users"], columns=["user_index", "history"]).sort("user_index")
    items = pl.read_parquet(paths["items"], columns=["item_index", "count"]).sort("item_index")
    if len(train) == 0:
        raise DataError("the training split is empty", path=paths["train"])
    lengths = users["history"].list.len().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user = train["user_index"].to_numpy().astype(np.int64)
    position = train["position"].to_numpy().astype(np.int64)
    if user.max() >= len(lengths) or (position >= lengths[user]).any():
        raise DataError("a training row's user_index or position does not match users.parquet",
                        path=paths["train"], column="position")
    return TrainingRows(
        user=user,
        item=train["item_index"].to_numpy().astype(np.int64),
        position=position,
        offsets=offsets,
        sequence_items=users["history"].explode().drop_nulls().to_numpy().astype(np.int64),
        item_counts=items["count"].to_numpy().astype(np.int64),
        weight=train["weight"].to_numpy().astype(np.float32),
    )


def item_features(
    prepared: str | os.PathLike[str],
    *,
    embeddings: Vectors | None = None,
    catalog: pd.DataFrame | None = None,
    attributes: Sequence[str] = (),
    new_products: bool = False,
) -> ItemFeatures:
    """The item tower's inputs for the prepared items, in item_index order.

    embeddings: frozen image h per item_id (items without one get zeros and `has_image`
    False). catalog + attributes: categorical columns of a catalog table keyed by item_id,
    coded 1.. in sorted order of their values, 0 for an item absent from the catalog or null.
    new_products: also append, after the prepared items, every product of `embeddings` (and
    of `catalog`, when attributes are read from it) that the log never mentions, so products
    without a single interaction get vectors too; they are cold (no id row).
    """
    path = prepared_files(prepared, "items")["items"]
    items = pl.read_parquet(path, columns=["item_index", "item_id", "count"]).sort("item_index")
    ids = pd.Index(np.asarray(items["item_id"].to_numpy(), dtype=str))
    warm = items["count"].to_numpy() > 0
    if new_products:
        known = [embeddings.ids] if embeddings is not None else []
        if catalog is not None and attributes:
            known.append(catalog["item_id"].astype(str).to_numpy())
        extra = pd.Index(np.concatenate(known) if known else np.zeros(0, str)).unique()
        extra = extra.difference(ids, sort=True)
        ids = ids.append(extra)
        warm = np.concatenate([warm, np.zeros(len(extra), bool)])
    images = has_image = None
    if embeddings is not None:
        rows = pd.Index(embeddings.ids).get_indexer(ids)
        has_image = rows >= 0
        if not has_image[:len(items)].any():
            raise DataError("no prepared item has an image embedding; do the ids match "
                            f"items.parquet's item_id (e.g. {ids[0]!r})?",
                            value=str(embeddings.ids[0]) if len(embeddings.ids) else None)
        images = np.where(has_image[:, None], embeddings.vectors[np.maximum(rows, 0)], 0.0)
        images = images.astype(np.float32)
    codes, vocabularies = {}, {}
    if attributes:
        if catalog is None:
            raise ValueError(f"attributes {list(attributes)} need a catalog table")
        missing = [c for c in ("item_id", *attributes) if c not in catalog.columns]
        if missing:
            raise DataError(f"catalog lacks column(s) {missing}; it has {list(catalog.columns)}",
                            column=missing[0])
        table = catalog.assign(item_id=catalog["item_id"].astype(str)).drop_duplicates("item_id")
        table = table.set_index("item_id").reindex(ids)
        for name in attributes:
            vocabularies[name] = np.sort(table[name].dropna().astype(str).unique())
            codes[name] = attribute_codes(table[name], vocabularies[name])
    return ItemFeatures(warm=warm, images=images, has_image=has_image, attributes=codes,
                        ids=np.asarray(ids, dtype=str), vocabularies=vocabularies)


def attribute_codes(values: Sequence[object] | pd.Series, vocabulary: np.ndarray) -> np.ndarray:
    """(N,) int64 codes of one attribute's values: 1 + the value's place in `vocabulary` (its
    sorted known values, as `item_features` builds them), 0 for a null or a value outside it,
    the unknown row of the attribute's embedding."""
    text = pd.Series(values, dtype=object)
    known = text.notna().to_numpy()
    text = text.fillna("").astype(str).to_numpy()
    place = np.searchsorted(vocabulary, text)
    found = place < len(vocabulary)
    found[found] = vocabulary[place[found]] == text[found]
    return np.where(known & found, place + 1, 0).astype(np.int64)


def read_catalog(path: str | os.PathLike[str], attributes: Sequence[str]) -> pd.DataFrame:
    """item_id and the `attributes` columns of a catalog Parquet, the only columns read (a
    catalog also holds every product's image); a DataError names a missing file or column."""
    if not Path(path).is_file():
        raise DataError("no catalog file here", path=path)
    names = pq.read_schema(path).names
    missing = [c for c in ("item_id", *attributes) if c not in names]
    if missing:
        raise DataError(f"missing column(s) {missing}; the catalog has {names}", path=path,
                        column=missing[0])
    return pd.read_parquet(path, columns=["item_id", *attributes])


def unsold(prepared: str | os.PathLike[str], catalog: pd.DataFrame, listed_at: str) -> np.ndarray:
    """item_id of the `catalog` products listed by the end of the training split that no
    training row mentions: on sale, and not bought.

    The log says of such a product what its content cannot: under Poisson sales with a Gamma
    prior on the rate (the conjugate pair), a product with no sale over an exposure e has
    posterior mean rate α / (β + e), where a product listed after the split, a new one, keeps
    the prior mean α / β. On the demo's shop seed 0 the unsold products were 6× less popular
    than the new ones. `listed_at` is a column of Unix seconds or timestamps.
    """
    if listed_at not in catalog.columns:
        raise DataError(f"no listing-time column {listed_at!r}; the catalog has "
                        f"{list(catalog.columns)}", column=listed_at)
    files = prepared_files(prepared, "train", "items")
    end = pd.read_parquet(files["train"], columns=["timestamp"])["timestamp"].max()
    if pd.isna(end):
        raise DataError("the training split has no timestamps, so no product can be told "
                        "listed before it ends", path=files["train"])
    listed = catalog[listed_at]
    try:
        listed = (pd.to_datetime(listed, unit="s", utc=True)
                  if pd.api.types.is_numeric_dtype(listed) else pd.to_datetime(listed, utc=True))
    except (ValueError, TypeError, OverflowError) as err:
        raise DataError(f"listing times must be Unix seconds or timestamps: {err}",
                        column=listed_at) from None
    if listed.isna().any():
        raise DataError(f"{int(listed.isna().sum())} product(s) without a listing time",
                        column=listed_at)
    items = pd.read_parquet(files["items"], columns=["item_id", "cold"])
    bought = set(items.loc[~items["cold"], "item_id"].astype(str))
    ids = catalog["item_id"].astype(str)
    on_sale = (listed <= pd.to_datetime(end, utc=True)).to_numpy()
    return ids[on_sale & ~ids.isin(bought).to_numpy()].to_numpy()
