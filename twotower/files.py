"""The file boundary: the error bad input raises, and writes that never leave half a file.

Everything a user hands us (logs, catalogs, images) is checked where it enters, and a failure
raises `DataError` naming the file, the column and one offending value. Everything we write
(prepared folders, checkpoints, embeddings) goes to a temporary sibling first and is renamed
into place, so a crash or a bad input never leaves a half-written output and never destroys
the previous one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DataError", "atomic_path", "clear_leftovers", "source_stamp", "stamped"]

HIDDEN = (".", "_")
"""File name prefixes a folder scan skips (.crc, _SUCCESS, our own temporaries)."""
_TMP, _OLD = ".tmp-", ".old-"  # `.NAME.tmp-XXXXXXXX`: a write in progress; `.old-`: a swap's
_LEFTOVER = re.compile(r"\..+\.(tmp|old)-[0-9a-f]{8}")


class DataError(ValueError):
    """Input that breaks a data contract; the message names the file, the column and a value."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        column: str | None = None,
        value: object = None,
    ) -> None:
        parts = []
        if path is not None:
            parts.append(f"{os.fspath(path)}")
        if column is not None:
            parts.append(f"column {column!r}")
        where = ", ".join(parts)
        text = f"{where}: {message}" if where else message
        if value is not None:
            text += f" (e.g. {value!r})"
        super().__init__(text)
        self.path = None if path is None else Path(path)
        self.column = column
        self.value = value


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success rename it onto `target`.

    Works for a file or a folder: write whatever you like at the yielded path. If the block
    raises, the temporary path is removed and `target` is untouched. An existing folder at
    `target` is moved aside and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{_TMP}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}{_OLD}{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def clear_leftovers(target: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writes left of `target` and, for a folder, of anything inside it.

    `atomic_path` cleans up after itself unless the process is killed; then its temporary
    sibling (or the old folder of a swap) stays. Call this only while nothing else writes
    there (a stage holding its run folder's lock). Returns the removed paths.
    """
    target = Path(target)
    found = [p for p in target.parent.glob(f".{glob.escape(target.name)}.*")
             if _LEFTOVER.fullmatch(p.name) and p.name.rsplit(".", 1)[0] == f".{target.name}"]
    if target.is_dir() and not target.is_symlink():
        found += [p for p in target.rglob(".*") if _LEFTOVER.fullmatch(p.name)]
    removed = []
    for path in sorted(found):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue  # inside a leftover folder removed just before
        removed.append(path)
    return removed


def source_stamp(source: str | os.PathLike[str]) -> str:
    """A digest of what `source` (a file, a folder read recursively, or a glob) holds now.

    Each file's path relative to the source, size and modification time in ns go in, the
    test `make` uses: a file edited, replaced, added or removed changes the stamp, and reading
    a terabyte log to hash it is not needed. A stage records the stamp of its inputs and
    redoes its work when the stamp it finds differs. Hidden files are left out, as scans do.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():  # before the glob test: a file may be named "log[1].parquet"
        root, files = path.parent, [path]
    elif path.is_dir():
        root, files = path, [p for p in path.rglob("*") if p.is_file()
                             and not any(part.startswith(HIDDEN)
                                         for part in p.relative_to(path).parts)]
    elif glob.has_magic(text):
        root, files = None, [Path(p) for p in glob.glob(text, recursive=True)
                             if Path(p).is_file() and not Path(p).name.startswith(HIDDEN)]
    else:
        raise DataError("no such file or folder", path=text)
    digest = hashlib.sha256()
    for file in sorted(files):
        stat = file.stat()
        name = file if root is None else file.relative_to(root)
        digest.update(f"{name.as_posix()}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def stamped(*sources: str | os.PathLike[str]) -> str:
    """The sources as `ABSOLUTE-PATH (stamp S)`, joined by "; ": what a checkpoint records of
    its inputs, so it is resumed only on the same ones."""
    return "; ".join(f"{os.path.abspath(source)} (stamp {source_stamp(source)})"
                     for source in sources)
