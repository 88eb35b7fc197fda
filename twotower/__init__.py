"""twotower: product retrieval without labels.

The shared contrastive core, projection heads and the distributed helpers live here; the
two-tower model, data pipelines and retrieval index join them as they land.
"""

from twotower.contrastive import info_nce, nt_xent
from twotower.distributed import gather_with_grad, rank, world_size
from twotower.heads import ProjectionHead

__all__ = ["ProjectionHead", "gather_with_grad", "info_nce", "nt_xent", "rank", "world_size"]
__version__ = "0.1.0"
