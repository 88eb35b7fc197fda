"""A trained two-tower model's vectors: `encode_users` gives users' vectors from their ids and
histories, `user_vectors_for` turns it into a scorer's user side, `export_vectors` writes the
vectors Parquet files that `ItemIndex` and `evaluate_retrieval` read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from twotower.evaluate import EvalQueries, load_queries
from twotower.inputs import load_training
from twotower.towers import TwoTower, pad_histories
from twotower.vectors import write_vectors

__all__ = ["encode_users", "export_vectors", "user_vectors_for"]


def encode_users(model: TwoTower, users: np.ndarray, histories: Sequence[np.ndarray],
                 max_history: int) -> np.ndarray:
    """(U, d) float32 unit vectors of U users: their user_index (−1: not in the vocabulary)
    and time-ordered history item rows, of which the newest `max_history` are read."""
    device = model.item_tower.warm.device
    history = torch.as_tensor(pad_histories(histories, max_history), device=device)
    return model.user_vectors(torch.as_tensor(users, device=device), history).float().cpu().numpy()


def user_vectors_for(model: TwoTower, max_history: int) -> Callable[[EvalQueries], np.ndarray]:
    """A `VectorScorer.user_vectors` for a trained model: each query user's id and history."""

    def encode(queries: EvalQueries) -> np.ndarray:
        return encode_users(model, queries.user_index, queries.history, max_history)

    return encode


def export_vectors(
    model: TwoTower,
    prepared: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_history: int,
    splits: Sequence[str] = ("valid", "test"),
    metadata: Mapping[str, Any] | None = None,
    leave_out: Collection[str] = (),
) -> dict[str, Path]:
    """Write the model's vectors for `ItemIndex` and `evaluate_retrieval`, atomically each.

        item_vectors.parquet        every item of the model (item_id) but those in `leave_out`:
                                    the prepared items, then any new products it was given
                                    (`fit(new_products=)`)
        user_vectors.parquet        every user from their whole training history (serving)
        user_vectors_<split>.parquet  the split's query users from their history before it
    """
    out = Path(out_dir)
    meta = {"model": "two_tower", "dim": model.config.dim, "normalized": True,
            **dict(metadata or {})}
    rows = load_training(prepared)
    item_ids = model.item_ids
    if item_ids is None:
        items = pd.read_parquet(Path(prepared) / "items.parquet",
                                columns=["item_id", "item_index"])
        item_ids = items.sort_values("item_index")["item_id"].astype(str).to_numpy()
    kept = ~np.isin(np.asarray(item_ids, dtype=str), np.asarray(list(leave_out), dtype=str))
    paths = {"items": write_vectors(np.asarray(item_ids)[kept],
                                    model.item_vectors().float().cpu().numpy()[kept],
                                    out / "item_vectors.parquet", meta)}
    users = pd.read_parquet(Path(prepared) / "users.parquet", columns=["user_id", "user_index"])
    users = users.sort_values("user_index")
    index = users["user_index"].to_numpy().astype(np.int64)
    device = model.item_tower.warm.device
    history = torch.as_tensor(rows.user_histories(index, max_history), device=device)
    vectors = model.user_vectors(torch.as_tensor(index, device=device), history)
    paths["users"] = write_vectors(users["user_id"].astype(str).to_numpy(),
                                   vectors.float().cpu().numpy(), out / "user_vectors.parquet",
                                   {**meta, "history": "all training rows"},
                                   id_column="user_id")
    encode = user_vectors_for(model, max_history)
    for split in splits:
        split_queries = load_queries(prepared, split)
        paths[split] = write_vectors(split_queries.user_id, encode(split_queries),
                                     out / f"user_vectors_{split}.parquet",
                                     {**meta, "history": f"before the {split} targets"},
                                     id_column="user_id")
    return paths
