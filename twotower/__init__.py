"""twotower: product retrieval without labels.

The shared contrastive core, projection heads and distributed helpers; interaction-log
preparation and the synthetic shop. The two-tower model and the retrieval index join them as
they land.
"""

from twotower.contrastive import info_nce, nt_xent
from twotower.data import PrepareConfig, prepare
from twotower.distributed import gather_with_grad, rank, world_size
from twotower.files import DataError, atomic_path
from twotower.heads import ProjectionHead
from twotower.synthetic import Shop, ShopConfig, make_shop, write_shop

__all__ = [
    "DataError",
    "PrepareConfig",
    "ProjectionHead",
    "Shop",
    "ShopConfig",
    "atomic_path",
    "gather_with_grad",
    "info_nce",
    "make_shop",
    "nt_xent",
    "prepare",
    "rank",
    "world_size",
    "write_shop",
]
__version__ = "0.1.0"
