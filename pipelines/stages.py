"""Running a pipeline's stages in order: skip the finished ones, resume an interrupted one, and
redo the ones whose inputs changed.

Each stage's config names what the stage reads (`inputs`: its sources and earlier stages'
outputs). A stage that finishes writes `done.json` in its folder: the config it ran with, the
stamp of each input when it started (`twotower.files.source_stamp`: names, sizes and
modification times) and the summary it returned. On the next run a stage is skipped when its
`done.json` records the same config and the same stamps, whatever else ran: a new SimCLR
setting redoes the stages that read what the image encoder wrote, not the shop, the split or the
id-only model. A stage without `done.json` was interrupted (or never ran): it runs, and resumes
from whatever checkpoint it left (SimCLR and two-tower training keep `last.pt`, which records
its own inputs' stamps and resumes on nothing else). A stage whose `done.json` records another
config or other stamps (or none: written before stamps were) first has its folder cleared, so
nothing stale is resumed or mixed in.

Stamps, not contents: a stage that runs again rewrites its outputs, and their readers run again
even when the bytes come out the same. Comparing contents would mean hashing every checkpoint,
embedding file and prepared split on every run, and an upstream stage's summary is no content
identity (make_shop's holds paths and sizes, which another shop seed keeps). A rerun too many
costs minutes; a skip too many would report results of inputs that are gone. An input edited by
hand changes its stamp too.

Each stage says one line on stderr (`twotower.progress.note`, beside the bars) as it starts,
naming what it reads and why it runs again when a record was there, and one as it ends, with
its seconds; a skipped one says so. Ctrl-C during a stage becomes `Interrupted`, naming it:
running the pipeline again skips the finished stages and resumes this one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from twotower.files import atomic_path, source_stamp
from twotower.progress import Interrupted, note

__all__ = ["DONE", "StageConfig", "Stages"]

DONE = "done.json"


class StageConfig(Protocol):
    """A stage's config dataclass, which names the files and folders its stage reads."""

    @property
    def inputs(self) -> tuple[str | os.PathLike[str], ...]: ...


Config = TypeVar("Config", bound=StageConfig)


def _record(config: StageConfig) -> dict[str, Any]:
    """What `done.json` stores and compares: the config as plain JSON values, and the stamp of
    each input now."""
    return {"config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
            "inputs": {os.fspath(path): source_stamp(path) for path in config.inputs}}


class Stages:
    """Runs stages in order; `ran` and `skipped` name what each call did. `before_run()` is
    called before each stage that runs (the demo opens its MLflow run there)."""

    def __init__(self, before_run: Callable[[], object] = lambda: None) -> None:
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.before_run = before_run

    def __call__(self, label: str, folder: str | Path, config: Config,
                 run: Callable[[Config], dict[str, Any]]) -> dict[str, Any]:
        """`run(config)` unless `folder/done.json` records this config and these input stamps;
        returns the stage's summary (the recorded one when skipped)."""
        folder = Path(folder)
        done = folder / DONE
        wanted = _record(config)  # before the run: the inputs as the stage found them
        why = ""
        if done.is_file():
            try:
                saved = json.loads(done.read_text())
            except json.JSONDecodeError:  # edited by hand: no record we can trust
                saved = {}
            if all(saved.get(key) == value for key, value in wanted.items()):
                note(f"stage {label} skipped: done before with this config and these inputs")
                self.skipped.append(label)
                return saved["summary"]
            why = ("; its config changed" if saved.get("config") != wanted["config"]
                   else "; its inputs changed")
            shutil.rmtree(folder)
        reads = ", ".join(wanted["inputs"]) or "nothing"
        note(f"stage {label} started (reads {reads}{why})")
        self.before_run()
        started = time.perf_counter()
        try:
            summary = run(config)
        except KeyboardInterrupt as err:
            saved_epoch = err.saved if isinstance(err, Interrupted) else None
            raise Interrupted(label, saved_epoch, resumable=True) from err
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps({**wanted, "summary": summary}, indent=2,
                                      default=str) + "\n")
        self.ran.append(label)
        note(f"stage {label} done in {time.perf_counter() - started:.1f} s")
        return summary
