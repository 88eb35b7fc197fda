"""The validation that picks `fit`'s best epoch: recall@k and NDCG@k of a full-catalog ranking.

After every epoch the model ranks every prepared item for the valid split's users (a fixed
random subset of them), their training items masked, through the same `evaluate` and exact
`ItemIndex` as the offline evaluation.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from twotower.evaluate import EvalQueries, VectorScorer, evaluate, load_queries
from twotower.export import user_vectors_for
from twotower.files import DataError
from twotower.index import ItemIndex
from twotower.towers import TwoTower

__all__ = ["validate", "validation_queries"]


def validation_queries(prepared: str | os.PathLike[str], max_users: int | None,
                       seed: int) -> EvalQueries | None:
    """The valid split's users (a fixed subset of at most max_users), None if it has none."""
    try:
        queries = load_queries(prepared, "valid")
    except DataError:
        return None
    if not len(queries):
        return None
    if max_users is not None and len(queries) > max_users:
        keep = np.random.default_rng(seed).choice(len(queries), max_users, replace=False)
        queries = queries.take(np.sort(keep))
    return queries


def validate(model: TwoTower, queries: EvalQueries, val_k: int, max_history: int,
             device: torch.device) -> tuple[float, float, int]:
    """(recall@k, ndcg@k, k) on the validation users, training items masked; k is val_k, or
    less in a catalog too small to rank val_k unseen items for every user."""
    k = max(1, min(val_k, len(queries.item_ids) - max(s.size for s in queries.seen)))
    prepared_rows = model.item_vectors()[:len(queries.item_ids)]  # new products come after
    index = ItemIndex.build(prepared_rows.float().cpu().numpy(), queries.item_ids,
                            "flat", device=str(device) if device.type == "cuda" else "cpu")
    scorer = VectorScorer(index=index, user_vectors=user_vectors_for(model, max_history))
    table = evaluate(queries, {"model": scorer}, ks=(k,), n_boot=0)
    overall = table[table["slice"] == "all"]
    values = dict(zip(overall["metric"], overall["value"], strict=True))
    # Python floats, not numpy's: the history goes into a checkpoint read with weights_only.
    return float(values["recall"]), float(values["ndcg"]), k
