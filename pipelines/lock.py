"""One run at a time per run folder: a lock that a killed run does not leave stuck.

Two runs writing one folder would mix their outputs and race inside MLflow's SQLite store
(one died in its schema migration). `hold(run_dir)` takes an exclusive `flock` on
`<run_dir>/.lock`; the kernel drops it when the process ends, however it ends, so there is
no stale lock to clear by hand. The holder writes its pid into the file, and a second run is
refused with `FolderBusy` naming that pid. Nested holds in one process (the demo's stages
inside the demo) share the one lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twotower.files import DataError

__all__ = ["LOCK", "FolderBusy", "hold"]

LOCK = ".lock"
"""The lock file's name inside a run folder."""

_held: dict[Path, int] = {}  # folder → the file descriptor that holds its lock


class FolderBusy(DataError):
    """The run folder is in use by another live process."""


@contextmanager
def hold(run_dir: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold `run_dir`'s lock for the block; yields True when this call took it (outermost)."""
    folder = Path(run_dir).resolve()
    if folder in _held:
        yield False
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusy(f"in use by pid {holder}: another twotower run is writing this "
                         "folder; wait for it to end or pass another --run-dir",
                         path=folder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = fd
    try:
        yield True
    finally:
        del _held[folder]
        os.close(fd)  # closing drops the flock
