"""The vectors Parquet: one id and one float32 vector per row, with JSON metadata in the footer.

This is the contract where the stages meet (DESIGN.md, "embeddings"): simclr_vision writes the
frozen image h per product, the two-tower trainer writes its user and item vectors, and the
index and the evaluator read them. Columns: the id (`item_id` or `user_id`, stored as strings)
and `embedding`, a fixed-size list of float32; the footer's `twotower.embeddings` key holds what
produced the vectors (checkpoint, dimension, normalization, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower.files import DataError, atomic_path

__all__ = ["METADATA_KEY", "Vectors", "read_vectors", "write_vectors"]

METADATA_KEY = b"twotower.embeddings"


@dataclass(frozen=True)
class Vectors:
    """Rows of a vectors file: `ids[i]` is described by `vectors[i]`."""

    ids: np.ndarray
    """(N,) str ids, unique."""
    vectors: np.ndarray
    """(N, d) float32, finite."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The footer's JSON: what produced the vectors."""


def write_vectors(
    ids: list[str] | np.ndarray,
    vectors: np.ndarray,
    out: str | os.PathLike[str],
    metadata: dict[str, Any],
    *,
    id_column: str = "item_id",
) -> Path:
    """Write `id_column` and fixed-size float32 `embedding` rows, `metadata` as JSON, atomically."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"need one (dim,) vector per id: {len(ids)} ids, {vectors.shape} vectors")
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    id_array = pa.array([str(i) for i in ids], pa.string())
    table = pa.table({id_column: id_array, "embedding": embedding})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def read_vectors(path: str | os.PathLike[str], *, id_column: str = "item_id") -> Vectors:
    """Read a vectors file; raise `DataError` naming the file, column and a bad value."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no vectors file here", path=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", path=path) from err
    for column in (id_column, "embedding"):
        if column not in table.column_names:
            raise DataError(f"missing column; found {table.column_names}", path=path,
                            column=column)
    ids = table.column(id_column)
    if ids.null_count:
        raise DataError("null id", path=path, column=id_column)
    ids = np.asarray(ids.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=str)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError("duplicate id", path=path, column=id_column,
                        value=str(unique[counts > 1][0]))
    vectors = _matrix(table.column("embedding"), path)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError("non-finite vector", path=path, column="embedding",
                        value=str(ids[np.flatnonzero(bad)[0]]))
    metadata = table.schema.metadata or {}
    meta = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    return Vectors(ids=ids, vectors=vectors, metadata=meta)


def _matrix(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """(N, d) float32 from a (fixed-size) list column whose rows all have one length."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)):
        raise DataError(f"must be a list of floats, not {array.type}", path=path,
                        column="embedding")
    if array.null_count:
        raise DataError("null vector", path=path, column="embedding")
    lengths = np.asarray(pc.list_value_length(array))
    if len(array) and (lengths != lengths[0]).any():
        raise DataError("vectors of different lengths", path=path, column="embedding",
                        value=sorted({int(n) for n in lengths})[:5])
    dim = int(lengths[0]) if len(array) else 0
    values = array.flatten()
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise DataError(f"must hold numbers, not {values.type}", path=path, column="embedding")
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
