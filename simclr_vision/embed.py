"""The frozen encoder's h for every product in a catalog, written as the embeddings Parquet.

This file is where simclr_vision hands over to twotower (DESIGN.md: the two packages meet
through files): `item_id`, `embedding` as a fixed-size list of float32, and file metadata under
the key `twotower.embeddings` naming the encoder checkpoint, the architecture, the dimension,
the image size and whether the vectors were L2-normalized. The projection head is not used:
h, not z, describes a product (Chen et al. 2020, §4.2).

`image_encoder` gives the same encoder as a function, for what comes after the file: a
retriever that adds a product from its photo needs the h the catalog's products were given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simclr_vision.data import conform_images, load_catalog
from simclr_vision.model import SimCLR, encode_images
from simclr_vision.pretrain import PretrainConfig, load_simclr
from twotower.vectors import write_vectors

__all__ = ["FrozenEncoder", "embed_catalog", "image_encoder"]


@dataclass(frozen=True, eq=False)
class FrozenEncoder:
    """A pretrained SimCLR encoder as a function: uint8 images (N, C, H, W) → h (N, D) float32.

    The one path from pixels to h: `embed_catalog` writes the catalog's embeddings with it, and
    a retriever adding new products from their photos calls it (the `ImageEncoder` of
    `twotower.retriever`), so a photo gets the h its product would have in the embeddings
    Parquet. Images are converted to the encoder's channels and pretraining size
    (`conform_images`; catalog images arrive at that size already), encoded in eval mode,
    and L2-normalized when the embeddings were.
    """

    model: SimCLR
    """The SimCLR model in eval mode; only its encoder f is used."""
    config: PretrainConfig
    """The config it was pretrained with (architecture, image size)."""
    normalize: bool = False
    """L2-normalize h, as `embed_catalog(normalize=True)` does."""
    batch_size: int = 1024
    """Images per forward pass."""

    @property
    def size(self) -> int:
        """The side, in pixels, images are resized to: the pretraining size."""
        return self.config.image_size

    @property
    def channels(self) -> int:
        """The encoder's input channels (1 gray or 3 RGB)."""
        return self.model.encoder.in_channels

    def __call__(self, images: torch.Tensor | np.ndarray, *, progress: bool = False) -> np.ndarray:
        """uint8 images (N, C, H, W) of any size, 1 or 3 channels → h (N, D) float32."""
        images = conform_images(torch.as_tensor(images), channels=self.channels, size=self.size)
        h, _ = encode_images(self.model, images, size=self.size, batch_size=self.batch_size,
                             progress=progress)
        if self.normalize:
            h = F.normalize(h, dim=1)
        return h.numpy()


def image_encoder(
    checkpoint: str | os.PathLike[str],
    *,
    normalize: bool = False,
    device: str = "cpu",
    batch_size: int = 1024,
) -> FrozenEncoder:
    """The frozen encoder of a SimCLR checkpoint (`pretrain`'s `last.pt`), ready to embed."""
    model, config = load_simclr(checkpoint, device=device)
    return FrozenEncoder(model, config, normalize=normalize, batch_size=batch_size)


def embed_catalog(
    catalog: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 1024,
    normalize: bool = False,
    device: str = "cpu",
    skip_bad: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every catalog image with the checkpoint's frozen encoder; write `out` (Parquet).

    Images are resized to the size the encoder was pretrained at. With `skip_bad`, unreadable
    images are left out (and named in the metadata) instead of stopping the run.
    """
    encoder = image_encoder(checkpoint, normalize=normalize, device=device,
                            batch_size=batch_size)
    images = load_catalog(catalog, size=encoder.size, channels=encoder.channels,
                          skip_bad=skip_bad, progress=progress)
    h = encoder(images.images, progress=progress)
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "arch": encoder.config.arch,
        "dim": h.shape[1],
        "image_size": encoder.size,
        "normalized": normalize,
        "catalog": str(Path(catalog).resolve()),
        "skipped": list(images.skipped),
    }
    return write_vectors(images.ids, h, out, meta)
