"""simclr_vision: SimCLR pretraining that yields a frozen product-image encoder.

Images (idx, npz, folders, Parquet catalogs) → `SimCLRAugment` views → ResNet encoder f → h →
projection head g → z → `twotower.nt_xent`. After pretraining g is dropped and the frozen h of
every product is written to the embeddings Parquet that the two-tower model reads.

The exports load on first use (`twotower.lazy`): `import simclr_vision.augment` needs torch and
kornia, not the scikit-learn of the probes.
"""

from typing import TYPE_CHECKING

from twotower.lazy import lazy_exports

_EXPORTS = {
    # name: the submodule that defines it
    "SimCLRAugment": "augment",
    "resize_view": "augment",
    "ImageSet": "data",
    "conform_images": "data",
    "find_fashion_mnist": "data",
    "load_images": "data",
    "FrozenEncoder": "embed",
    "embed_catalog": "embed",
    "image_encoder": "embed",
    "ResNet": "encoder",
    "build_encoder": "encoder",
    "augmentation_probe": "evaluate",
    "knn_accuracy": "evaluate",
    "linear_probe": "evaluate",
    "SimCLR": "model",
    "build_simclr": "model",
    "encode_images": "model",
    "PretrainConfig": "pretrain",
    "PretrainResult": "pretrain",
    "load_simclr": "pretrain",
    "pretrain": "pretrain",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

# What type checkers and editors read; tests/test_imports.py keeps it equal to _EXPORTS.
# These imports are the exports __all__ names, but ruff cannot read a computed __all__:
# ruff: noqa: F401
if TYPE_CHECKING:
    from simclr_vision.augment import SimCLRAugment, resize_view
    from simclr_vision.data import ImageSet, conform_images, find_fashion_mnist, load_images
    from simclr_vision.embed import FrozenEncoder, embed_catalog, image_encoder
    from simclr_vision.encoder import ResNet, build_encoder
    from simclr_vision.evaluate import augmentation_probe, knn_accuracy, linear_probe
    from simclr_vision.model import SimCLR, build_simclr, encode_images
    from simclr_vision.pretrain import PretrainConfig, PretrainResult, load_simclr, pretrain
