"""simclr_vision.data: every source gives uint8 (N, C, H, W), and every bad input a DataError
that names the file (and the column, row or value where there is one)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from simclr_vision.data import (
    FASHION_MNIST_DIRS,
    FASHION_MNIST_SAMPLE,
    ImageSet,
    find_fashion_mnist,
    load_catalog,
    load_folder,
    load_idx,
    load_images,
    load_npz,
    load_sample,
)
from twotower.files import DataError

RNG = np.random.default_rng(0)


def _pixels(h: int = 6, w: int = 5, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buf, fmt)
    return buf.getvalue()


def _broken_png() -> bytes:
    """A PNG whose pixel data goes on in a second chunk with a garbage type: PIL meets it while
    decoding and raises SyntaxError ("broken PNG file"), not OSError."""
    png = _encode(_pixels(8, 8))
    start = png.index(b"IDAT") - 4  # the chunk: length (4), type (4), data, CRC (4)
    length = int.from_bytes(png[start : start + 4], "big")
    data = png[start + 8 : start + 8 + length]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    half = length // 2
    garbled = chunk(b"IDAT", data[:half]) + chunk(b"\x00\x01\x02\x03", data[half:])
    return png[:start] + garbled + png[start + 12 + length :]


def _write_idx(path, array: np.ndarray, *, compress: bool) -> None:
    """LeCun's idx: 0, 0, type 0x08, ndim, big-endian uint32 dims, then the bytes."""
    data = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _idx_folder(folder, *, n: int = 4, compress: bool = True):
    images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return images, labels


def _catalog(path, item_ids, **columns) -> None:
    pq.write_table(pa.table({"item_id": item_ids, **columns}), path)


# ---------------------------------------------------------------------------------------------
# idx


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_round_trip(tmp_path, compress, split):
    images, labels = _idx_folder(tmp_path, compress=compress)
    data = load_idx(tmp_path, split)
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 1, 28, 28)
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.ids is None and len(data) == 4


def test_real_fashion_mnist():
    folder = find_fashion_mnist()
    if folder is None:
        pytest.skip(f"Fashion-MNIST not found in {', '.join(map(str, FASHION_MNIST_DIRS))}")
    train, test = load_idx(folder, "train"), load_idx(folder, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == test.images.dtype == torch.uint8
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # balanced classes
    assert train.labels[0] == 9  # the first training image is an ankle boot
    assert test.labels[0] == 9


def test_the_shipped_sample_is_fashion_mnists_test_split_with_its_licence():
    sample = load_sample()
    assert sample.images.shape == (10000, 1, 28, 28) and sample.images.dtype == torch.uint8
    assert torch.bincount(sample.labels).tolist() == [1000] * 10  # balanced classes
    assert sample.labels[0] == 9  # the first test image is an ankle boot
    licence = (FASHION_MNIST_SAMPLE / "LICENSE").read_text()
    assert "MIT" in licence and "Zalando SE" in licence
    digests = {path.name: hashlib.md5(path.read_bytes()).hexdigest()
               for path in FASHION_MNIST_SAMPLE.glob("*.gz")}
    assert digests == {"t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
                       "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01"}


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_names_the_file(tmp_path, compress):
    _idx_folder(tmp_path, compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=name):
        load_idx(tmp_path)


def test_idx_with_extra_bytes_or_bad_magic_names_the_file(tmp_path):
    _idx_folder(tmp_path, compress=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\x00")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*need 4 data bytes, found 5"):
        load_idx(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x0d\x03" + images.read_bytes()[4:])  # float32 type code
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*type 0x0d"):
        load_idx(tmp_path)


def test_idx_missing_file_names_folder_and_file(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}.*t10k-images-idx3-ubyte"):
        load_idx(tmp_path, "test")


def test_idx_label_count_must_match(tmp_path):
    _idx_folder(tmp_path, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3), compress=True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: 3 labels .* for 4 images"):
        load_idx(tmp_path)


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_layouts_give_the_same_nchw(tmp_path):
    nchw = RNG.integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    np.savez(tmp_path / "last.npz", x=nchw.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "first.npz", x=nchw)
    np.savez(tmp_path / "gray.npz", x=nchw[:, 0].astype(np.int64))  # ints in 0..255 accepted
    assert torch.equal(load_npz(tmp_path / "last.npz").images, torch.from_numpy(nchw))
    assert torch.equal(load_npz(tmp_path / "first.npz").images, torch.from_numpy(nchw))
    gray = load_npz(tmp_path / "gray.npz")
    assert gray.images.dtype == torch.uint8
    assert torch.equal(gray.images, torch.from_numpy(nchw[:, :1]))
    assert gray.labels is None


def test_npz_keys_are_detected_when_unambiguous(tmp_path):
    x = RNG.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", pixels=x, classes=np.array([3, 1, 2, 0]), mean=np.zeros(3))
    data = load_npz(tmp_path / "a.npz")
    assert data.images.shape == (4, 1, 8, 8) and data.labels.tolist() == [3, 1, 2, 0]


def test_npz_ambiguous_keys_name_file_and_keys(tmp_path):
    x = RNG.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2))
    with pytest.raises(DataError, match=r"mnist\.npz.*'x_train'.*'x_test'.*images_key="):
        load_npz(path)
    test = load_npz(path, images_key="x_test")  # labels follow from the length
    assert test.images.shape == (2, 1, 8, 8) and test.labels.tolist() == [0, 1]
    np.savez(path, x=x, a=np.arange(4), b=np.arange(4))
    with pytest.raises(DataError, match=r"mnist\.npz.*'a'.*'b'.*labels_key="):
        load_npz(path)
    assert load_npz(path, labels_key="b").labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"mnist\.npz.*'nope'"):
        load_npz(path, labels_key="nope")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), "float32; convert them to uint8"),
        (np.full((2, 4, 4), 300), "values in 300..300"),
        (np.zeros((2, 4, 5, 7), np.uint8), "cannot tell the channel axis"),
        (np.zeros((2, 3, 5, 3), np.uint8), "cannot tell the channel axis"),
        (np.zeros((2, 4), np.uint8), "no array fits"),
    ],
)
def test_npz_bad_images_name_file(tmp_path, array, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=array)
    with pytest.raises(DataError, match=rf"bad\.npz.*{message}"):
        load_npz(path)


def test_npz_not_an_archive_names_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"x\.npz.*not an \.npz archive"):
        load_npz(path)


# ---------------------------------------------------------------------------------------------
# image folders


def test_flat_folder_has_ids_and_no_labels(tmp_path):
    a, b = _pixels(), _pixels()
    (tmp_path / "b.png").write_bytes(_encode(b))
    (tmp_path / "a.png").write_bytes(_encode(a))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_folder(tmp_path)
    assert data.ids == ["a.png", "b.png"] and data.labels is None and data.classes is None
    assert data.images.shape == (2, 3, 6, 5)
    assert torch.equal(data.images[0], torch.from_numpy(a).permute(2, 0, 1))


def test_class_subfolders_give_sorted_classes_and_labels(tmp_path):
    for name, count in [("shoe", 2), ("bag", 1), ("coat", 3)]:
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{i}.png").write_bytes(_encode(_pixels()))
    (tmp_path / "empty").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.png").write_bytes(_encode(_pixels()))
    data = load_folder(tmp_path, progress=True)
    assert data.classes == ("bag", "coat", "shoe")
    assert data.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert data.ids[:2] == ["bag/0.png", "coat/0.png"]


def test_folder_mixing_top_level_and_subfolders_names_it(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.png").write_bytes(_encode(_pixels()))
    (tmp_path / "top.png").write_bytes(_encode(_pixels()))
    with pytest.raises(DataError, match=rf"{tmp_path}: .*'top.png'"):
        load_folder(tmp_path)


def test_empty_folder_names_it(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}: no image files"):
        load_folder(tmp_path)


def test_size_resizes_and_channels_converts(tmp_path):
    (tmp_path / "big.png").write_bytes(_encode(_pixels(40, 30)))
    (tmp_path / "gray.jpg").write_bytes(_encode(_pixels(9, 12, 1), "JPEG"))
    rgb = load_folder(tmp_path, size=16)
    assert rgb.images.shape == (2, 3, 16, 16)
    gray = rgb.images[1].int()
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # L → RGB repeats
    assert load_folder(tmp_path, size=8, channels=1).images.shape == (2, 1, 8, 8)


def test_mismatched_shapes_without_size_name_the_file(tmp_path):
    (tmp_path / "a.png").write_bytes(_encode(_pixels(6, 5)))
    (tmp_path / "b.png").write_bytes(_encode(_pixels(7, 5)))
    with pytest.raises(DataError, match=r"b\.png: image is 7x5 .* first is 6x5.*size="):
        load_folder(tmp_path)
    with pytest.raises(DataError, match=r"b\.png"):  # a shape is no bad image: still raised
        load_folder(tmp_path, skip_bad=True)


def test_size_if_mixed_resizes_a_mixed_folder_as_size_would(tmp_path):
    # Several same-shape images before the odd one, so decoding restarts midway; the large
    # JPEG is decoded at a reduced scale (draft) when resized, which the restart must repeat.
    for name in ("a.png", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(_encode(_pixels(20, 20), "JPEG" if "jpg" in name else "PNG"))
    (tmp_path / "d.png").write_bytes(b"junk")
    (tmp_path / "e.jpg").write_bytes(_encode(_pixels(96, 64), "JPEG"))
    mixed = load_folder(tmp_path, size_if_mixed=8, skip_bad=True)
    resized = load_folder(tmp_path, size=8, skip_bad=True)
    assert mixed.images.shape == (4, 3, 8, 8) and torch.equal(mixed.images, resized.images)
    assert mixed.ids == ["a.png", "b.jpg", "c.png", "e.jpg"] and mixed.skipped == ("d.png",)


def test_size_if_mixed_keeps_one_shape_as_it_is(tmp_path):
    pixels = [_pixels(20, 20), _pixels(20, 20)]
    for i, p in enumerate(pixels):
        (tmp_path / f"{i}.png").write_bytes(_encode(p))
    data = load_folder(tmp_path, size_if_mixed=8)
    assert torch.equal(data.images, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))
    assert load_folder(tmp_path, size=8, size_if_mixed=16).images.shape == (2, 3, 8, 8)


def test_corrupt_image_names_it_or_is_skipped(tmp_path):
    good = _pixels()
    (tmp_path / "a.png").write_bytes(_encode(good))
    (tmp_path / "b.png").write_bytes(_encode(_pixels())[:30])  # truncated
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    (tmp_path / "d.png").write_bytes(_broken_png())
    with pytest.raises(DataError, match=r"b\.png: unreadable image"):
        load_folder(tmp_path)
    data = load_folder(tmp_path, skip_bad=True)
    assert data.skipped == ("b.png", "c.jpg", "d.png") and data.ids == ["a.png"]
    assert len(data) == 1
    assert torch.equal(data.images[0], torch.from_numpy(good).permute(2, 0, 1))


def test_broken_png_chunk_names_the_file(tmp_path):
    (tmp_path / "a.png").write_bytes(_encode(_pixels()))
    (tmp_path / "b.png").write_bytes(_broken_png())
    with pytest.raises(DataError, match=r"b\.png: unreadable image: broken PNG file"):
        load_folder(tmp_path)


def test_dangling_symlink_is_an_unreadable_image_not_a_missing_one(tmp_path):
    (tmp_path / "a.png").write_bytes(_encode(_pixels()))
    (tmp_path / "b.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DataError, match=r"b\.png: unreadable image"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, skip_bad=True).skipped == ("b.png",)


def test_all_images_bad_names_the_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=rf"{tmp_path}: none of the 1 images"):
        load_folder(tmp_path, skip_bad=True)


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        load_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="size"):
        load_folder(tmp_path, size=0)
    with pytest.raises(ValueError, match="size_if_mixed"):
        load_images(tmp_path, size_if_mixed=-1)
    with pytest.raises(ValueError, match="split"):
        load_idx(tmp_path, "valid")


# ---------------------------------------------------------------------------------------------
# Parquet catalogs


def test_catalog_with_image_paths_png_and_jpeg(tmp_path):
    a, b = _pixels(), _pixels()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_encode(a))
    (tmp_path / "img" / "b.jpg").write_bytes(_encode(b, "JPEG"))
    _catalog(tmp_path / "catalog.parquet", [10, 11], image_path=["img/a.png", "img/b.jpg"])
    data = load_catalog(tmp_path / "catalog.parquet")
    assert data.ids == ["10", "11"] and data.labels is None
    assert torch.equal(data.images[0], torch.from_numpy(a).permute(2, 0, 1))
    jpeg_error = (data.images[1].float() - torch.from_numpy(b).permute(2, 0, 1).float()).abs()
    assert jpeg_error.mean() < 60  # lossy, but the same picture


def test_catalog_with_image_bytes_png_and_jpeg(tmp_path):
    a, b = _pixels(), _pixels(6, 5, 1)
    images = [_encode(a), _encode(b, "JPEG")]
    _catalog(tmp_path / "c.parquet", ["x", "y"], image=pa.array(images, pa.binary()))
    data = load_catalog(tmp_path / "c.parquet", channels=1, size=4)
    assert data.ids == ["x", "y"] and data.images.shape == (2, 1, 4, 4)
    full = load_catalog(tmp_path / "c.parquet")
    assert torch.equal(full.images[0], torch.from_numpy(a).permute(2, 0, 1))


def test_catalog_corrupt_image_names_file_row_and_item(tmp_path):
    path = tmp_path / "c.parquet"
    _catalog(path, ["x", "y", "z", "w"], image=[_encode(_pixels()), b"junk", None, _broken_png()])
    with pytest.raises(DataError, match=r"c\.parquet, column 'image': row 1 \(item_id 'y'\)"
                       r": unreadable image: cannot identify image file the stored bytes$"):
        load_catalog(path)
    data = load_catalog(path, skip_bad=True)
    assert data.ids == ["x"] and data.skipped == ("y", "z", "w")


def test_catalog_corrupt_image_file_names_its_image_path(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.png").write_bytes(_broken_png())  # PIL's message names no file
    _catalog(tmp_path / "c.parquet", ["y"], image_path=["img/b.png"])
    with pytest.raises(DataError, match=r"row 0 \(item_id 'y', image_path 'img/b\.png'\): unre"):
        load_catalog(tmp_path / "c.parquet")


def test_catalog_of_mixed_bytes_streams_again_at_size_if_mixed(tmp_path):
    path = tmp_path / "c.parquet"
    images = [_encode(_pixels(20, 20)), _encode(_pixels(24, 32)), _encode(_pixels(20, 20))]
    pq.write_table(pa.table({"item_id": [1, 2, 3], "image": images}), path, row_group_size=1)
    with pytest.raises(DataError, match=r"row 1 \(item_id '2'\): image is 24x32 .*size_if_mixed="):
        load_catalog(path)
    mixed = load_images(path, size_if_mixed=16)
    assert mixed.ids == ["1", "2", "3"] and mixed.images.shape == (3, 3, 16, 16)
    assert torch.equal(mixed.images, load_catalog(path, size=16).images)


def test_catalog_missing_file_is_a_bad_image(tmp_path):
    path = tmp_path / "c.parquet"
    _catalog(path, [1], image_path=["gone.png"])
    with pytest.raises(DataError, match=r"c\.parquet.*row 0 \(item_id '1', image_path 'gone\.png"):
        load_catalog(path)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_catalog_paths_escaping_the_folder_are_refused(tmp_path, kind):
    outside = tmp_path / "secret.png"
    outside.write_bytes(_encode(_pixels()))
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "ok.png").write_bytes(_encode(_pixels()))
    value = {"dotdot": "../secret.png", "absolute": str(outside), "symlink": "link.png"}[kind]
    if kind == "symlink":
        os.symlink(outside, shop / "link.png")
    _catalog(shop / "c.parquet", [1, 2], image_path=["ok.png", value])
    with pytest.raises(DataError, match=rf"c\.parquet.*row 1.*{value}"):
        load_catalog(shop / "c.parquet", skip_bad=True)


def test_catalog_path_that_cannot_be_resolved_is_refused(tmp_path):
    _catalog(tmp_path / "c.parquet", [1], image_path=["a\x00.png"])
    with pytest.raises(DataError, match=r"c\.parquet.*row 0: cannot resolve.*a\\x00\.png"):
        load_catalog(tmp_path / "c.parquet", skip_bad=True)


def test_catalog_symlink_inside_the_folder_is_fine(tmp_path):
    (tmp_path / "real.png").write_bytes(_encode(_pixels()))
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    _catalog(tmp_path / "c.parquet", [1], image_path=["alias.png"])
    assert len(load_catalog(tmp_path / "c.parquet")) == 1


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"sku": [1], "image_path": ["a.png"]}, r"found columns \['sku', 'image_path'\]"),
        ({"item_id": [1], "title": ["t"]}, r"found columns \['item_id', 'title'\]"),
        ({"item_id": [1], "image_path": ["a"], "image": [b"x"]}, "exactly one of"),
    ],
)
def test_catalog_missing_columns_name_file_and_columns(tmp_path, columns, message):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match=rf"c\.parquet: .*{message}"):
        load_catalog(path)


def test_catalog_wrong_column_types_name_the_column(tmp_path):
    path = tmp_path / "c.parquet"
    _catalog(path, [1], image=["a.png"])  # a string where bytes belong
    with pytest.raises(DataError, match=r"c\.parquet, column 'image': must be .*binary"):
        load_catalog(path)
    _catalog(path, [1.5], image_path=["a.png"])
    with pytest.raises(DataError, match=r"c\.parquet, column 'item_id': .*double"):
        load_catalog(path)


def test_catalog_null_and_duplicate_ids(tmp_path):
    path = tmp_path / "c.parquet"
    _catalog(path, ["a", None], image_path=["a.png", "b.png"])
    with pytest.raises(DataError, match=r"c\.parquet, column 'item_id': null item_id at row 1"):
        load_catalog(path)
    _catalog(path, ["a", "b", "a"], image_path=["a.png", "b.png", "c.png"])
    with pytest.raises(DataError, match=r"c\.parquet, column 'item_id': .*rows 0 and 2.*'a'"):
        load_catalog(path)


def test_not_parquet_names_the_file(tmp_path):
    path = tmp_path / "c.parquet"
    path.write_text("item_id,image_path\n")
    with pytest.raises(DataError, match=r"c\.parquet: cannot read Parquet"):
        load_catalog(path)


# ---------------------------------------------------------------------------------------------
# load_images and ImageSet


def test_load_images_dispatches_on_the_source(tmp_path):
    (tmp_path / "idx").mkdir()
    _idx_folder(tmp_path / "idx")
    assert load_images(tmp_path / "idx", split="test").images.shape == (4, 1, 28, 28)
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 5, 5, 3), np.uint8))
    assert load_images(tmp_path / "a.npz").images.shape == (3, 3, 5, 5)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_encode(_pixels()))
    assert load_images(tmp_path / "imgs", channels=1).images.shape == (1, 1, 6, 5)
    (tmp_path / "imgs" / "b.png").write_bytes(b"junk")
    assert load_images(tmp_path / "imgs", skip_bad=True).skipped == ("b.png",)
    _catalog(tmp_path / "c.parquet", [7], image=[_encode(_pixels())])
    assert load_images(tmp_path / "c.parquet", size=3).images.shape == (1, 3, 3, 3)


def test_load_images_converts_arrays_like_files(tmp_path):
    _idx_folder(tmp_path)
    data = load_images(tmp_path, channels=3, size=14)
    assert data.images.shape == (4, 3, 14, 14) and data.labels.shape == (4,)
    gray = np.full((2, 1, 4, 4), 200, np.uint8)
    np.savez(tmp_path / "g.npz", x=gray)
    assert torch.equal(
        load_images(tmp_path / "g.npz", channels=3, size=2).images,
        torch.full((2, 3, 2, 2), 200, dtype=torch.uint8),
    )
    rgb = np.zeros((1, 3, 2, 2), np.uint8)
    rgb[:, 0] = 255  # pure red: luma 0.299 · 255 = 76.2
    np.savez(tmp_path / "r.npz", x=rgb)
    assert load_images(tmp_path / "r.npz", channels=1).images.unique().tolist() == [76]


def test_load_images_rejects_unknown_sources_and_lone_test_split(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match=r"a\.csv: unknown kind"):
        load_images(tmp_path / "a.csv")
    with pytest.raises(DataError, match=r"missing\.npz: no such file"):
        load_images(tmp_path / "missing.npz")
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 5, 5), np.uint8))
    with pytest.raises(DataError, match=r"a\.npz: split='test' needs an idx folder"):
        load_images(tmp_path / "a.npz", split="test")


def test_image_set_checks_its_fields():
    images = torch.zeros(2, 1, 3, 3, dtype=torch.uint8)
    assert len(ImageSet(images)) == 2
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float())
    with pytest.raises(ValueError, match="labels"):
        ImageSet(images, labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="ids"):
        ImageSet(images, ids=["a"])
