"""`ShopOracle`: the scorer that ranks by a synthetic shop's true P(item | user).

What no real data set offers: the ceiling that every trained model on the shop is measured
against (`benchmarks/bench_logq.py`, `benchmarks/bench_two_tower.py`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower.synthetic.shop import Shop

__all__ = ["ShopOracle"]


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
