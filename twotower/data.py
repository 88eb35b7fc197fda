"""Interaction logs → a prepared folder: validation, k-core, vocabularies, splits, histories.

`prepare(source, out_dir, config)` turns a raw log (`user_id`, `item_id`, optional `timestamp`,
`event`, `weight` and `rating`) into the folder the trainer and the evaluator read (DESIGN.md):

    read + validate   polars' lazy engine, streaming: one pass collects the distinct ids,
                      a second joins them to integer codes, so strings are never held per row
    rating filter     keep only rows rated ≥ min_rating, inside the second pass: the rating
                      column is never held, and rows differing only in rating dedup after it
    sort              by (user, time, item): duplicates become neighbours, sequences appear
    dedup             drop exact duplicates (same user, item, timestamp, event and weight)
    event filter      keep only the listed events; event weights multiply the row weight
    k-core            drop users and items with too few interactions, until a fixed point
    random order      without timestamps only: each user's rows in a seeded random order
    vocabularies      contiguous user_index / item_index in sorted-id order (deterministic)
    split             temporal | leave_last_out | holdout_users (Liang et al. 2018; a held-out
                      user's fold-in is their earliest rows or a seeded random draw)
    statistics        item counts from the training split only
    histories         per user (training) and per evaluation target (valid / test)

Ids are compared as strings: the vocabularies hold every id cast to a string and sorted, so int
and string ids take one path (even int ids in one file of a folder and string ids in another),
and the same log gives the same indices whatever its file or row order. Timestamps are stored
as UTC datetimes in microseconds (int input is seconds since the epoch; time zones are converted
to UTC) and must lie between 1970-01-01 and 2262-04-11 (see `_MAX_NS`). Steps on the encoded
log are numpy over integer columns, which is what keeps 100 million rows in a few GiB.

A log without a `timestamp` column has no time order: only holdout_users applies (temporal and
leave_last_out raise DataError), rows with the same user, item, event and weight are
duplicates, each user's rows are put in a random order drawn from `config.seed` (so a history's
order carries nothing of the item ids), the output `timestamp` and `first_seen` columns are
null, and the manifest says `"timestamps": false`.

Output folder:
    train.parquet   user_index, item_index, timestamp, weight, position (index of the row in
                    the user's time-ordered training sequence: its history is
                    users.history[:position])
    valid.parquet,  user_index, item_index, timestamp, weight, history (the target's user
    test.parquet    history: the interactions strictly before the target in time, the last
                    `max_history` of them if set, or all the fold-in items for holdout_users,
                    with any interaction with the target item itself removed; the evaluator
                    masks it and the baselines read it)
    items.parquet   item_id, item_index, count, first_seen, cold (no training row); a folder
                    from an older version also holds log_q = log(count / training rows), the
                    row share, which nothing reads (the trainer's q is per batch:
                    `twotower.frequency`)
    users.parquet   user_id, user_index, history (time-ordered training item_index list)
    manifest.json   schema version, protocol, resolved config, row counts per step, sources
                    and their `twotower.files.source_stamp` (names, sizes, mtimes)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from twotower.files import HIDDEN, DataError, atomic_path, source_stamp

__all__ = ["FOLD_INS", "PROTOCOLS", "SCHEMA_VERSION", "PrepareConfig", "prepare",
           "prepared_files", "prepared_manifest"]

SCHEMA_VERSION = 1
PROTOCOLS = ("temporal", "leave_last_out", "holdout_users")
FOLD_INS = ("auto", "time", "random")
REQUIRED = ("user_id", "item_id")
# Random streams default_rng((seed, stream)), apart from the held-out user draw's default_rng(seed)
_ROW_ORDER = 1  # each user's row order, without timestamps
_FOLD_IN_DRAW = 2  # holdout_users' random fold-in
Log = Callable[[Mapping[str, float], int], None]

_TRAIN, _VALID, _TEST, _FOLD_IN = 0, 1, 2, 3
_FILE = "__source_file__"  # column polars fills with each row's file, on the error path only
_BLOCK_ROWS = 1 << 20  # rows per written block (Parquet row group)
_BLOCK_TARGETS = 1 << 16  # valid/test targets per block
_BLOCK_HISTORY = 1 << 22  # history entries per block, unless one target alone has more
_US = 1_000_000  # microseconds per second
# Every timestamp lies in [the Unix epoch 1970-01-01, _MAX_NS ns after it = 2262-04-11T23:47:16Z]:
# an interaction log is a digital record, so a time before the epoch is a sign error or a
# sentinel, and the end is the last instant int64 nanoseconds hold (numpy's and pandas'
# datetime64[ns], Arrow's timestamp[ns]), so every prepared time converts to them and integer
# times in ms, µs or ns (above 9.2e9 for any date after 1970-04-17) never pass for seconds.
# The window is checked on the raw value in its own unit, before a conversion can overflow.
_MAX_NS = int(np.iinfo(np.int64).max)
_WINDOW = "1970-01-01 .. 2262-04-11"
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1, "d": 86_400 * 10**9}  # unit → ns


@dataclass
class PrepareConfig:
    """How `prepare` filters, splits and summarises an interaction log."""

    protocol: str = "temporal"
    """Split protocol: "temporal", "leave_last_out" or "holdout_users" (DESIGN.md)."""
    min_user_interactions: int = 5
    """k-core: every kept user has at least this many interactions (rows, after dedup)."""
    min_item_interactions: int = 5
    """k-core: every kept item has at least this many interactions."""
    valid_fraction: float = 0.1
    """temporal: share of interactions after the valid cut; holdout_users: share of users."""
    test_fraction: float = 0.1
    """temporal: share of interactions after the test cut; holdout_users: share of users."""
    fold_in_fraction: float = 0.8
    """holdout_users: share of a held-out user's interactions given as history (see fold_in)."""
    fold_in: Literal["auto", "time", "random"] = "auto"
    """holdout_users: which interactions are the fold-in: "time" the earliest, "random" a
    seeded uniform draw (Liang et al. 2018's random split), "auto" time when the log has
    timestamps and random when it has none."""
    max_history: int | None = None
    """temporal / leave_last_out: most recent interactions kept in a valid/test target's
    history; None keeps all of them. The evaluator masks exactly this history and the baselines
    (EASE, ...) read it as the user's input, so a cap makes them see less: it only bounds the
    size of valid/test.parquet. holdout_users' fold-in is always written whole. The model's
    own input is capped separately, by `twotower.train.TrainConfig.max_history`."""
    seed: int = 0
    """Seed of holdout_users' draws (held-out users, random fold-in) and, for a log without
    timestamps, of each user's row order."""
    min_rating: float | None = None
    """Keep only rows whose `rating` column is ≥ this (explicit ratings → implicit positives:
    Liang et al. 2018 keep MovieLens ratings ≥ 4); None keeps every row and ignores `rating`."""
    events: tuple[str, ...] | None = None
    """Keep only rows whose `event` is one of these; None keeps every row."""
    event_weights: dict[str, float] | None = None
    """event → factor on the row weight (1.0 for events not listed); None leaves weights."""
    columns: dict[str, str] | None = None
    """Source column → contract column renames, e.g. {"userId": "user_id"}."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DataError(
                f"unknown split protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}"
            )
        for name in ("min_user_interactions", "min_item_interactions", "max_history"):
            value = getattr(self, name)
            if name == "max_history" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if self.fold_in not in FOLD_INS:
            raise ValueError(f"fold_in must be one of {', '.join(FOLD_INS)}, got "
                             f"{self.fold_in!r}")
        for name in ("valid_fraction", "test_fraction", "fold_in_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction must be < 1 to leave a training split, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        if self.min_rating is not None:
            self.min_rating = float(self.min_rating)
            if not math.isfinite(self.min_rating):
                raise ValueError(f"min_rating must be a finite number or None, got "
                                 f"{self.min_rating!r}")
        if self.events is not None:
            if isinstance(self.events, str) or not self.events:
                raise ValueError(f"events must be a non-empty list of names, got {self.events!r}")
            self.events = tuple(str(e) for e in self.events)
        if self.event_weights is not None:
            self.event_weights = {str(k): float(v) for k, v in self.event_weights.items()}
            bad = {k: v for k, v in self.event_weights.items() if not math.isfinite(v) or v < 0}
            if bad:
                raise ValueError(f"event_weights must be finite and ≥ 0, got {bad}")
        if self.columns is not None:
            self.columns = {str(k): str(v) for k, v in self.columns.items()}
            targets = list(self.columns.values())
            if len(set(targets)) != len(targets):
                raise ValueError(f"columns maps two source columns to one name: {self.columns}")


def prepared_files(prepared: str | os.PathLike[str], *names: str) -> dict[str, Path]:
    """name → `<prepared>/<name>.parquet` for readers of a prepared folder; `DataError` naming
    the first file that is missing."""
    folder = Path(prepared)
    paths = {name: folder / f"{name}.parquet" for name in names}
    for path in paths.values():
        if not path.is_file():
            raise DataError("missing; is this a folder written by twotower.prepare?", path=path)
    return paths


def prepared_manifest(prepared: str | os.PathLike[str]) -> dict[str, object]:
    """The `manifest.json` of a prepared folder (protocol, config, row counts); `DataError`
    naming the file when it is missing or unreadable."""
    path = Path(prepared) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("missing; is this a folder written by twotower.prepare?",
                        path=path) from None
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable: {err}", path=path) from None
    if not isinstance(manifest, dict) or "protocol" not in manifest:
        raise DataError("not a prepared folder's manifest (no protocol)", path=path)
    return manifest


def prepare(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: PrepareConfig | None = None,
    *,
    log: Log | None = None,
) -> Path:
    """Validate, filter and split an interaction log into a prepared folder; return its path.

    source: a Parquet file, a folder of Parquet files (hive partitions too), a glob, or a CSV.
    Ids are cast to strings for the vocabularies, so int and string ids share one path.
    `log(metrics, step)` receives the row count after each step (`rows/read`,
    `rows/rating_filter`, `rows/dedup`, `rows/event_filter`, `rows/kcore` at step = round,
    `rows/train|valid|test`) and the sizes.
    Raises `DataError` naming the file, column and a bad value; on error nothing is written.
    The folder is written to a temporary sibling and renamed into place.
    """
    config = config or PrepareConfig()
    report = log or (lambda metrics, step: None)
    stamp = source_stamp(source)  # before reading: a change made meanwhile is seen next time
    data, vocab, files, n_read = _read(source, config)
    rows = _filter(data, n_read, vocab.events, config, source, report)
    if not data.timestamps:
        _random_order(data, config.seed)
    data.user, user_codes = _contiguous(data.user)
    data.item, item_codes = _contiguous(data.item)
    user_ids, item_ids = vocab.users[user_codes], vocab.items[item_codes]

    split = _split(data, len(user_ids), config, source)
    train = np.flatnonzero(split.part == _TRAIN)
    targets = {name: np.flatnonzero(split.part == part)
               for name, part in (("valid", _VALID), ("test", _TEST))}
    counts = _counts(data.item[train], len(item_ids))  # (I,) training rows per item
    # The fold-in is what the evaluator masks and the baselines read: never cut.
    max_history = None if split.fold_in_end is not None else config.max_history
    train_starts = _user_starts(data.user[train], len(user_ids))
    rows.update(train=train.size, **{name: t.size for name, t in targets.items()})
    if split.fold_in_end is not None:
        rows["fold_in"] = int(np.count_nonzero(split.part == _FOLD_IN))
    report({f"rows/{name}": rows[name] for name in ("train", "valid", "test")}, 0)
    sizes = {
        "users": len(user_ids),
        "train_users": int(np.count_nonzero(np.diff(train_starts))),
        "items": len(item_ids),
        "cold_items": int(np.count_nonzero(counts == 0)),
    }
    report(sizes, 0)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "protocol": config.protocol,
        "timestamps": data.timestamps,
        "config": dataclasses.asdict(config),
        "source": os.fspath(source),
        "source_stamp": stamp,
        "files": [os.fspath(f) for f in files],
        "rows": rows,
        "dropped": {
            "rating_filter": rows["read"] - rows["rating_filter"],
            "dedup": rows["rating_filter"] - rows["dedup"],
            "event_filter": rows["dedup"] - rows["event_filter"],
            "kcore": rows["event_filter"] - rows["kcore"],
        },
        **sizes,
        **split.extra,
    }
    tables = {  # name → a function making its table(s), called by the thread that writes it
        "train": partial(_train_blocks, data, train, train_starts),
        **{name: partial(_target_blocks, data, rows_, _history_ends(data, split, rows_),
                         max_history=max_history)
           for name, rows_ in targets.items()},
        "items": partial(_item_table, item_ids, counts,
                         _first_seen(data.item, data.time, len(item_ids)),
                         timestamps=data.timestamps),
        "users": partial(_user_table, user_ids, train_starts, data.item, train),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with ThreadPoolExecutor(max_workers=2) as pool:  # Parquet encoding releases the GIL
            jobs = [pool.submit(_write, tmp / f"{name}.parquet", make)
                    for name, make in tables.items()]
            for job in jobs:
                job.result()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return Path(out_dir)


def _filter(
    data: _EncodedLog, n_read: int, events: list[str] | None, config: PrepareConfig,
    source: str | os.PathLike[str], report: Log,
) -> dict[str, object]:
    """Sort, drop exact duplicates, apply the event filter and the k-core, in place.

    n_read: rows in the log; `data` holds those the rating filter kept. Returns the row count
    after each step (and after each k-core round), also sent to `report`; raises DataError
    naming the filter that leaves no rows.
    """
    rows: dict[str, object] = {"read": n_read, "rating_filter": data.size}
    report({"rows/read": n_read, "rows/rating_filter": data.size}, 0)
    by_item = _sort_by_user_time(data)
    ties = _tie_runs(data.user, data.time)
    if ties.size:
        if not by_item:
            data.reorder(ties, np.lexsort([c[ties] for c in reversed(data.keys())]))
        duplicates = _duplicates(data.keys(), ties)
        if duplicates.size:
            data.keep(_without(data.size, duplicates))
    rows["dedup"] = data.size
    report({"rows/dedup": data.size}, 0)

    _apply_events(data, events, config, source)
    rows["event_filter"] = data.size
    report({"rows/event_filter": data.size}, 0)

    kept, rounds = _kcore(
        data.user, data.item,
        min_user=config.min_user_interactions, min_item=config.min_item_interactions,
    )
    for step, count in enumerate(rounds, start=1):
        report({"rows/kcore": count}, step)
    if rounds and rounds[-1] == 0:
        raise DataError(
            f"k-core {config.min_user_interactions}/{config.min_item_interactions} left no "
            f"interactions (of {data.size} after the earlier filters)",
            path=source,
        )
    if rounds:
        data.keep(kept)
    rows["kcore"] = data.size
    rows["kcore_rounds"] = rounds
    return rows


# ---------------------------------------------------------------------------------------------
# Reading and validation: polars' lazy engine over the files, strings never held per row.


@dataclass
class _Vocab:
    """Distinct ids as sorted strings; a row's code is its id's position here."""

    users: np.ndarray  # (U,) object: str
    items: np.ndarray  # (I,) object: str
    events: list[str] | None


def _read(
    source: str | os.PathLike[str], config: PrepareConfig
) -> tuple[_EncodedLog, _Vocab, list[Path], int]:
    """Validate the log and encode the rows the rating filter keeps: (integer columns,
    vocabularies, files read, rows in the log).

    Two streaming passes: the row counts and distinct ids (sorted as strings into
    vocabularies), then the kept rows joined to their codes, so no string column, and no
    rating, is ever held per row. Ids are validated on every row, other columns on kept rows.
    """
    lf, files = _scan(source, config)
    schema = _checked_schema(lf, source, config)

    def located(predicate: pl.Expr, column: str, message: str) -> DataError:
        return _locate(source, config, predicate, column, message)

    kept = pl.lit(True)  # the rating filter
    counts = [pl.len().alias("read")]
    if config.min_rating is not None:
        kept = pl.col("rating").cast(pl.Float64) >= config.min_rating
        counts += [_good_number("rating").all().alias("valid"), kept.sum().alias("kept"),
                   pl.col("rating").cast(pl.Float64).max().alias("highest")]
    keys = [_id_expr(name, schema[name]) for name in ("user_id", "item_id")]
    queries = [lf.select(counts), *(lf.select(key).unique() for key in keys)]
    if "event" in schema:
        queries.append(lf.select(pl.col("event").cast(pl.String)).unique())
    distinct = _collect_all(queries, source)
    n_read = n_rows = distinct[0]["read"].item()
    if n_read == 0:
        raise DataError("the log has no rows", path=source)
    if config.min_rating is not None:
        if not distinct[0]["valid"].item():
            raise located(~_good_number("rating"), "rating", "null, NaN or infinite rating")
        n_rows = distinct[0]["kept"].item()
        if n_rows == 0:
            raise DataError(
                f"min_rating {config.min_rating} left no interactions; the highest rating is "
                f"{distinct[0]['highest'].item()}",
                path=source, column="rating",
            )
    vocab_frames = []
    for name, values in zip(("user_id", "item_id"), distinct[1:3], strict=True):
        if values[name].null_count():
            raise located(pl.col(name).is_null(), name, "null id")
        text = values.select(pl.col(name).alias("key"), pl.col(name).cast(pl.String).alias("id"))
        if (text["id"].str.len_bytes() == 0).any():
            raise located(pl.col(name).cast(pl.String) == "", name, "empty id")
        vocab_frames.append(text.sort("id").with_row_index("code"))
    users, items = vocab_frames
    events = sorted(distinct[3]["event"].drop_nulls().to_list()) if "event" in schema else None
    if events is not None:
        _check_event_names(events, config, source)

    columns = {"user_id": keys[0], "item_id": keys[1]}
    dtypes = {"user": np.uint32, "item": np.uint32}
    timestamps = "timestamp" in schema
    if timestamps:
        columns["time"] = _time_expr(schema["timestamp"])
        dtypes["time"] = np.int64
    if "weight" in schema:
        columns["weight"] = pl.col("weight").cast(pl.Float64)
        dtypes["weight"] = np.float64
    if events is not None:
        columns["event"] = (pl.col("event").cast(pl.String).cast(pl.Enum(events)).to_physical()
                            .cast(pl.UInt32).fill_null(len(events)))  # null: code len(events)
        dtypes["event"] = np.uint32
    encoded = (
        lf.filter(kept).select(**columns)
        .join(users.lazy().select(user_id="key", user=pl.col("code").cast(pl.UInt32)),
              on="user_id")
        .join(items.lazy().select(item_id="key", item=pl.col("code").cast(pl.UInt32)),
              on="item_id")
        .select(*dtypes)
    )
    # Batches are copied straight into preallocated columns: no per-row frame is ever held.
    arrays = {name: np.empty(n_rows, dtype=dtype) for name, dtype in dtypes.items()}
    filled = 0
    try:
        for batch in encoded.collect_batches(maintain_order=False, engine="streaming"):
            if timestamps and batch["time"].null_count():
                raise _time_error(source, config, kept, schema["timestamp"])
            if "weight" in dtypes and not batch.select(_good_number("weight", minimum=0.0)) \
                    .to_series().all():
                raise located(kept & ~_good_number("weight", minimum=0.0), "weight",
                              "null, non-finite or negative weight")
            for name, column in arrays.items():
                column[filled:filled + batch.height] = batch[name].to_numpy()
            filled += batch.height
    except pl.exceptions.PolarsError as err:
        raise DataError(f"cannot read: {_first_line(err)}", path=source) from err
    if not timestamps:  # every row ties in time until `_random_order`
        arrays["time"] = np.zeros(n_rows, dtype=np.int64)
    vocab = _Vocab(users["id"].to_numpy(), items["id"].to_numpy(), events)
    return _EncodedLog(**arrays, timestamps=timestamps), vocab, files, n_read


def _check_event_names(
    events: list[str], config: PrepareConfig, source: str | os.PathLike[str]
) -> None:
    """DataError naming the names in `config.events` or `config.event_weights` that are no
    row's event (a typo would silently drop or leave those rows), listing the log's events."""
    present = set(events)
    for option, names in (("events", config.events), ("event_weights", config.event_weights)):
        unknown = [name for name in names or () if name not in present]
        if unknown:
            raise DataError(f"{option} names {unknown}, which no row has; the log's events "
                            f"are {events}", path=source, column="event")


def _good_number(name: str, *, minimum: float | None = None) -> pl.Expr:
    """True for a finite value (≥ minimum if given); False for null, NaN, ±inf (or below)."""
    value = pl.col(name).cast(pl.Float64)
    good = value.is_finite()
    if minimum is not None:
        good &= value >= minimum
    return good.fill_null(False)


def _scan(
    source: str | os.PathLike[str], config: PrepareConfig, *, file_column: bool = False
) -> tuple[pl.LazyFrame, list[Path]]:
    """Lazy scan of a Parquet file, folder (hive partitions too) or glob, or of CSV file(s).

    Returns the scan, renamed by `config.columns`, and the files it reads. The files of a folder or
    glob must agree on their schemas for one scan to read them all; when they do not (a
    folder written by several jobs), each is scanned alone and `_union` casts them to one
    schema or names the file that cannot agree. A file that cannot be read is named too.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():  # before the glob test: a file may be named "log[1].parquet"
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet")
                       if p.is_file() and not p.name.startswith(HIDDEN))
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).is_file() and not Path(p).name.startswith(HIDDEN))
    else:
        raise DataError("no such file or folder", path=text)
    if not files:
        raise DataError("no Parquet files found", path=text)
    paths = _FILE if file_column else None
    kinds = {f.suffix.lower() == ".csv" for f in files}
    if len(kinds) > 1:
        raise DataError("mixes CSV and Parquet files; use one format", path=text)
    csv = kinds.pop()
    if len(files) > 1:
        frames = [_scan_file(f, csv=csv, hive=path.is_dir(), paths=paths) for f in files]
        schemas = [_schema(lf, f) for lf, f in zip(frames, files, strict=True)]
        if any(schema != schemas[0] for schema in schemas[1:]):
            renamed = [_renamed(lf, schema, config.columns, f)
                       for lf, schema, f in zip(frames, schemas, files, strict=True)]
            return _union(renamed, files, config), files
    try:
        if csv:
            lf = pl.scan_csv([str(f) for f in files], try_parse_dates=True, glob=False,
                             infer_schema_length=10_000, include_file_paths=paths)
        else:
            lf = pl.scan_parquet(text, include_file_paths=paths, hidden_file_prefix=HIDDEN,
                                 glob=not path.is_file())
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"cannot read: {_first_line(err)}", path=text) from err
    return _renamed(lf, _schema(lf, text), config.columns, text), files


def _scan_file(path: Path, *, csv: bool, hive: bool, paths: str | None) -> pl.LazyFrame:
    """Lazy scan of one file of a folder or glob, as `_scan` reads them all at once: hive
    partition columns from its path when the source is a folder."""
    try:
        if csv:
            return pl.scan_csv(path, try_parse_dates=True, infer_schema_length=10_000,
                               include_file_paths=paths, glob=False)
        return pl.scan_parquet(path, hive_partitioning=hive, include_file_paths=paths,
                               glob=False)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"cannot read: {_first_line(err)}", path=path) from err


def _schema(lf: pl.LazyFrame, path: str | os.PathLike[str]) -> pl.Schema:
    """The scan's schema; DataError naming `path` when it cannot be read (not Parquet,
    truncated)."""
    try:
        return lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"cannot read: {_first_line(err)}", path=path) from err


def _renamed(
    lf: pl.LazyFrame, schema: pl.Schema, columns: Mapping[str, str] | None,
    path: str | os.PathLike[str],
) -> pl.LazyFrame:
    """`lf` with `columns` renamed; DataError naming a source column the file lacks (a typo
    would silently leave that column, say the weights, unread), listing those it has."""
    if not columns:
        return lf
    unknown = [name for name in columns if name not in schema]
    if unknown:
        raise DataError(f"columns renames {unknown}, which the file lacks; it has "
                        f"{[c for c in schema if c != _FILE]}", path=path, column=unknown[0])
    return lf.rename(columns)


def _union(
    frames: list[pl.LazyFrame], files: list[Path], config: PrepareConfig
) -> pl.LazyFrame:
    """One scan of files whose schemas differ: each file's contract columns that `config`
    reads cast to one type per column (`_common_dtype`: ids to strings, as they are compared
    anyway), other columns dropped. DataError naming the first file that lacks such a column
    another file has, or whose type for one cannot agree with the others'."""
    schemas = [lf.collect_schema() for lf in frames]  # renamed; the files were read already
    picked = []
    for name in _read_columns(config):
        having = [f for f, schema in zip(files, schemas, strict=True) if name in schema]
        if not having:
            continue
        if len(having) < len(files):
            lacking = next(f for f in files if f not in having)
            raise DataError(f"missing column, which {having[0]} has", path=lacking,
                            column=name)
        dtypes = [schema[name] for schema in schemas]
        common = _common_dtype(name, dtypes)
        if common is None:
            raise _disagreement(name, dtypes, files, config)
        picked.append(pl.col(name).cast(common))
    if _FILE in schemas[0]:
        picked.append(pl.col(_FILE))
    return pl.concat([lf.select(picked) for lf in frames])


def _common_dtype(name: str, dtypes: Sequence[pl.DataType]) -> pl.DataType | None:
    """The type the files' `name` columns of `dtypes` are read as: theirs if they agree;
    else strings for ids and events, floats for weights and ratings, Int64 for int seconds
    and UTC µs for dates and datetimes; None if a type breaks the contract or they are
    different kinds of time."""
    if all(dtype == dtypes[0] for dtype in dtypes):
        return dtypes[0]
    ok, _ = _CONTRACT_TYPES[name]
    if not all(ok(dtype) for dtype in dtypes):
        return None
    if name in ("user_id", "item_id", "event"):
        return pl.String
    if name in ("weight", "rating"):
        return pl.Float64
    if all(dtype.is_integer() for dtype in dtypes):
        return pl.Int64
    if all(isinstance(dtype, pl.Datetime) or dtype == pl.Date for dtype in dtypes):
        return pl.Datetime("us", "UTC")
    return None


def _disagreement(
    name: str, dtypes: Sequence[pl.DataType], files: Sequence[Path], config: PrepareConfig
) -> DataError:
    """The DataError for files whose `name` types cannot agree: the first file whose type
    breaks the contract, with a value, or the first whose kind of time differs."""
    ok, _ = _CONTRACT_TYPES[name]
    for path, dtype in zip(files, dtypes, strict=True):
        if not ok(dtype):
            return _type_error(path, config, name, dtype)
    path, dtype = next((f, d) for f, d in zip(files, dtypes, strict=True) if d != dtypes[0])
    return DataError(f"is {dtype} here but {dtypes[0]} in {files[0]}; give every file one "
                     f"type of time", path=path, column=name)


def _checked_schema(
    lf: pl.LazyFrame, source: str | os.PathLike[str], config: PrepareConfig
) -> pl.Schema:
    """The contract columns' dtypes; DataError for a missing column or a wrong type."""
    schema = _schema(lf, source)
    needed = dict.fromkeys(REQUIRED, "")  # column → why this config needs it
    if config.events is not None or config.event_weights is not None:
        needed["event"] = "events and event_weights read it"
    if config.min_rating is not None:
        needed["rating"] = f"min_rating={config.min_rating} reads it"
    if config.protocol != "holdout_users":
        needed["timestamp"] = (f"the {config.protocol} protocol orders interactions by time; "
                               f'a log without timestamps needs protocol="holdout_users"')
    elif config.fold_in == "time":
        needed["timestamp"] = ('fold_in="time" gives the earliest interactions as history; a '
                               'log without timestamps needs fold_in="random" or "auto"')
    for name, why in needed.items():
        if name not in schema:
            raise DataError(
                f"missing column{'; ' + why if why else ''}; the file has {list(schema)}",
                path=source, column=name,
            )
    for name in _read_columns(config):
        ok, _ = _CONTRACT_TYPES[name]
        if name in schema and not ok(schema[name]):
            raise _type_error(source, config, name, schema[name])
    return schema


def _type_error(
    source: str | os.PathLike[str], config: PrepareConfig, name: str, dtype: pl.DataType
) -> DataError:
    """The DataError for a contract column of the wrong type, naming a value that shows it."""
    offending = pl.col(name).is_not_null()
    if dtype == pl.String:  # only weight and rating refuse strings: name one
        offending &= pl.col(name).cast(pl.Float64, strict=False).is_null()
    return _locate(source, config, offending, name,
                   f"must be {_CONTRACT_TYPES[name][1]}, got {dtype}")


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def _is_id(dtype: pl.DataType) -> bool:
    return dtype.is_integer() or _is_text(dtype)


def _is_time(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime) or dtype in (pl.Date, pl.String) or dtype.is_integer()


def _is_number(dtype: pl.DataType) -> bool:
    return dtype.is_numeric()


# The contract's columns: the type each must have, and how to say it.
_CONTRACT_TYPES: dict[str, tuple[Callable[[pl.DataType], bool], str]] = {
    "user_id": (_is_id, "an integer or string id"),
    "item_id": (_is_id, "an integer or string id"),
    "timestamp": (_is_time, "a timestamp, a date, int seconds or a parseable string"),
    "event": (_is_text, "a string"),
    "weight": (_is_number, "a number"),
    "rating": (_is_number, "a number"),
}


def _read_columns(config: PrepareConfig) -> list[str]:
    """The contract columns `config` reads where the log has them: all but an unused rating."""
    return [name for name in _CONTRACT_TYPES if name != "rating" or config.min_rating is not None]


def _id_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Ids join in their own dtype (cheaper than strings); categoricals become strings."""
    return pl.col(name).cast(pl.String) if isinstance(dtype, pl.Categorical | pl.Enum) else (
        pl.col(name)
    )


def _time_count(dtype: pl.DataType) -> tuple[pl.Expr, int]:
    """The timestamp as a whole number of units since the epoch (UTC), and that unit in ns:
    int seconds as given, dates in days, datetimes in their own unit, strings parsed to µs
    (null where they do not parse). Nothing is multiplied yet, so nothing has overflowed."""
    raw = pl.col("timestamp")
    if dtype.is_integer():
        return raw, _NS_PER["s"]
    if dtype == pl.Date:
        return raw.dt.epoch("d"), _NS_PER["d"]
    if dtype == pl.String:
        return raw.str.to_datetime(time_unit="us", strict=False).dt.epoch("us"), _NS_PER["us"]
    return raw.dt.epoch(dtype.time_unit), _NS_PER[dtype.time_unit]


def _in_window(count: pl.Expr, unit: int) -> pl.Expr:
    """Whether `count` units (of `unit` ns) since the epoch lie in the window (null if null)."""
    return count.is_between(0, _MAX_NS // unit)


def _time_expr(dtype: pl.DataType) -> pl.Expr:
    """Microseconds since the epoch (UTC); null where a string does not parse or a time lies
    outside the window, so no out-of-range time is ever converted (an int of 2**62 seconds
    times 10**6 would wrap around to 1970)."""
    count, unit = _time_count(dtype)
    micros = count.cast(pl.Int64, strict=False)  # a UInt64 past int64 is outside anyway
    micros = micros * (unit // 1000) if unit >= 1000 else micros // (1000 // unit)
    return pl.when(_in_window(count, unit)).then(micros)


def _time_error(
    source: str | os.PathLike[str], config: PrepareConfig, kept: pl.Expr, dtype: pl.DataType
) -> DataError:
    """The DataError for the first kept row whose timestamp is null, unparseable or outside
    the window; for int times, the unit that row's file looks like when it is not seconds."""
    count, unit = _time_count(dtype)
    hit = _first_hit(source, config, kept & count.is_null(), "timestamp")
    if hit is not None:
        return DataError("null or unparseable timestamp", path=hit[0], column="timestamp",
                         value=hit[1])
    message = f"outside {_WINDOW}"
    hit = _first_hit(source, config, kept & ~_in_window(count, unit), "timestamp")
    if hit is None:  # the source changed or broke since it was read
        return DataError(message, path=source, column="timestamp")
    if dtype.is_integer():
        lf, _ = _scan(source, config, file_column=True)
        low, high = (lf.filter(kept & (pl.col(_FILE) == hit[0]))
                     .select(pl.col("timestamp").min().alias("low"),
                             pl.col("timestamp").max().alias("high")).collect().row(0))
        message += f" as int seconds since the epoch{_unit_hint(low, high)}"
    return DataError(message, path=hit[0], column="timestamp", value=hit[1])


def _unit_hint(low: int, high: int) -> str:
    """The unit int times from `low` to `high` look like when every one of them lies past the
    window as seconds and inside it in that unit (ms first); "" otherwise, e.g. for a file of
    seconds with one stray value."""
    last_second = _MAX_NS // _NS_PER["s"]
    if low <= last_second:
        return ""
    for name, per_second in (("milliseconds", 10**3), ("microseconds", 10**6),
                             ("nanoseconds", 10**9)):
        if high // per_second <= last_second:
            return (f"; these look like {name} since the epoch; convert to seconds (divide "
                    f"by {per_second:,})")
    return ""


def _first_hit(
    source: str | os.PathLike[str],
    config: PrepareConfig,
    predicate: pl.Expr,
    column: str,
) -> tuple[str, object] | None:
    """(file, value of `column`) of the first row matching `predicate`; None if no row does or
    the source cannot be read."""
    lf, _ = _scan(source, config, file_column=True)
    try:
        hit = lf.filter(predicate).select(pl.col(column), pl.col(_FILE)).head(1).collect()
    except pl.exceptions.PolarsError:
        return None
    return (hit[_FILE][0], hit[column][0]) if hit.height else None


def _locate(
    source: str | os.PathLike[str],
    config: PrepareConfig,
    predicate: pl.Expr,
    column: str,
    message: str,
) -> DataError:
    """The DataError for the first row matching `predicate`, naming its file and value."""
    hit = _first_hit(source, config, predicate, column)
    if hit is None:
        return DataError(message, path=source, column=column)
    return DataError(message, path=hit[0], column=column, value=hit[1])


def _collect_all(queries: list[pl.LazyFrame], source: str | os.PathLike[str]) -> list[pl.DataFrame]:
    try:
        return pl.collect_all(queries, engine="streaming")
    except pl.exceptions.PolarsError as err:
        raise DataError(f"cannot read: {_first_line(err)}", path=source) from err


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---------------------------------------------------------------------------------------------
# The encoded log and the steps on it: numpy over integer columns.


_COLUMNS = ("user", "item", "time", "weight", "event")


@dataclass
class _EncodedLog:
    """The log as parallel columns, one row per interaction.

    Steps return row selections and `keep` applies them one column at a time, so no more than
    one column is ever held twice: that, not speed, is why this container mutates.
    """

    user: np.ndarray  # (N,) user code (index once contiguous)
    item: np.ndarray  # (N,) item code
    time: np.ndarray  # (N,) i64 µs since the epoch; without timestamps 0, then a random rank
    weight: np.ndarray | None = None  # (N,) f64; None means 1.0 everywhere
    event: np.ndarray | None = None  # (N,) u32 event code, len(events) for a null event
    timestamps: bool = True  # False: the log had none and `time` only orders rows

    @property
    def size(self) -> int:
        return self.user.shape[0]

    def keys(self) -> list[np.ndarray]:
        """The columns that order rows (user, time, item, event, weight) and define duplicates."""
        return [c for c in (self.user, self.time, self.item, self.event, self.weight)
                if c is not None]

    def keep(self, rows: np.ndarray) -> None:
        """Keep `rows` (ascending indices, a permutation or a boolean mask), in that order.

        Columns set to None are skipped: `_sort_by_user_time` rebuilds user and time itself.
        """
        for name in _COLUMNS:
            column = getattr(self, name)
            if column is not None:
                setattr(self, name, column[rows])

    def reorder(self, where: np.ndarray, order: np.ndarray) -> None:
        """Rows at positions `where` (K,) take the values of rows `where[order]`."""
        for name in _COLUMNS:
            column = getattr(self, name)
            if column is not None:
                column[where] = column[where[order]]


def _sort_by_user_time(data: _EncodedLog) -> bool:
    """Sort the log by (user, time) in place; True if by (user, time, item), which orders
    rows tying on (user, time) as `_filter` needs, else `_filter` orders them itself.

    User and time (in its coarsest exact unit: s, ms or µs) are packed into one u64 key, and
    the item too when it fits and no weight or event column needs to move with the rows:
    then the key sorts in place and no permutation exists at all. Otherwise numpy's argsort of
    the key needs just the (N,) index array. The packed columns are freed while the key sorts
    and are unpacked from it afterwards. If user and time need more than 64 bits, polars'
    multi-column sort.
    """
    start = int(data.time.min())
    unit = next(u for u in (_US, 1000, 1) if _all_multiples(data.time, start, u))
    fields = [("user", 0, 1, data.user.dtype), ("time", start, unit, np.int64),
              ("item", 0, 1, data.item.dtype)]  # name, offset, unit, dtype
    bits = [int(data.user.max()).bit_length(),
            ((int(data.time.max()) - start) // unit).bit_length(),
            int(data.item.max()).bit_length()]
    if data.weight is not None or data.event is not None or sum(bits) > 64:
        fields, bits = fields[:2], bits[:2]
    if sum(bits) > 64:
        frame = pl.DataFrame({"user": data.user, "time": data.time})
        data.keep(frame.select(pl.arg_sort_by("user", "time")).to_series().to_numpy())
        return False
    key = np.zeros(data.size, dtype=np.uint64)
    for first in range(0, data.size, _BLOCK_ROWS):  # in blocks: no (N,) temporaries
        block = key[first:first + _BLOCK_ROWS]
        for (name, offset, step, _), width in zip(fields, bits, strict=True):
            value = getattr(data, name)[first:first + _BLOCK_ROWS]
            if step != 1 or offset:
                value = (value - offset) // step
            block <<= np.uint64(width)
            block |= value.astype(np.uint64)
    for name, *_ in fields:
        setattr(data, name, None)  # the key holds them while it sorts
    if len(fields) == 3:
        key.sort()
    else:
        order = np.argsort(key)
        key = key[order]
        data.keep(order)
        del order
    for (name, offset, step, dtype), width in reversed(list(zip(fields, bits, strict=True))):
        value = (key & np.uint64((1 << width) - 1)).astype(dtype)
        if step != 1 or offset:
            value *= step
            value += offset
        setattr(data, name, value)
        key >>= np.uint64(width)
    return len(fields) == 3


def _all_multiples(time: np.ndarray, start: int, unit: int) -> bool:
    """Whether every time − start is a multiple of unit (blockwise: no (N,) temporary)."""
    return not any(
        np.any((time[first:first + _BLOCK_ROWS] - start) % unit)
        for first in range(0, time.shape[0], _BLOCK_ROWS)
    )


def _tie_runs(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """(K,) ascending positions of rows sharing (user, time) with a neighbour (sorted input).

    Only these rows need ordering by item, event and weight, and only they can be duplicates.
    """
    tied = (user[1:] == user[:-1]) & (time[1:] == time[:-1])  # (N − 1,) row i+1 ties row i
    run = np.zeros(user.shape[0], dtype=bool)
    run[1:] = tied
    run[:-1] |= tied
    return np.flatnonzero(run)


def _duplicates(keys: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """(D,) positions equal in every key to the row before them (identical rows adjacent)."""
    rows = candidates[candidates > 0]
    same = np.ones(rows.shape[0], dtype=bool)
    for column in keys:
        same &= column[rows] == column[rows - 1]
    return rows[same]


def _without(n: int, rows: np.ndarray) -> np.ndarray:
    """(n,) boolean mask that is False at `rows`."""
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return mask


def _apply_events(
    data: _EncodedLog, events: list[str] | None, config: PrepareConfig,
    source: str | os.PathLike[str],
) -> None:
    """Keep only `config.events`, multiply weights by `config.event_weights`, drop the codes.

    Every name in them is one of `events`, the log's (`_check_event_names`)."""
    if data.event is None:
        return
    codes = {name: code for code, name in enumerate(events or [])}
    if config.events is not None:
        allowed = np.zeros(len(codes) + 1, dtype=bool)  # last slot: null event, never kept
        allowed[[codes[e] for e in config.events]] = True
        data.keep(allowed[data.event])
        if data.size == 0:
            raise DataError(
                f"the event filter {list(config.events)} left no interactions; the log's "
                f"events are {events}",
                path=source, column="event",
            )
    if config.event_weights is not None:
        factor = np.ones(len(codes) + 1)
        for name, value in config.event_weights.items():
            factor[codes[name]] = value
        base = 1.0 if data.weight is None else data.weight
        data.weight = base * factor[data.event]
    data.event = None


def _kcore(
    user: np.ndarray, item: np.ndarray, *, min_user: int, min_item: int
) -> tuple[np.ndarray, list[int]]:
    """Iterative k-core: (N,) mask of kept rows, and the row count after each pruning round.

    A round drops every row whose user has fewer than `min_user` rows or whose item has fewer
    than `min_item` rows. Dropping rows lowers other counts, so rounds repeat until one drops
    nothing: the fixed point is the largest subset where every user and item meets its k.
    Rounds that drop nothing are not listed, so no rounds means nothing was dropped.
    """
    kept = np.ones(user.shape[0], dtype=bool)
    rounds: list[int] = []
    while user.size:
        ok = (_counts(user) >= min_user)[user] & (_counts(item) >= min_item)[item]
        if ok.all():
            break
        kept[kept] = ok
        user, item = user[ok], item[ok]
        rounds.append(int(user.size))
    return kept, rounds


def _contiguous(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes to 0..K-1 keeping their order: (new codes (N,) i32, old codes (K,))."""
    present = np.zeros(int(codes.max()) + 1, dtype=bool)
    present[codes] = True
    new = (np.cumsum(present) - 1).astype(np.int32)
    return new[codes], np.flatnonzero(present)


def _random_order(data: _EncodedLog, seed: int) -> None:
    """Without timestamps: put each user's rows in a seeded random order, in place.

    Rows arrive sorted by (user, item, event, weight), an order a history would otherwise
    carry into training; a seeded permutation of that canonical order becomes the time
    column, so the result depends on the log and the seed only, not on file or row order.
    """
    data.time = np.random.default_rng((seed, _ROW_ORDER)).permutation(data.size)
    _sort_by_user_time(data)


# ---------------------------------------------------------------------------------------------
# Split protocols. Rows arrive sorted by (user, time, item), so a user's rows are one run;
# holdout_users' random fold-in then moves each held-out user's drawn rows to the front.


@dataclass
class _Split:
    """Which part each row goes to, and what the manifest should know about it."""

    part: np.ndarray  # (N,) i8: _TRAIN, _VALID, _TEST or _FOLD_IN
    extra: dict[str, object]  # protocol facts for the manifest (cuts, held-out users)
    fold_in_end: np.ndarray | None = None  # (U,) holdout_users: a user's first target row


def _split(
    data: _EncodedLog, n_users: int, config: PrepareConfig, source: str | os.PathLike[str]
) -> _Split:
    """The configured protocol's split; DataError if a part comes out empty."""
    starts = _user_starts(data.user, n_users)
    if config.protocol == "temporal":
        split = _temporal_split(data.time, config.valid_fraction, config.test_fraction)
    elif config.protocol == "leave_last_out":
        split = _leave_last_out_split(starts)
    else:
        rule = config.fold_in if config.fold_in != "auto" else (
            "time" if data.timestamps else "random")
        split = _holdout_users_split(
            data, starts, valid_fraction=config.valid_fraction,
            test_fraction=config.test_fraction, fold_in_fraction=config.fold_in_fraction,
            random_fold_in=rule == "random", seed=config.seed,
        )
    for part, name in ((_TRAIN, "training"), (_VALID, "validation"), (_TEST, "test")):
        if not np.any(split.part == part):
            raise DataError(
                f"the {config.protocol} split left no {name} interactions "
                f"({data.size} interactions, {n_users} users after filtering)",
                path=source,
            )
    return split


def _user_starts(user: np.ndarray, n_users: int) -> np.ndarray:
    """(U + 1,) offsets of sorted rows: user u's rows are [starts[u], starts[u + 1])."""
    return np.concatenate([[0], np.cumsum(_counts(user, n_users))])


def _counts(codes: np.ndarray, size: int = 0) -> np.ndarray:
    """np.bincount in blocks: numpy casts its input to int64, which for a whole (N,) column
    would be an 8-byte temporary per row. Length max(size, max code + 1)."""
    counts = np.zeros(max(size, int(codes.max()) + 1 if codes.size else 0), dtype=np.int64)
    for first in range(0, codes.shape[0], _BLOCK_ROWS):
        counts += np.bincount(codes[first:first + _BLOCK_ROWS], minlength=counts.shape[0])
    return counts


def _temporal_split(time: np.ndarray, valid_fraction: float, test_fraction: float) -> _Split:
    """One global time cut per split: train < t_valid ≤ valid < t_test ≤ test.

    t_valid is the timestamp at rank ⌊(1 − valid − test)·N⌋ of the sorted times and t_test
    the one at ⌊(1 − test)·N⌋, so rows sharing a timestamp never straddle a cut. An item
    first seen at or after t_valid has no training row: it is cold.
    """
    n = time.shape[0]
    ranks = [int((1.0 - valid_fraction - test_fraction) * n), int((1.0 - test_fraction) * n)]
    t_valid, t_test = np.partition(time, ranks)[ranks]
    part = (time >= t_valid).view(np.int8) + (time >= t_test).view(np.int8)
    return _Split(part, {"cuts": {"valid": _iso(t_valid), "test": _iso(t_test)}})


def _leave_last_out_split(starts: np.ndarray) -> _Split:
    """Per user: the last interaction (by time, then item) is test, the one before valid, the
    rest train. A user with a single interaction has only a test row."""
    counts, ends = np.diff(starts), starts[1:]
    part = np.zeros(int(starts[-1]), dtype=np.int8)
    part[ends[counts >= 1] - 1] = _TEST
    part[ends[counts >= 2] - 2] = _VALID
    return _Split(part, {})


def _holdout_users_split(
    data: _EncodedLog,
    starts: np.ndarray,
    *,
    valid_fraction: float,
    test_fraction: float,
    fold_in_fraction: float,
    random_fold_in: bool,
    seed: int,
) -> _Split:
    """Strong generalization (Liang et al. 2018, "Variational Autoencoders for Collaborative
    Filtering", sec. 4.2): a seeded draw of users is held out for valid and for test, and their
    rows never train. Of a held-out user's n rows, round(fold_in_fraction · n), at least 1 and
    at most n − 1, are fold-in history and the rest targets: the earliest ones, or with
    random_fold_in a seeded uniform draw (Liang et al.'s random 80/20 split), for which the
    user's rows are reordered so the drawn ones come first (`_random_fold_in_first`). Either
    way the fold-in is the first rows of the user's run, ending at `fold_in_end`. Liang et al.
    drop target items unseen in training; we keep them, marked cold, because the image tower
    can embed them.
    """
    n_users = starts.shape[0] - 1
    n_test = max(1, round(test_fraction * n_users))
    n_valid = max(1, round(valid_fraction * n_users))
    user_part = np.zeros(n_users, dtype=np.int8)
    if n_test + n_valid < n_users:  # else no user is held out and _split reports it
        drawn = np.random.default_rng(seed).permutation(n_users)
        user_part[drawn[:n_test]] = _TEST
        user_part[drawn[n_test:n_test + n_valid]] = _VALID
    counts = np.diff(starts)
    fold_in = np.clip(np.floor(fold_in_fraction * counts + 0.5), 1, counts - 1).astype(np.int64)
    fold_in_end = starts[:-1] + fold_in  # (U,)
    part = user_part[data.user]
    held_out = np.flatnonzero(part)  # (H,) every row of every held-out user
    if random_fold_in:
        _random_fold_in_first(data, held_out, starts, fold_in, seed)
    part[held_out[held_out < fold_in_end[data.user[held_out]]]] = _FOLD_IN
    extra = {"held_out_users": {"valid": int(np.count_nonzero(user_part == _VALID)),
                                "test": int(np.count_nonzero(user_part == _TEST))},
             "fold_in": "random" if random_fold_in else "time"}
    return _Split(part, extra, fold_in_end)


def _random_fold_in_first(
    data: _EncodedLog, held_out: np.ndarray, starts: np.ndarray, fold_in: np.ndarray, seed: int
) -> None:
    """Reorder each held-out user's rows, in place, so that fold_in[u] of them drawn uniformly
    at random come first; the drawn rows and the others each keep their (time) order.

    held_out: (H,) ascending rows of the held-out users, all of each one's run; starts:
    (U + 1,) user offsets; fold_in: (U,) rows to draw. A user's draw is its fold_in[u] rows
    with the smallest seeded uniform keys. Only held-out users' rows move: no training row,
    position or first_seen depends on their order.
    """
    user = data.user[held_out]  # (H,)
    key = np.random.default_rng((seed, _FOLD_IN_DRAW)).random(held_out.shape[0])  # (H,)
    by_key = np.lexsort((key, user))  # (H,) each user's rows, smallest key first
    rank = np.empty_like(by_key)
    rank[by_key] = np.arange(by_key.shape[0])
    rank -= np.searchsorted(held_out, starts[user])  # rank among the user's own rows
    target = rank >= fold_in[user]  # (H,)
    data.reorder(held_out, np.lexsort((target, user)))  # stable: each part keeps its order


def _history_ends(data: _EncodedLog, split: _Split, targets: np.ndarray) -> np.ndarray:
    """(T,) exclusive row bound of each target's history.

    holdout_users: the user's fold-in end. Otherwise the first row with the target's user and
    timestamp, so the history holds only interactions strictly before the target in time.
    """
    if split.fold_in_end is not None:
        return split.fold_in_end[data.user[targets]]
    end = targets.copy()
    active = np.flatnonzero(end > 0)
    while active.size:  # step back over earlier rows tying on (user, time); runs are short
        row = end[active]
        same = (data.user[row - 1] == data.user[row]) & (data.time[row - 1] == data.time[row])
        active = active[same]
        end[active] -= 1
        active = active[end[active] > 0]
    return end


# ---------------------------------------------------------------------------------------------
# Tables and writers. Row tables go out in blocks, so memory stays O(block) however long the
# histories are.


def _write(path: Path, make: Callable[[], pa.Table | Iterable[pa.Table]]) -> None:
    """Write `make()`'s table(s) as row groups of one Parquet file.

    zstd without dictionary encoding: faster and smaller than pyarrow's defaults on these
    integer columns.
    """
    tables = make()
    writer = None
    try:
        for table in [tables] if isinstance(tables, pa.Table) else tables:
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd",
                                          use_dictionary=False)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
        pa.default_memory_pool().release_unused()  # the pool keeps freed blocks otherwise


def _train_blocks(data: _EncodedLog, rows: np.ndarray, starts: np.ndarray) -> Iterator[pa.Table]:
    """Training rows with `position`, their index in the user's time-ordered training rows.

    starts: (U + 1,) offsets of each user's rows within `rows`.
    """
    for first in range(0, rows.shape[0], _BLOCK_ROWS):
        block = rows[first:first + _BLOCK_ROWS]
        user = data.user[block]
        position = np.arange(first, first + block.shape[0]) - starts[user]
        yield _rows_table(data, block).append_column(
            "position", pa.array(position.astype(np.int32))
        )


def _target_blocks(
    data: _EncodedLog, rows: np.ndarray, ends: np.ndarray, *, max_history: int | None
) -> Iterator[pa.Table]:
    """Valid/test targets with their `history` list column: the user's rows before `ends`,
    the last `max_history` of them (None: all).

    A block holds at most _BLOCK_TARGETS targets and _BLOCK_HISTORY history entries (or one
    target), so uncapped histories of heavy users never build one huge block.
    """
    starts = _user_starts(data.user, int(data.user.max()) + 1)
    begins = starts[data.user[rows]]  # (T,)
    if max_history is not None:
        np.maximum(begins, ends - max_history, out=begins)
    total = np.cumsum(ends - begins)  # (T,) history entries up to and including each target
    first = 0
    while first < rows.shape[0]:
        done = total[first - 1] if first else 0
        last = min(first + _BLOCK_TARGETS,
                   max(int(np.searchsorted(total, done + _BLOCK_HISTORY, side="right")),
                       first + 1))
        block = rows[first:last]
        history = _histories(data.item, begins[first:last], ends[first:last], data.item[block])
        yield _rows_table(data, block).append_column("history", history)
        first = last


def _histories(
    item: np.ndarray, first: np.ndarray, end: np.ndarray, target: np.ndarray
) -> pa.ListArray:
    """Target r's history: item[first_r : end_r] without target_r.

    item: (N,) the sorted log's items; first, end, target: (T,). An earlier interaction with
    the target item itself is removed, so a history never contains its answer.
    """
    lengths = end - first  # (T,)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(offsets[-1], dtype=np.int64)  # (Σ lengths,) then row in `item`
    index += np.repeat(first - offsets[:-1], lengths)
    values = item[index]
    del index
    repeats = np.flatnonzero(values == np.repeat(target, lengths))
    if repeats.size:
        owner = np.searchsorted(offsets, repeats, side="right") - 1
        offsets[1:] -= np.cumsum(_counts(owner, lengths.shape[0]))
        values = np.delete(values, repeats)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values.astype(np.int32)))


def _rows_table(data: _EncodedLog, rows: np.ndarray) -> pa.Table:
    """user_index, item_index, timestamp, weight (float32) of `rows`."""
    weight = (np.ones(rows.shape[0], dtype=np.float32) if data.weight is None
              else data.weight[rows].astype(np.float32))
    return pa.table({
        "user_index": pa.array(data.user[rows]),
        "item_index": pa.array(data.item[rows]),
        "timestamp": _timestamps(data.time[rows], known=data.timestamps),
        "weight": pa.array(weight),
    })


def _first_seen(item: np.ndarray, time: np.ndarray, n_items: int) -> np.ndarray:
    """(I,) earliest timestamp of each item over every kept row (all splits)."""
    first = np.full(n_items, np.iinfo(np.int64).max)
    np.minimum.at(first, item, time)
    return first


def _item_table(
    ids: np.ndarray, counts: np.ndarray, first_seen: np.ndarray, *, timestamps: bool
) -> pa.Table:
    """item_id, item_index, count (training rows), first_seen (null without timestamps), cold
    (no training row)."""
    return pa.table({
        "item_id": pa.array(ids, type=pa.string()),
        "item_index": pa.array(np.arange(len(ids), dtype=np.int32)),
        "count": pa.array(counts.astype(np.int64)),
        "first_seen": _timestamps(first_seen, known=timestamps),
        "cold": pa.array(counts == 0),
    })


def _user_table(
    ids: np.ndarray, starts: np.ndarray, item: np.ndarray, train: np.ndarray
) -> pa.Table:
    """user_id, user_index, history: each user's training items in time order (maybe empty).

    item: (N,) the sorted log's items; train: its training rows; starts: (U + 1,) offsets of
    each user's rows within `train`.
    """
    history = pa.ListArray.from_arrays(pa.array(starts.astype(np.int32)),
                                       pa.array(item[train].astype(np.int32, copy=False)))
    return pa.table({
        "user_id": pa.array(ids, type=pa.string()),
        "user_index": pa.array(np.arange(len(ids), dtype=np.int32)),
        "history": history,
    })


def _timestamps(micros: np.ndarray, *, known: bool = True) -> pa.Array:
    """µs since the epoch → timestamp[us]; all null when the log had no timestamps."""
    if not known:
        return pa.nulls(micros.shape[0], pa.timestamp("us"))
    return pa.array(micros.astype(np.int64, copy=False).view("datetime64[us]"))


def _iso(micros: int) -> str:
    return str(np.datetime64(int(micros), "us"))
