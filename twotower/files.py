"""The file boundary: the error bad input raises, and writes that never leave half a file.

Everything a user hands us (logs, catalogs, images) is checked where it enters, and a failure
raises `DataError` naming the file, the column and one offending value. Everything we write
(prepared folders, checkpoints, embeddings) goes to a temporary sibling first and is renamed
into place, so a crash or a bad input never leaves a half-written output and never destroys
the previous one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DataError", "atomic_path"]


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
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
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
