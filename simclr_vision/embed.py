"""The frozen encoder's h for every product in a catalog, written as the embeddings Parquet.

This file is where simclr_vision hands over to twotower (DESIGN.md: the two packages meet
through files): `item_id`, `embedding` as a fixed-size list of float32, and file metadata under
the key `twotower.embeddings` naming the encoder checkpoint, the architecture, the dimension,
the image size and whether the vectors were L2-normalized. The projection head is not used:
h, not z, describes a product (Chen et al. 2020, §4.2).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn.functional as F

from simclr_vision.data import load_catalog
from simclr_vision.model import encode_images
from simclr_vision.pretrain import load_simclr
from twotower.vectors import write_vectors

__all__ = ["embed_catalog"]


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
    model, config = load_simclr(checkpoint, device=device)
    size = config.image_size
    images = load_catalog(catalog, size=size, channels=model.encoder.in_channels,
                          skip_bad=skip_bad, progress=progress)
    h, _ = encode_images(model, images.images, size=size, batch_size=batch_size, device=device,
                         progress=progress)
    if normalize:
        h = F.normalize(h, dim=1)
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "arch": config.arch,
        "dim": h.shape[1],
        "image_size": size,
        "normalized": normalize,
        "catalog": str(Path(catalog).resolve()),
        "skipped": list(images.skipped),
    }
    return write_vectors(images.ids, h.numpy(), out, meta)
