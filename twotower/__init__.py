"""twotower: product retrieval without labels.

The shared contrastive core, projection heads and distributed helpers; the logQ frequencies;
interaction-log preparation and the synthetic shop; the two-tower model and its training; the
retrieval index, the ranking metrics and the offline evaluation with its baselines.

The exports load on first use (`twotower.lazy`): `import twotower.contrastive` needs torch
alone, not the faiss, polars and pandas that the index and the data preparation need.
"""

from typing import TYPE_CHECKING

from twotower.lazy import lazy_exports

_EXPORTS = {
    # name: the submodule that defines it
    "info_nce": "contrastive",
    "nt_xent": "contrastive",
    "PrepareConfig": "data",
    "prepare": "data",
    "gather_with_grad": "distributed",
    "rank": "distributed",
    "world_size": "distributed",
    "EASEScorer": "evaluate",
    "IALSConfig": "evaluate",
    "IALSScorer": "evaluate",
    "PopularityScorer": "evaluate",
    "evaluate": "evaluate",
    "image_knn": "evaluate",
    "load_queries": "evaluate",
    "DataError": "files",
    "atomic_path": "files",
    "StreamingFrequencyEstimator": "frequency",
    "log_q_from_counts": "frequency",
    "ProjectionHead": "heads",
    "ItemIndex": "index",
    "Retriever": "retriever",
    "Shop": "synthetic",
    "ShopConfig": "synthetic",
    "make_shop": "synthetic",
    "write_shop": "synthetic",
    "TowerConfig": "towers",
    "TwoTower": "towers",
    "TrainConfig": "train",
    "export_vectors": "train",
    "fit": "train",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
__version__ = "0.1.0"

# What type checkers and editors read; tests/test_imports.py keeps it equal to _EXPORTS.
# These imports are the exports __all__ names, but ruff cannot read a computed __all__:
# ruff: noqa: F401
if TYPE_CHECKING:
    from twotower.contrastive import info_nce, nt_xent
    from twotower.data import PrepareConfig, prepare
    from twotower.distributed import gather_with_grad, rank, world_size
    from twotower.evaluate import (
        EASEScorer,
        IALSConfig,
        IALSScorer,
        PopularityScorer,
        evaluate,
        image_knn,
        load_queries,
    )
    from twotower.files import DataError, atomic_path
    from twotower.frequency import StreamingFrequencyEstimator, log_q_from_counts
    from twotower.heads import ProjectionHead
    from twotower.index import ItemIndex
    from twotower.retriever import Retriever
    from twotower.synthetic import Shop, ShopConfig, make_shop, write_shop
    from twotower.towers import TowerConfig, TwoTower
    from twotower.train import TrainConfig, export_vectors, fit
