"""simclr_vision: SimCLR pretraining that yields a frozen product-image encoder.

Images (idx, npz, folders, Parquet catalogs) → `SimCLRAugment` views → ResNet encoder f → h →
projection head g → z → `twotower.nt_xent`. After pretraining g is dropped and the frozen h of
every product is written to the embeddings Parquet that the two-tower model reads.
"""

from simclr_vision.augment import SimCLRAugment, resize_view
from simclr_vision.data import ImageSet, find_fashion_mnist, load_images
from simclr_vision.embed import embed_catalog
from simclr_vision.encoder import ResNet, build_encoder
from simclr_vision.evaluate import augmentation_probe, knn_accuracy, linear_probe
from simclr_vision.model import SimCLR, build_simclr, encode_images
from simclr_vision.pretrain import PretrainConfig, PretrainResult, load_simclr, pretrain

__all__ = [
    "ImageSet",
    "PretrainConfig",
    "PretrainResult",
    "ResNet",
    "SimCLR",
    "SimCLRAugment",
    "augmentation_probe",
    "build_encoder",
    "build_simclr",
    "embed_catalog",
    "encode_images",
    "find_fashion_mnist",
    "knn_accuracy",
    "linear_probe",
    "load_images",
    "load_simclr",
    "pretrain",
    "resize_view",
]
