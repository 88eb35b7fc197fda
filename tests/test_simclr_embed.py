"""embed_catalog: one frozen h per catalog product, in the embeddings Parquet contract."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from simclr_vision.data import load_catalog
from simclr_vision.embed import embed_catalog
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

