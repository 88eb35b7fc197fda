"""embed_catalog: one frozen h per catalog product, in the embeddings Parquet contract; and
image_encoder, the same h for a photo that is not in the catalog."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from simclr_vision.data import load_catalog
from simclr_vision.embed import embed_catalog, image_encoder
from simclr_vision.model import encode_images
from simclr_vision.pretrain import PretrainConfig, load_simclr, pretrain
from twotower.synthetic import ShopConfig, make_shop, write_shop
from twotower.vectors import METADATA_KEY, read_vectors


@pytest.fixture(scope="module")
def shop_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    shop = make_shop(ShopConfig(num_items=96, num_users=10, num_interactions=100, image_size=16))
    catalog = write_shop(shop, root / "shop")["catalog"]
    cfg = PretrainConfig(arch="resnet_narrow", width=4, image_size=12, epochs=1, batch_size=32,
                         knn_every=0, progress=False, checkpoint_dir=str(root / "ckpt"))
    images = load_catalog(catalog).images
    pretrain(images, cfg)
    return catalog, root / "ckpt" / "last.pt"


@pytest.mark.parametrize("normalize", [False, True])
def test_one_row_per_product_with_h_and_metadata(shop_and_checkpoint, tmp_path, normalize):
    catalog, checkpoint = shop_and_checkpoint
    out = embed_catalog(catalog, checkpoint, tmp_path / "emb.parquet", batch_size=40,
                        normalize=normalize, progress=False)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)  # 8 · width
    assert table.column("item_id").to_pylist() == pq.read_table(catalog).column(
        "item_id").to_pylist()
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert meta["dim"] == 32 and meta["image_size"] == 12 and meta["normalized"] is normalize
    assert meta["checkpoint"] == str(checkpoint.resolve()) and meta["skipped"] == []
    # The same h the model gives (resized to the pretraining size, eval mode), batch-invariant.
    model, _ = load_simclr(checkpoint)
    h, _ = encode_images(model, load_catalog(catalog, size=12).images, size=12)
    if normalize:
        h = torch.nn.functional.normalize(h, dim=1)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, h.numpy(), rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]
    read = read_vectors(out)  # the reader the index and the evaluator use agrees
    np.testing.assert_array_equal(read.vectors, vectors)
    assert read.metadata == meta



@pytest.mark.parametrize("normalize", [False, True])
def test_a_photo_gets_the_h_its_product_has_in_the_embeddings_file(shop_and_checkpoint, tmp_path,
                                                                    normalize):
    """The catalog's own 16-pixel photos, unresized, gray or RGB, tensor or array: the encoder
    resizes them to the pretraining size (12) itself, as loading the catalog does."""
    catalog, checkpoint = shop_and_checkpoint
    stored = read_vectors(embed_catalog(catalog, checkpoint, tmp_path / "emb.parquet",
                                        normalize=normalize, progress=False)).vectors
    photos = load_catalog(catalog).images[:7]  # (7, 3, 16, 16): PIL never resized these
    encode = image_encoder(checkpoint, normalize=normalize, batch_size=3)
    h = encode(photos)
    assert h.dtype == np.float32 and h.shape == (7, 32)
    np.testing.assert_allclose(h, stored[:7], atol=0.02 * np.abs(stored[:7]).max())
    np.testing.assert_array_equal(encode(photos.numpy()), h)
    gray = load_catalog(catalog, channels=1).images[:7]
    np.testing.assert_array_equal(encode(gray), encode(gray.expand(-1, 3, -1, -1)))


def test_the_encoder_says_what_images_it_takes(shop_and_checkpoint):
    encode = image_encoder(shop_and_checkpoint[1])
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, C, H, W\), got torch.float32"):
        encode(torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(3, 12, 12\)"):
        encode(torch.zeros(3, 12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"1 \(gray\) or 3 \(RGB\) channels, got shape \(2, 4,"):
        encode(torch.zeros(2, 4, 12, 12, dtype=torch.uint8))  # RGBA
