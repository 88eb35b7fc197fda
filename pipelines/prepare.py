r"""Stage `prepare`: an interaction log → the prepared folder, tracked as one MLflow run.

    python -m pipelines.prepare --source ratings.csv --run-dir runs/ml \
        --data.protocol temporal --data.columns userId=user_id movieId=item_id \
        --data.event-weights purchase=3

The run's params are the stage config (`data.*` for `twotower.data.PrepareConfig`), its
metrics the row count after each step (`rows/read`, `rows/rating_filter`, `rows/dedup`,
`rows/event_filter`, `rows/kcore` per round, `rows/train|valid|test`) and the vocabulary
sizes, and its artifact the folder's manifest.json. A folder whose manifest already records
the same source, unchanged since (`twotower.files.source_stamp`: its files' names, sizes and
mtimes), and the same config is kept and the stage is skipped (pass --force to redo it).
`--help` lists every option, one per field of `PrepareStage` and `PrepareConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import parse_config
from pipelines.tracking import stage_run
from twotower.data import PrepareConfig, prepare
from twotower.files import source_stamp

__all__ = ["PrepareStage", "main", "run"]


@dataclass
class PrepareStage:
    """Split an interaction log into train, valid and test for the two-tower model."""

    source: str
    """Interaction log: a Parquet file, a folder of them (hive partitions too), a glob or a CSV."""
    run_dir: str = "runs/default"
    """Run folder: holds the MLflow store (mlflow.db) and, by default, the prepared folder."""
    out_dir: str | None = None
    """Prepared folder; None means <run_dir>/prepare."""
    data: PrepareConfig = field(default_factory=PrepareConfig)
    """Filters and split protocol (twotower.data.PrepareConfig)."""
    force: bool = False
    """Prepare again even if the folder's manifest records the same source and config."""

    def __post_init__(self) -> None:
        if not str(self.source):
            raise ValueError("source must name an interaction log (file, folder, glob or CSV)")
        self.source = os.fspath(self.source)
        self.run_dir = os.fspath(self.run_dir)
        if self.out_dir is not None:
            self.out_dir = os.fspath(self.out_dir)
        if isinstance(self.data, dict):
            self.data = PrepareConfig(**self.data)

    @property
    def folder(self) -> Path:
        """The prepared folder this stage writes."""
        return Path(self.out_dir) if self.out_dir is not None else Path(self.run_dir) / "prepare"

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return (self.source,)


def run(cfg: PrepareStage) -> dict[str, Any]:
    """Prepare the log inside an MLflow run; return the summary (rows per step, sizes)."""
    manifest_path = cfg.folder / "manifest.json"
    if not cfg.force and _up_to_date(manifest_path, cfg):
        return _summary(json.loads(manifest_path.read_text()), cfg.folder, skipped=True)
    with stage_run("prepare", cfg, cfg.run_dir, folder=cfg.folder) as tracking:
        prepare(cfg.source, cfg.folder, cfg.data, log=tracking.log)
        tracking.artifact(manifest_path)
        summary = _summary(json.loads(manifest_path.read_text()), cfg.folder, skipped=False)
        summary["run_id"] = tracking.run_id
    return summary


def _up_to_date(manifest_path: Path, cfg: PrepareStage) -> bool:
    """Whether the folder was prepared from the same source, unchanged since, with the same
    config; a manifest without a source stamp (written before stamps were) is not."""
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    config = json.loads(json.dumps(dataclasses.asdict(cfg.data)))  # tuples → lists, as stored
    return (manifest.get("source") == cfg.source and manifest.get("config") == config
            and manifest.get("source_stamp") == source_stamp(cfg.source))


def _summary(manifest: dict[str, Any], folder: Path, *, skipped: bool) -> dict[str, Any]:
    keys = ("protocol", "rows", "dropped", "users", "train_users", "items", "cold_items")
    return {"folder": str(folder), "skipped": skipped, **{k: manifest[k] for k in keys}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `PrepareStage` from the command line, run it and print its summary."""
    summary = run(parse_config(PrepareStage, argv))
    _print(summary)
    return summary


def _print(summary: dict[str, Any]) -> None:
    state = "up to date, skipped" if summary["skipped"] else "written"
    print(f"{summary['folder']} ({summary['protocol']}): {state}")
    rows = summary["rows"]
    for step in ("read", "rating_filter", "dedup", "event_filter", "kcore", "train", "valid",
                 "test"):
        if step not in rows:  # folders prepared before the rating filter existed
            continue
        dropped = summary["dropped"].get(step)
        note = f"  ({dropped:,} dropped)" if dropped else ""
        print(f"  {step:<13}{rows[step]:>14,}{note}")
    print(f"  users {summary['users']:,} ({summary['train_users']:,} in training), "
          f"items {summary['items']:,} ({summary['cold_items']:,} cold)")


if __name__ == "__main__":  # one-line errors and --threads, as `twotower prepare`
    import sys

    from pipelines.cli import main as cli

    cli(["prepare", *sys.argv[1:]])
