r"""Stage `recommend`: the top-k products of many users, from a trained run, to one Parquet file.

    python -m pipelines.recommend --run-dir runs/demo --name image --users test --k 100
    python -m pipelines.recommend --run-dir runs/demo --users histories.parquet --k 20

Loads `twotower.Retriever` from the run folder (`train_two_tower/<name>/` and
`build_index/<name>/`) and serves every user of a prepared split or every row of a Parquet of
user histories:

    valid, test   the users `twotower.evaluate` ranks, each with their id and the history
                  before their first target: every user with such a history gets exactly the
                  evaluation's ranking
    FILE.parquet  user_id, history (a list of product ids, oldest first); a null or empty
                  history serves a known user from their training history and anyone else the
                  popular products

It writes `<run_dir>/recommend/<name>/recommendations.parquet` (or `--out`): user_id, rank
(1..k), item_id, score, source, k rows per user. Users go `chunk_size` at a time through a
pyarrow ParquetWriter into a temporary file renamed at the end, so memory stays bounded
whatever their number and a failed run leaves no partial file. MLflow gets the config and the
users served by each source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import check_folder_name, parse_config, resolve_device, save_config
from pipelines.tracking import stage_run
from twotower.evaluate import load_queries
from twotower.files import DataError, atomic_path
from twotower.progress import progress
from twotower.retriever import Retriever

__all__ = ["SCHEMA", "RecommendConfig", "main", "run"]

STAGE = "recommend"
SPLITS = ("valid", "test")
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("source", pa.string())])
"""The columns of recommendations.parquet (`twotower.Recommendations.to_frame`)."""

Chunk = tuple[np.ndarray, list[np.ndarray | None]]
"""The user ids of some users and their histories (product ids; None: none given)."""


@dataclass
class RecommendConfig:
    """Top-k products for every user of a split or of a histories file (stage `recommend`)."""

    run_dir: str = "runs/demo"
    """The pipeline's run folder, with the trained model and its index; this stage writes
    `<run_dir>/recommend/<name>/`."""
    name: str = "image"
    """Which model of the run: its `train_two_tower/<name>/` and `build_index/<name>/`."""
    users: str = "test"
    """A prepared split's name, valid or test, or a Parquet of user histories (user_id,
    history: list of product ids, oldest first)."""
    prepared: str | None = None
    """Prepared folder of the split; None: `<run_dir>/prepare`."""
    k: int = 100
    """Products per user."""
    exclude_seen: bool = True
    """Never recommend a user's training items or the given history."""
    chunk_size: int = 10_000
    """Users served and written at a time: what bounds the memory."""
    device: str = "auto"
    """Where the model and the index run: auto (cuda when available), cpu or cuda."""
    out: str | None = None
    """Output Parquet; None: `<run_dir>/recommend/<name>/recommendations.parquet`."""

    def __post_init__(self) -> None:
        check_folder_name(self.name)
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if not self.users:
            raise ValueError("users must name a split (valid, test) or a histories Parquet")

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared) if self.prepared is not None else Path(self.run_dir) / "prepare"

    @property
    def out_path(self) -> Path:
        default = Path(self.run_dir) / STAGE / self.name / "recommendations.parquet"
        return Path(self.out) if self.out is not None else default

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        run = Path(self.run_dir)
        users = self.prepared_dir if self.users in SPLITS else Path(self.users)
        return run / "train_two_tower" / self.name, run / "build_index" / self.name, users


def run(cfg: RecommendConfig) -> dict[str, Any]:
    """Write the recommendations Parquet; return its path, the users and rows, the sources."""
    retriever = Retriever.load(cfg.run_dir, name=cfg.name, device=resolve_device(cfg.device))
    total, chunks = (_split_users(cfg) if cfg.users in SPLITS else _file_users(cfg))
    sources = {"user": 0, "history": 0, "popularity": 0}
    done = 0  # users written
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        with atomic_path(cfg.out_path) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer, \
                progress(total=total, desc="recommend", unit="user") as bar:
            for user_ids, histories in chunks:
                try:
                    recs = retriever.recommend(user_ids, histories, k=cfg.k,
                                               exclude_seen=cfg.exclude_seen)
                except DataError as err:  # a product id the model does not know
                    if cfg.users in SPLITS:
                        raise
                    raise DataError(f"in the {len(user_ids)} rows from row {done}: {err}",
                                    path=cfg.users, column="history") from err
                writer.write_table(pa.Table.from_pandas(recs.to_frame(), schema=SCHEMA,
                                                        preserve_index=False))
                for source, count in zip(*np.unique(recs.source, return_counts=True),
                                         strict=True):
                    sources[str(source)] += int(count)
                bar.update(len(user_ids))
                done += len(user_ids)
        save_config(cfg, cfg.out_path.parent / "config.json")
        tracker.log({"users": total, **{f"source_{s}": n for s, n in sources.items()}}, step=0)
        return {"recommendations": str(cfg.out_path), "users": total, "rows": total * cfg.k,
                "sources": sources, "run_id": tracker.run_id}


def _split_users(cfg: RecommendConfig) -> tuple[int, Iterator[Chunk]]:
    """The split's users as the evaluation ranks them: id and the history before the target."""
    queries = load_queries(cfg.prepared_dir, cfg.users)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(queries), cfg.chunk_size):
            part = queries.take(slice(start, start + cfg.chunk_size))
            yield part.user_id, [queries.item_ids[h] if h.size else None for h in part.history]

    return len(queries), chunks()


def _file_users(cfg: RecommendConfig) -> tuple[int, Iterator[Chunk]]:
    """The rows of a histories Parquet, read chunk_size at a time."""
    path = Path(cfg.users)
    if not path.is_file():
        raise DataError("no histories file here (users is neither valid, test nor a file)",
                        path=path)
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", path=path) from err
    schema = file.schema_arrow
    for column, ok, want in (
            ("user_id", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
             or pa.types.is_integer(t), "string ids"),
            ("history", lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t))
             and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
                  or pa.types.is_integer(t.value_type)), "lists of product ids")):
        if column not in schema.names:
            raise DataError(f"missing column; found {schema.names}", path=path, column=column)
        if not ok(schema.field(column).type):
            raise DataError(f"must hold {want}, not {schema.field(column).type}", path=path,
                            column=column)

    def chunks() -> Iterator[Chunk]:
        for batch in file.iter_batches(batch_size=cfg.chunk_size,
                                       columns=["user_id", "history"]):
            users = batch.column("user_id")
            if users.null_count:
                raise DataError(f"{users.null_count} null user ids", path=path,
                                column="user_id")
            histories = batch.column("history").to_pylist()
            yield (np.asarray(users.cast(pa.string()).to_pylist(), dtype=str),
                   [np.asarray(h).astype(str) if h else None for h in histories])

    return file.metadata.num_rows, chunks()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `RecommendConfig` from the command line, run it and print its summary."""
    summary = run(parse_config(RecommendConfig, argv))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":  # one-line errors and --threads, as `twotower recommend`
    import sys

    from pipelines.cli import main as cli

    cli(["recommend", *sys.argv[1:]])
