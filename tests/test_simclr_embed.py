"""embed_catalog: one frozen h per catalog product, in the embeddings Parquet contract."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from simclr_vision.data import load_catalog
from simclr_vision.embed import METADATA_KEY, embed_catalog, write_embeddings
from simclr_vision.model import encode_images
from simclr_vision.pretrain import PretrainConfig, load_simclr, pretrain
from twotower.synthetic import ShopConfig, make_shop, write_shop


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


def test_write_embeddings_refuses_misaligned_rows_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="one \\(dim,\\) vector per id"):
        write_embeddings(["a", "b"], np.zeros((3, 4)), tmp_path / "e.parquet", {})
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_named(shop_and_checkpoint, tmp_path):
    catalog, _ = shop_and_checkpoint
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        embed_catalog(catalog, tmp_path / "nope.pt", tmp_path / "e.parquet")
    assert list(tmp_path.iterdir()) == []
