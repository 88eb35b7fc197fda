"""What a run shows while it works: progress bars, one-line notes, and where Ctrl-C stopped it.

Everything goes to stderr, as tqdm's bars do; results stay on stdout. On a live display (a
terminal, or a notebook, where `tqdm.auto` draws widgets) a bar is tqdm's, redrawn in place.
Anywhere else (stderr redirected to a file, a pipe, a CI log) every redraw would stay in the
file as one more carriage-return frame, hundreds of kilobytes for the demo, so there a bar is
one plain line when it ends: its name, its count, its seconds and its last postfix,

    train_two_tower/image epoch 3/30: 15 step in 1.2 s, loss=4.5147, val_recall@10=0.2100

and a transient bar (`leave=False`, an encoding pass inside a step) prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as display_tqdm
from tqdm.std import tqdm as terminal_tqdm

__all__ = ["Bar", "Interrupted", "PlainBar", "live", "note", "progress"]


def live() -> bool:
    """Whether bars are redrawn in place: stderr is a terminal, or this is a notebook."""
    return sys.stderr.isatty() or display_tqdm is not terminal_tqdm


def note(line: str) -> None:
    """One line on stderr, beside the bars (without breaking one being drawn)."""
    tqdm.write(line, file=sys.stderr)


class PlainBar:
    """The part of tqdm's interface the project uses, printed as one line when it closes."""

    def __init__(self, iterable: Iterable[Any] | None, *, total: int | None, desc: str,
                 unit: str, enabled: bool, leave: bool) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.shown = enabled and leave
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1
        self.close()

    def __enter__(self) -> PlainBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:  # a bar cut short by an error says nothing: the error does
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        """Print the line (once)."""
        if not self.shown:
            return
        self.shown = False
        count = f"{self.n}" if self.total in (None, self.n) else f"{self.n}/{self.total}"
        after = "".join(f", {key}={value}" for key, value in self.postfix.items())
        note(f"{self.desc}: {count} {self.unit} in {time.perf_counter() - self.started:.1f} s"
             f"{after}")


Bar = tqdm | PlainBar
"""What `progress` returns."""


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str,
             unit: str = "it", enabled: bool = True, leave: bool = True) -> Bar:
    """A progress bar over `iterable` (or updated by hand up to `total`): tqdm's on a live
    display, a `PlainBar` elsewhere; nothing shown when not `enabled`."""
    if live():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                    leave=leave)
    return PlainBar(iterable, total=total, desc=desc, unit=unit, enabled=enabled, leave=leave)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was running and what of it is saved: `str()` says so in words."""

    def __init__(self, during: str, saved: int | None = None, *, resumable: bool = False) -> None:
        """`saved`: the last epoch checkpointed (0: none yet; None: the run keeps no
        checkpoints). `resumable`: running it again continues rather than starts over (an
        epoch is saved, or finished stages are skipped)."""
        self.during, self.saved = during, saved
        self.resumable = resumable or bool(saved)
        kept = {None: "", 0: " (no epoch saved yet)"}.get(saved, f" (epoch {saved} saved)")
        super().__init__(f"interrupted during {during}{kept}")
