"""Image sources → one uint8 tensor (N, C, H, W), with labels and ids where the source has them.

Four sources, one result (`ImageSet`):

- **idx** (`load_idx`): the MNIST / Fashion-MNIST files, gzip or plain; (N, 1, H, W).
- **npz** (`load_npz`): a NumPy archive holding an integer image array (N, H, W), (N, H, W, C)
  or (N, C, H, W) and optionally a label vector; keys are found when only one fits.
- **image folder** (`load_folder`): image files at the top level, or in class subfolders whose
  sorted names become the labels.
- **catalog** (`load_catalog`): the Parquet product catalog of DESIGN.md: `item_id` and either
  `image_path` (relative to the catalog's folder) or `image` (PNG/JPEG bytes).

`load_images` picks one of them from what `source` is. Image files and bytes are decoded with
PIL into a preallocated tensor, converted to `channels` (default 3: RGB, so grayscale and colour
catalogs give one shape) and resized to `size`×`size` with PIL's antialiased bilinear filter
(the aspect ratio is not kept). `size_if_mixed` resizes only a source whose images differ in
shape, so one of a single shape keeps its pixels while a real, mixed catalog still loads. Every
bad input raises `twotower.files.DataError` naming the file, and for catalogs the row and
item_id; `skip_bad=True` skips unreadable images instead and names them in `ImageSet.skipped`.
Rejections that are not about a bad image (an `image_path` escaping the catalog's folder,
images of different shapes without `size` or `size_if_mixed`) raise even then.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from twotower.files import DataError
from twotower.progress import progress as show_progress

__all__ = [
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_SAMPLE",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "conform_images",
    "find_fashion_mnist",
    "load_catalog",
    "load_folder",
    "load_idx",
    "load_images",
    "load_npz",
    "load_sample",
]

Split = Literal["train", "test"]
PathLike = str | os.PathLike[str]

_REPO = Path(__file__).resolve().parents[1]  # the checkout holding simclr_vision/
FASHION_MNIST_DIRS: tuple[Path, ...] = (
    _REPO.parent / "shared" / "data" / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),  # Debian's dataset-fashion-mnist package
)
"""Where `find_fashion_mnist` looks: `../shared/data` beside the checkout, then Debian's copy."""

FASHION_MNIST_SAMPLE = Path(__file__).resolve().with_name("fashion_mnist")
"""The Fashion-MNIST test split (10,000 images, 4.4 MB) shipped inside the package, with its
MIT licence (`LICENSE`) and provenance (`README.md`): the demo's products on any machine."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File name endings `load_folder` reads (case-insensitive); other files are ignored."""

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_MODES = {1: "L", 3: "RGB"}
# What PIL raises for a bad image: OSError mostly, SyntaxError for a broken PNG chunk met while
# decoding (PngImagePlugin.ChunkStream.read), DecompressionBombError for absurd dimensions.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_BYTES_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")  # how PIL names bytes
_TEXT_TYPES = frozenset({"string", "large_string", "string_view"})
_BYTES_TYPES = frozenset({"binary", "large_binary", "binary_view"})
_RESIZE_CHUNK = 4096  # images per block when converting arrays: bounds the float copy


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class ImageSet:
    """Images of one source and what it says about each of them.

    images: uint8 (N, C, H, W). labels: int64 (N,) class indices, or None. ids: N item ids
    (catalog) or file paths relative to the folder (folder), or None. skipped: ids of the
    unreadable images left out with `skip_bad=True`. classes: the class name of each label
    (folders), or None.
    """

    images: Tensor
    labels: Tensor | None = None
    ids: list[str] | None = None
    skipped: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (n,)
        ):
            raise ValueError(
                f"labels must be int64 ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"ids must have one entry per image: {len(self.ids)} vs {n}")

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------------------------------
# idx: LeCun's MNIST format, also Fashion-MNIST's.


def find_fashion_mnist() -> Path | None:
    """The first of `FASHION_MNIST_DIRS` holding the four Fashion-MNIST idx .gz files, or None."""
    names = [
        f"{prefix}-{kind}.gz"
        for prefix in _IDX_PREFIX.values()
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    for folder in FASHION_MNIST_DIRS:
        if all((folder / name).is_file() for name in names):
            return folder
    return None


def load_sample() -> ImageSet:
    """The shipped Fashion-MNIST sample: 10,000 labelled (1, 28, 28) product photos."""
    return load_idx(FASHION_MNIST_SAMPLE, "test")


def load_idx(folder: PathLike, split: Split = "train") -> ImageSet:
    """Images and labels of one split of an MNIST-style idx folder → (N, 1, H, W) uint8.

    Reads `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` (split "train") or the
    `t10k-` pair (split "test"), each gzip-compressed (`.gz`) or plain.
    """
    folder = Path(folder)
    images_path = _idx_file(folder, split, "images-idx3-ubyte")
    labels_path = _idx_file(folder, split, "labels-idx1-ubyte")
    images = _read_idx(images_path, ndim=3)  # (N, H, W)
    labels = _read_idx(labels_path, ndim=1)  # (N,)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels.shape[0]} labels in {labels_path.name} for {images.shape[0]} images",
            path=images_path,
        )
    return ImageSet(images=images[:, None], labels=labels.long())


def _idx_file(folder: Path, split: str, kind: str) -> Path:
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = f"{_IDX_PREFIX[split]}-{kind}"
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"no idx file {name}.gz or {name} for split {split!r}", path=folder)


def _read_idx(path: Path, *, ndim: int) -> Tensor:
    """One idx file of unsigned bytes with `ndim` dimensions → uint8 tensor of those dims.

    Header: two zero bytes, the data type code (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32. The data must fill the dims exactly.
    """
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00":
                raise DataError(f"not an idx file (header {header.hex()!r})", path=path)
            if header[2] != 0x08 or header[3] != ndim:
                raise DataError(
                    f"expected idx data type 0x08 (unsigned byte) with {ndim} dimensions, "
                    f"found type 0x{header[2]:02x} with {header[3]}",
                    path=path,
                )
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError("truncated idx header", path=path)
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            data = _read_rest(f)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read idx file: {error}", path=path) from error
    expected = math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"idx dims {dims} need {expected} data bytes, found {len(data)} "
            "(truncated or corrupt file)",
            path=path,
        )
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).reshape(dims))


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """Open for reading, through gzip when the file starts with gzip's magic bytes."""
    with path.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _read_rest(f: BinaryIO) -> bytearray:
    """The rest of a stream in a growing bytearray: writable, so numpy and torch share it."""
    data = bytearray()
    while chunk := f.read(1 << 24):
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------
# npz arrays.


def load_npz(
    path: PathLike, *, images_key: str | None = None, labels_key: str | None = None
) -> ImageSet:
    """An integer image array, and optionally its labels, from a NumPy `.npz` archive.

    Images may be (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, any integer dtype with
    values in 0..255 (float arrays are refused: 0..1 and 0..255 cannot be told apart). Without
    `images_key` the one array with 3 or 4 dimensions is taken; without `labels_key` the one
    integer vector of length N, if any. Several candidates raise DataError listing them.
    """
    path = Path(path)
    arrays = _read_npz(path)
    images_key = images_key or _pick_key(path, arrays, "images_key", _is_image_array)
    if images_key not in arrays or not _is_image_array(arrays[images_key]):
        raise DataError(
            f"no image array {images_key!r} with 3 or 4 dimensions; "
            f"found {_describe_arrays(arrays)}",
            path=path,
        )
    images = _nchw(path, images_key, arrays.pop(images_key))
    n = images.shape[0]
    if labels_key is None:
        labels_key = _pick_key(
            path, arrays, "labels_key", lambda a: _is_label_vector(a, n), optional=True
        )
    labels = None
    if labels_key is not None:
        if labels_key not in arrays or not _is_label_vector(arrays[labels_key], n):
            raise DataError(
                f"no integer label vector {labels_key!r} of length {n}; "
                f"found {_describe_arrays(arrays)}",
                path=path,
            )
        labels = torch.from_numpy(arrays[labels_key].astype(np.int64))
    return ImageSet(images=images, labels=labels)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError("not an .npz archive (missing, or not a zip file)", path=path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read .npz archive: {error}", path=path) from error


def _is_image_array(array: np.ndarray) -> bool:
    return array.ndim in (3, 4)


def _is_label_vector(array: np.ndarray, n: int) -> bool:
    return array.ndim == 1 and array.shape[0] == n and np.issubdtype(array.dtype, np.integer)


def _pick_key(
    path: Path,
    arrays: dict[str, np.ndarray],
    argument: str,
    fits: Callable[[np.ndarray], bool],
    *,
    optional: bool = False,
) -> str | None:
    """The one key whose array fits; DataError when several fit, or none and it is required."""
    keys = [key for key, array in arrays.items() if fits(array)]
    if len(keys) == 1:
        return keys[0]
    if not keys and optional:
        return None
    what = "several arrays fit" if keys else "no array fits"
    raise DataError(
        f"cannot choose {argument.removesuffix('_key')}: {what}; found "
        f"{_describe_arrays(arrays)}; pass {argument}= to load_npz",
        path=path,
    )


def _describe_arrays(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{key!r} {a.dtype}{a.shape}" for key, a in arrays.items()) or "no arrays"


def _nchw(path: Path, key: str, array: np.ndarray) -> Tensor:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) integer array → uint8 (N, C, H, W)."""
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"images {key!r} are {array.dtype}; convert them to uint8 in 0..255", path=path
        )
    if array.shape[0] == 0:
        raise DataError(f"images {key!r} hold no image: shape {array.shape}", path=path)
    if array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(f"images {key!r} have values in {low}..{high}, not 0..255", path=path)
        array = array.astype(np.uint8)
    images = torch.from_numpy(array)
    if images.ndim == 3:
        return images[:, None]
    channels_first, channels_last = images.shape[1] in _MODES, images.shape[3] in _MODES
    if channels_last and not channels_first:
        return images.permute(0, 3, 1, 2).contiguous()
    if channels_first and not channels_last:
        return images
    raise DataError(
        f"cannot tell the channel axis of images {key!r} {tuple(images.shape)}: expected "
        "(N, H, W, C) or (N, C, H, W) with C = 1 or 3",
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Image folders and Parquet catalogs: decoded one by one with PIL into a preallocated tensor.


def load_folder(
    folder: PathLike,
    *,
    size: int | None = None,
    size_if_mixed: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImageSet:
    """Every image file in `folder` (suffixes in `IMAGE_SUFFIXES`; names starting with "." skipped).

    Either all images sit at the top level (no labels), or all in class subfolders (searched
    recursively), whose sorted names are `classes` and give the labels. ids are the paths
    relative to `folder`, "/"-separated. `channels` defaults to 3.
    """
    channels = _check_options(channels, size, size_if_mixed)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", path=folder)
    files, labels, classes = _folder_files(folder)
    ids = [file.relative_to(folder).as_posix() for file in files]
    images, kept = _decode_all(
        lambda: files,
        len(files),
        channels=channels,
        size=size,
        size_if_mixed=size_if_mixed,
        skip_bad=skip_bad,
        progress=progress,
        origin=folder,
        fail=lambda i, reason: DataError(reason, path=files[i]),
    )
    return _image_set(images, kept, ids, labels, classes)


def load_catalog(
    path: PathLike,
    *,
    size: int | None = None,
    size_if_mixed: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImageSet:
    """The images of a Parquet product catalog, in row order; ids are the item_ids as strings.

    Columns: `item_id` (int or string; no nulls, no duplicates) and exactly one of `image_path`
    (string, relative to the catalog's folder) or `image` (PNG/JPEG bytes). An `image_path`
    that is absolute, has a `..` part, or resolves (through symlinks) outside the catalog's
    folder is refused before any image is read, `skip_bad` or not: it is a request to read a
    file we must not, not a bad image. A null image or path, a missing file or undecodable bytes
    is a bad image; its error names the row, the item_id and any image_path. `image` bytes are
    streamed in row batches, so the catalog's bytes are never all in memory at once. `channels`
    defaults to 3.
    """
    channels = _check_options(channels, size, size_if_mixed)
    path = Path(path)
    catalog = _open_parquet(path)
    column = _image_column(path, catalog.schema_arrow)
    item_ids = _item_ids(path, catalog)
    if not item_ids:
        raise DataError("the catalog has no rows", path=path)
    paths = catalog.read(columns=[column]).column(0).to_pylist() if column == "image_path" else None
    resolved = None if paths is None else _safe_paths(path, paths)  # refused before any decode

    def fail(i: int, reason: str) -> DataError:
        image = "" if paths is None else f", image_path {paths[i]!r}"  # PIL may not name it
        return DataError(f"row {i} (item_id {item_ids[i]!r}{image}): {reason}", path=path,
                         column=column)

    images, kept = _decode_all(
        lambda: _stream_bytes(catalog, column) if resolved is None else resolved,
        len(item_ids),
        channels=channels,
        size=size,
        size_if_mixed=size_if_mixed,
        skip_bad=skip_bad,
        progress=progress,
        origin=path,
        fail=fail,
    )
    return _image_set(images, kept, item_ids, None, None)


def _folder_files(folder: Path) -> tuple[list[Path], Tensor | None, tuple[str, ...] | None]:
    """(files, labels, classes) of an image folder, flat or with class subfolders."""
    top = _image_files(folder, folder.iterdir())
    class_files = {
        sub.name: files
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and not sub.name.startswith(".")
        if (files := _image_files(sub, sub.rglob("*")))
    }
    if top and class_files:
        raise DataError(
            f"images both at the top level (e.g. {top[0].name!r}) and in subfolders "
            f"{sorted(class_files)}; put all of them in class subfolders or all at the top",
            path=folder,
        )
    if top:
        return top, None, None
    if not class_files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})", path=folder)
    classes = tuple(class_files)
    files = [file for name in classes for file in class_files[name]]
    counts = torch.tensor([len(class_files[name]) for name in classes])
    labels = torch.repeat_interleave(torch.arange(len(classes)), counts)  # (N,) int64
    return files, labels, classes


def _image_files(root: Path, paths: Iterable[Path]) -> list[Path]:
    """The image files among `paths`, sorted; hidden ones (a part of the path under `root`
    starting with ".", e.g. `.ipynb_checkpoints/`) left out. A dangling symlink is kept: it is
    an image that cannot be read, for the decode loop to report or skip, not one to drop."""
    return sorted(
        p
        for p in paths
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot read Parquet catalog: {error}", path=path) from error


def _image_column(path: Path, schema: pa.Schema) -> str:
    """'image_path' or 'image', whichever the catalog has, after checking names and types."""
    found = [name for name in ("image_path", "image") if name in schema.names]
    if "item_id" not in schema.names or len(found) != 1:
        raise DataError(
            "a catalog needs 'item_id' and exactly one of 'image_path' or 'image'; "
            f"found columns {schema.names}",
            path=path,
        )
    column = found[0]
    kind = str(schema.field(column).type)
    allowed = _TEXT_TYPES if column == "image_path" else _BYTES_TYPES
    if kind not in allowed:
        raise DataError(
            f"must be {' or '.join(sorted(allowed))}, got {kind}", path=path, column=column
        )
    return column


def _item_ids(path: Path, catalog: pq.ParquetFile) -> list[str]:
    """The item_id column as strings, after checking its type, nulls and duplicates."""
    kind = catalog.schema_arrow.field("item_id").type
    if not (pa.types.is_integer(kind) or str(kind) in _TEXT_TYPES):
        raise DataError(f"must be integer or string, got {kind}", path=path, column="item_id")
    values = catalog.read(columns=["item_id"]).column(0).to_pylist()
    first_row: dict[object, int] = {}
    for row, value in enumerate(values):
        if value is None:
            raise DataError(f"null item_id at row {row}", path=path, column="item_id")
        if value in first_row:
            raise DataError(
                f"duplicate item_id at rows {first_row[value]} and {row}",
                path=path,
                column="item_id",
                value=value,
            )
        first_row[value] = row
    return [str(value) for value in values]


def _safe_paths(catalog: Path, values: list[str | None]) -> list[Path | None]:
    """Resolve each `image_path` inside the catalog's folder; DataError for one escaping it."""
    root = catalog.parent.resolve()
    resolved: list[Path | None] = []
    for row, value in enumerate(values):
        if value is None:
            resolved.append(None)  # a missing image: the decode loop reports or skips it
            continue
        relative = Path(value)
        try:
            target = (root / relative).resolve()
        except (OSError, ValueError, RuntimeError) as error:  # a null byte, a symlink loop
            raise DataError(
                f"row {row}: cannot resolve image_path: {error}",
                path=catalog,
                column="image_path",
                value=value,
            ) from error
        if relative.is_absolute() or ".." in relative.parts or not target.is_relative_to(root):
            raise DataError(
                f"row {row}: image_path must stay inside the catalog's folder {root}",
                path=catalog,
                column="image_path",
                value=value,
            )
        resolved.append(target)
    return resolved


def _stream_bytes(catalog: pq.ParquetFile, column: str) -> Iterator[bytes | None]:
    for batch in catalog.iter_batches(columns=[column], batch_size=1024):
        yield from batch.column(0).to_pylist()


class _MixedSizes(Exception):
    """Image `index` has another shape than the first: `_decode_into` stops at it."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _decode_all(
    sources: Callable[[], Iterable[Path | bytes | None]],
    n: int,
    *,
    channels: int,
    size: int | None,
    size_if_mixed: int | None,
    skip_bad: bool,
    progress: bool,
    origin: Path,
    fail: Callable[[int, str], DataError],
) -> tuple[Tensor, list[int]]:
    """Decode n images into one uint8 (kept, C, H, W) tensor; return it and the kept indices.

    `sources()` gives the n sources afresh on each call. Without `size` the images keep their
    own shape; at the first image whose shape differs, decoding starts over at
    `size_if_mixed`×`size_if_mixed`, or without it `fail(i, reason)` names that image. Starting
    over decodes exactly what `size=size_if_mixed` would, at the cost of decoding the images
    before the odd one twice.
    """
    decode = partial(_decode_into, n=n, channels=channels, skip_bad=skip_bad,
                     progress=progress, origin=origin, fail=fail)
    try:
        return decode(sources(), size=size)
    except _MixedSizes as mixed:  # leaving the block frees the first tensor, held by its frame
        odd, reason = mixed.index, str(mixed)
    if size_if_mixed is None:
        raise fail(odd, f"{reason}; pass size= or size_if_mixed= to resize every image")
    return decode(sources(), size=size_if_mixed)


def _decode_into(
    sources: Iterable[Path | bytes | None],
    n: int,
    *,
    channels: int,
    size: int | None,
    skip_bad: bool,
    progress: bool,
    origin: Path,
    fail: Callable[[int, str], DataError],
) -> tuple[Tensor, list[int]]:
    """One decoding pass of `_decode_all`; raises _MixedSizes at an image of another shape.

    The tensor is allocated once the first image gives H and W (or from `size`), so no list of
    decoded images is ever held. `fail(i, reason)` builds the error naming source i.
    """
    mode = _MODES[channels]
    out: Tensor | None = None
    view: np.ndarray | None = None  # numpy view of `out`: images are copied in without torch
    kept: list[int] = []
    bar = show_progress(sources, total=n, enabled=progress, desc=origin.name, unit="img")
    for i, source in enumerate(bar):
        try:
            pixels = _decode(source, mode, size)  # (H, W, C)
        except _DECODE_ERRORS as error:
            if skip_bad:
                continue
            reason = _BYTES_REPR.sub("the stored bytes", str(error))  # not "<_io.BytesIO at 0x..>"
            raise fail(i, f"unreadable image: {reason}") from error
        if out is None:
            out = torch.empty((n, channels, *pixels.shape[:2]), dtype=torch.uint8)
            view = out.numpy()
        elif pixels.shape[:2] != out.shape[2:]:
            raise _MixedSizes(
                i,
                f"image is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but the first is "
                f"{out.shape[2]}x{out.shape[3]}",
            )
        view[len(kept)] = pixels.transpose(2, 0, 1)
        kept.append(i)
    if out is None:
        raise DataError(f"none of the {n} images could be read (skip_bad=True)", path=origin)
    return out[: len(kept)], kept


def _decode(source: Path | bytes | None, mode: str, size: int | None) -> np.ndarray:
    """One image file or encoded bytes → uint8 (H, W, C) in `mode`, resized to size×size."""
    if source is None:
        raise ValueError("no image (null value)")
    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
        if size is not None:
            image.draft(mode, (size, size))  # JPEG: decode at a reduced scale ≥ size, far faster
        converted = image.convert(mode)
    if size is not None and converted.size != (size, size):
        converted = converted.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(converted).reshape(converted.height, converted.width, -1)


def _image_set(
    images: Tensor,
    kept: list[int],
    ids: list[str],
    labels: Tensor | None,
    classes: tuple[str, ...] | None,
) -> ImageSet:
    """The ImageSet of the kept images; the ids of the others become `skipped`."""
    if len(kept) == len(ids):
        return ImageSet(images=images, labels=labels, ids=ids, classes=classes)
    kept_set = set(kept)
    return ImageSet(
        images=images,
        labels=None if labels is None else labels[kept],
        ids=[ids[i] for i in kept],
        skipped=tuple(ids[i] for i in range(len(ids)) if i not in kept_set),
        classes=classes,
    )


def _check_options(
    channels: int | None,
    size: int | None,
    size_if_mixed: int | None = None,
    *,
    default: int = 3,
) -> int:
    """Reject bad `channels` / `size` / `size_if_mixed`; return channels with None as `default`."""
    channels = default if channels is None else channels
    if channels not in _MODES:
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    for name, side in (("size", size), ("size_if_mixed", size_if_mixed)):
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {side!r}")
    return channels


# ---------------------------------------------------------------------------------------------
# Dispatch.


def load_images(
    source: PathLike,
    *,
    split: Split = "train",
    size: int | None = None,
    size_if_mixed: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
) -> ImageSet:
    """Load `source`, whichever of the four kinds it is.

    A folder holding the idx files of `split` → `load_idx`; a `.npz` file → `load_npz`; a
    `.parquet` / `.pq` file → `load_catalog`; any other folder → `load_folder`. `split` "test"
    on a source without splits is an error (it would silently give the training images).
    `size` and `channels` apply to every kind: idx and npz arrays are converted here (channels
    by repetition or ITU-R 601 luma, like PIL's "L"; size by antialiased bilinear resizing),
    files as they are decoded; `channels=None` keeps an array's channels. `size_if_mixed`
    (resize only images of differing shapes) and `skip_bad` concern image files only: an
    array holds images of one shape.
    """
    source = Path(source)
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _check_options(channels, size, size_if_mixed)  # before anything is read
    if not source.exists():
        raise DataError("no such file or folder", path=source)
    if source.is_dir() and _has_idx(source, split):
        return _conform(load_idx(source, split), channels=channels, size=size)
    if split != "train":
        raise DataError(
            f"split={split!r} needs an idx folder; this source has no splits, "
            "point at the test images themselves",
            path=source,
        )
    if source.is_dir():
        return load_folder(source, size=size, size_if_mixed=size_if_mixed, channels=channels,
                           skip_bad=skip_bad)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return _conform(load_npz(source), channels=channels, size=size)
    if suffix in (".parquet", ".pq"):
        return load_catalog(source, size=size, size_if_mixed=size_if_mixed, channels=channels,
                            skip_bad=skip_bad)
    raise DataError(
        "unknown kind of image source: expected an idx folder, an image folder, "
        "a .npz or a .parquet catalog",
        path=source,
    )


def _has_idx(folder: Path, split: str) -> bool:
    name = f"{_IDX_PREFIX[split]}-images-idx3-ubyte"
    return (folder / f"{name}.gz").is_file() or (folder / name).is_file()


def _conform(images: ImageSet, *, channels: int | None, size: int | None) -> ImageSet:
    """An array ImageSet converted to `channels` and resized to size×size (`conform_images`)."""
    return replace(images, images=conform_images(images.images, channels=channels, size=size))


def conform_images(images: Tensor, *, channels: int | None = None,
                   size: int | None = None) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, channels, size, size) on the CPU, in blocks.

    Channels by repetition or ITU-R 601 luma (like PIL's "L"), size by antialiased bilinear
    resizing (on the shop's photos within a grey level of PIL's, which resizes files); `None` keeps
    the images' channels or size. Images that already conform are returned as they are. What
    arrays (idx, npz) go through on loading, and what the frozen encoder
    (`simclr_vision.embed.image_encoder`) does to the photos of new products.
    """
    ImageSet(images)  # uint8 (N, C, H, W), or a ValueError saying what it is instead
    n, c, h, w = images.shape
    if c not in _MODES:
        raise ValueError(f"images must have 1 (gray) or 3 (RGB) channels, got shape "
                         f"{tuple(images.shape)}")
    channels = _check_options(channels, size, default=c)
    if channels == c and (size is None or (h, w) == (size, size)):
        return images
    out_hw = (h, w) if size is None else (size, size)
    out = torch.empty((n, channels, *out_hw), dtype=torch.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, n, _RESIZE_CHUNK):
        block = images[start : start + _RESIZE_CHUNK].cpu().float()  # (b, c, h, w)
        if channels == 1 and c == 3:
            block = (block * luma).sum(1, keepdim=True)
        elif channels == 3 and c == 1:
            block = block.expand(-1, 3, -1, -1)
        if out_hw != (h, w):
            block = F.interpolate(block, size=out_hw, mode="bilinear", antialias=True)
        out[start : start + _RESIZE_CHUNK] = block.round().clamp(0, 255).to(torch.uint8)
    return out
