"""Running a pipeline's stages in order: skip the finished ones, resume an interrupted one.

A stage that finishes writes `done.json` in its folder: the config it ran with and the summary
it returned. On the next run a stage is skipped when its `done.json` records the same config
and no stage before it ran again. A stage without `done.json` was interrupted (or never ran):
it runs, and resumes from whatever checkpoint it left (SimCLR and two-tower training keep
`last.pt`). A stage whose `done.json` records another config, or whose inputs were just
remade, first has its folder cleared, so nothing stale is resumed or mixed in.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twotower.files import atomic_path

__all__ = ["DONE", "Stages"]

DONE = "done.json"


def _record(config: Any) -> Any:
    """The config as plain JSON values, the form `done.json` stores and compares."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class Stages:
    """Runs stages in order; `ran` and `skipped` name what each call did."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def __call__(self, label: str, folder: str | Path, config: Any,
                 run: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """`run(config)` unless `folder/done.json` records this config and nothing upstream
        ran again; returns the stage's summary (the recorded one when skipped)."""
        folder = Path(folder)
        done = folder / DONE
        wanted = _record(config)
        if done.is_file():
            try:
                saved = json.loads(done.read_text())
            except json.JSONDecodeError:  # edited by hand: no record we can trust
                saved = {}
            if not self.ran and saved.get("config") == wanted:
                self.skipped.append(label)
                return saved["summary"]
            shutil.rmtree(folder)
        summary = run(config)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps({"config": wanted, "summary": summary}, indent=2,
                                      default=str) + "\n")
        self.ran.append(label)
        return summary
