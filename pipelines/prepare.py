"""Stage `prepare`: an interaction log → the prepared folder, tracked as one MLflow run.

    python -m pipelines.prepare ratings.csv --out runs/ml/prepare --protocol temporal \
        --column userId=user_id --column movieId=item_id

The run's params are the stage config (`data.*` for `twotower.data.PrepareConfig`), its
metrics the row count after each step (`rows/read`, `rows/dedup`, `rows/event_filter`,
`rows/kcore` per round, `rows/train|valid|test`) and the vocabulary sizes, and its artifact
the folder's manifest.json. A folder whose manifest already records the same source and
config is kept and the stage is skipped (pass --force to redo it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking import stage_run
from twotower.data import PROTOCOLS, PrepareConfig, prepare

__all__ = ["PrepareStage", "main", "run"]


@dataclass
class PrepareStage:
    """One `prepare` run: where the log is, where its prepared folder and tracking go."""

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


def run(cfg: PrepareStage) -> dict[str, Any]:
    """Prepare the log inside an MLflow run; return the summary (rows per step, sizes)."""
    manifest_path = cfg.folder / "manifest.json"
    if not cfg.force and _up_to_date(manifest_path, cfg):
        return _summary(json.loads(manifest_path.read_text()), cfg.folder, skipped=True)
    with stage_run("prepare", cfg, cfg.run_dir) as tracking:
        prepare(cfg.source, cfg.folder, cfg.data, log=tracking.log)
        tracking.artifact(manifest_path)
        summary = _summary(json.loads(manifest_path.read_text()), cfg.folder, skipped=False)
        summary["run_id"] = tracking.run_id
    return summary


def _up_to_date(manifest_path: Path, cfg: PrepareStage) -> bool:
    """Whether the folder was prepared from the same source with the same config."""
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    config = json.loads(json.dumps(dataclasses.asdict(cfg.data)))  # tuples → lists, as stored
    return manifest.get("source") == cfg.source and manifest.get("config") == config


def _summary(manifest: dict[str, Any], folder: Path, *, skipped: bool) -> dict[str, Any]:
    keys = ("protocol", "rows", "dropped", "users", "train_users", "items", "cold_items")
    return {"folder": str(folder), "skipped": skipped, **{k: manifest[k] for k in keys}}


def _pairs(values: list[str], flag: str, convert=str) -> dict[str, Any]:
    """["a=b", ...] → {"a": convert("b")}; argparse error text on a malformed pair."""
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} takes NAME=VALUE, got {value!r}")
        out[key] = convert(rest)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    defaults = PrepareConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="Parquet file, folder, glob or CSV of interactions")
    parser.add_argument("--run-dir", default="runs/default", help="run folder (MLflow store)")
    parser.add_argument("--out", help="prepared folder (default: RUN_DIR/prepare)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol)
    parser.add_argument("--min-user", type=int, default=defaults.min_user_interactions,
                        help="k-core: interactions per user")
    parser.add_argument("--min-item", type=int, default=defaults.min_item_interactions,
                        help="k-core: interactions per item")
    parser.add_argument("--valid-fraction", type=float, default=defaults.valid_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--fold-in-fraction", type=float, default=defaults.fold_in_fraction)
    parser.add_argument("--max-history", type=int, default=defaults.max_history)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--events", nargs="+", help="keep only these events")
    parser.add_argument("--event-weight", action="append", default=[], metavar="EVENT=W",
                        help="multiply the weight of EVENT rows by W (repeatable)")
    parser.add_argument("--column", action="append", default=[], metavar="SOURCE=CONTRACT",
                        help="rename a source column, e.g. userId=user_id (repeatable)")
    parser.add_argument("--force", action="store_true", help="prepare even if up to date")
    args = parser.parse_args(argv)
    try:
        weights = _pairs(args.event_weight, "--event-weight", float) or None
        columns = _pairs(args.column, "--column") or None
    except (argparse.ArgumentTypeError, ValueError) as err:
        parser.error(str(err))
    data = PrepareConfig(
        protocol=args.protocol, min_user_interactions=args.min_user,
        min_item_interactions=args.min_item, valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction, fold_in_fraction=args.fold_in_fraction,
        max_history=args.max_history, seed=args.seed, events=args.events,
        event_weights=weights, columns=columns,
    )
    summary = run(PrepareStage(args.source, run_dir=args.run_dir, out_dir=args.out, data=data,
                               force=args.force))
    _print(summary)
    return summary


def _print(summary: dict[str, Any]) -> None:
    state = "up to date, skipped" if summary["skipped"] else "written"
    print(f"{summary['folder']} ({summary['protocol']}): {state}")
    rows = summary["rows"]
    for step in ("read", "dedup", "event_filter", "kcore", "train", "valid", "test"):
        dropped = summary["dropped"].get(step)
        note = f"  ({dropped:,} dropped)" if dropped else ""
        print(f"  {step:<13}{rows[step]:>14,}{note}")
    print(f"  users {summary['users']:,} ({summary['train_users']:,} in training), "
          f"items {summary['items']:,} ({summary['cold_items']:,} cold)")


if __name__ == "__main__":
    main()
