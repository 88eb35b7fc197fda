"""DataError names where the problem is; atomic_path never leaves half an output."""

from __future__ import annotations

import pytest

from twotower.files import DataError, atomic_path, clear_leftovers, source_stamp


def test_data_error_names_file_column_and_value(tmp_path):
    err = DataError("null id", path=tmp_path / "log.parquet", column="user_id", value=None)
    assert str(err) == f"{tmp_path / 'log.parquet'}, column 'user_id': null id"
    err = DataError("negative weight", path="a.csv", column="weight", value=-1.5)
    assert str(err) == "a.csv, column 'weight': negative weight (e.g. -1.5)"
    assert err.column == "weight" and err.value == -1.5 and err.path.name == "a.csv"
    assert isinstance(err, ValueError)


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "one"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_folder_swaps_whole_folders(tmp_path):
    target = tmp_path / "prepared"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.parquet").write_text("old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.parquet").write_text("partial")
        raise ValueError("bad input found late")
    assert sorted(p.name for p in target.iterdir()) == ["a.parquet"]
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.parquet").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_atomic_path_refuses_an_empty_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(tmp_path / "x"):
        pass
    assert not (tmp_path / "x").exists()


def test_source_stamp_changes_with_content_not_with_reads(tmp_path):
    log = tmp_path / "log"
    (log / "day=1").mkdir(parents=True)
    part = log / "day=1" / "part.parquet"
    part.write_bytes(b"abc")
    first = source_stamp(log)
    assert source_stamp(log) == first
    (log / "_SUCCESS").write_text("")  # hidden: a scan skips it, so does the stamp
    assert source_stamp(log) == first
    part.write_bytes(b"abcd")  # edited in place
    assert source_stamp(log) != first
    second = source_stamp(log)
    (log / "day=2").mkdir()
    (log / "day=2" / "part.parquet").write_bytes(b"x")  # a file added
    assert source_stamp(log) != second
    assert source_stamp(part) != source_stamp(log / "day=2" / "part.parquet")
    assert source_stamp(f"{log}/*/*.parquet") != second


def test_source_stamp_names_a_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        source_stamp(tmp_path / "nothing.parquet")


def test_clear_leftovers_removes_only_killed_writes(tmp_path):
    """What `atomic_path` leaves when killed (a `.NAME.tmp-XXXXXXXX` sibling, the `.old-` half
    of a folder swap) goes; the user's own hidden files and other targets' temporaries stay."""
    stage = tmp_path / "build_index"
    (stage / "model").mkdir(parents=True)
    keep = [stage / "model" / "index.faiss", stage / ".notes",
            tmp_path / ".build_index2.tmp-0123abcd", stage / ".x.tmp-nothex!"]
    for path in keep:
        path.write_text("keep")
    gone = [stage / ".model.tmp-0123abcd", stage / "model" / ".meta.json.tmp-89abcdef",
            tmp_path / ".build_index.old-deadbeef"]
    gone[0].mkdir()
    (gone[0] / "index.faiss").write_text("half")
    gone[1].write_text("half")
    gone[2].mkdir()
    assert sorted(clear_leftovers(stage)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert clear_leftovers(stage) == []
    assert clear_leftovers(tmp_path / "never_ran") == []
