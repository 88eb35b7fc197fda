"""The vectors Parquet: written atomically, read back exactly, bad files named precisely."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.files import DataError
from twotower.vectors import read_vectors, write_vectors


def test_round_trip_keeps_ids_vectors_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 3)).astype(np.float32)
    out = write_vectors(["a", "b", "c", "d", "e"], vectors, tmp_path / "v.parquet",
                        {"dim": 3, "source": "x"})
    read = read_vectors(out)
    assert read.ids.tolist() == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(read.vectors, vectors)
    assert read.metadata == {"dim": 3, "source": "x"}


def test_user_vectors_use_their_own_id_column_and_int_ids_become_strings(tmp_path):
    out = write_vectors(np.array([7, 8]), np.eye(2), tmp_path / "u.parquet", {},
                        id_column="user_id")
    assert pq.read_table(out).column_names == ["user_id", "embedding"]
    assert read_vectors(out, id_column="user_id").ids.tolist() == ["7", "8"]


def test_write_refuses_misaligned_rows_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="one \\(dim,\\) vector per id"):
        write_vectors(["a", "b"], np.zeros((3, 4)), tmp_path / "e.parquet", {})
    assert list(tmp_path.iterdir()) == []


def _write(path, table):
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (pa.table({"id": ["a"], "embedding": [[1.0]]}), "column 'item_id': missing column"),
        (pa.table({"item_id": ["a", "a"], "embedding": [[1.0], [2.0]]}), "duplicate id.*'a'"),
        (pa.table({"item_id": ["a", None], "embedding": [[1.0], [2.0]]}), "null id"),
        (pa.table({"item_id": ["a", "b"], "embedding": [[1.0], [2.0, 3.0]]}),
         "different lengths"),
        (pa.table({"item_id": ["a", "b"], "embedding": [[1.0], [float("nan")]]}),
         "non-finite vector.*'b'"),
        (pa.table({"item_id": ["a"], "embedding": [1.0]}), "list of floats"),
        (pa.table({"item_id": ["a"], "embedding": [["x"]]}), "must hold numbers"),
    ],
    ids=["missing-column", "duplicate", "null-id", "ragged", "nan", "not-a-list", "strings"],
)
def test_bad_files_raise_data_error_naming_file_column_and_value(tmp_path, table, match):
    path = _write(tmp_path / "bad.parquet", table)
    with pytest.raises(DataError, match=match) as info:
        read_vectors(path)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no vectors file"):
        read_vectors(tmp_path / "absent.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet"):
        read_vectors(tmp_path / "junk.parquet")
