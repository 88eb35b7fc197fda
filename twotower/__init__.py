"""twotower: product retrieval without labels.

The shared contrastive core, projection heads and distributed helpers; the logQ frequencies;
interaction-log preparation and the synthetic shop; the two-tower model and its training; the
retrieval index, the ranking metrics and the offline evaluation with its baselines.
"""

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
from twotower.synthetic import Shop, ShopConfig, make_shop, write_shop
from twotower.towers import TowerConfig, TwoTower
from twotower.train import TrainConfig, export_vectors, fit

__all__ = [
    "DataError",
    "EASEScorer",
    "IALSConfig",
    "IALSScorer",
    "ItemIndex",
    "PopularityScorer",
    "PrepareConfig",
    "ProjectionHead",
    "Shop",
    "ShopConfig",
    "StreamingFrequencyEstimator",
    "TowerConfig",
    "TrainConfig",
    "TwoTower",
    "atomic_path",
    "evaluate",
    "export_vectors",
    "fit",
    "gather_with_grad",
    "image_knn",
    "info_nce",
    "load_queries",
    "log_q_from_counts",
    "make_shop",
    "nt_xent",
    "prepare",
    "rank",
    "world_size",
    "write_shop",
]
__version__ = "0.1.0"
