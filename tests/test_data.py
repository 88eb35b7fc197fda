"""`twotower.data.prepare` against a naive pure-Python twin, on every source layout and bad input.

The twin (`naive_prepare`) follows the written protocol with lists and dicts: dedup with a set,
k-core by recounting until nothing changes, vocabularies by sorting id strings, the three
split protocols and the history rule, one target at a time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import twotower.data as data_module
from twotower.data import PROTOCOLS, PrepareConfig, prepare
from twotower.evaluate import load_queries
from twotower.files import DataError, source_stamp
from twotower.inputs import load_training
from twotower.towers import TowerConfig
from twotower.train import TrainConfig, fit

T0 = 1_700_000_000  # seconds since the epoch
ML_RATINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / (
    "ratings.csv"
)
SMALL = {"min_user_interactions": 3, "min_item_interactions": 3}


def random_log(seed: int = 0, rows: int = 600, users: int = 40, items: int = 30,
               span: int = 400) -> pl.DataFrame:
    """A skewed log with many timestamp ties and ~5% exact duplicates.

    Skewed users and items leave some below k, so the k-core needs several rounds. Ratings
    (0.5 to 5 in halves) are drawn per row, so a duplicate may differ from its row in rating.
    """
    rng = np.random.default_rng(seed)
    user = (users * rng.random(rows) ** 2).astype(int)
    item = (items * rng.random(rows) ** 2).astype(int)
    stamp = T0 + rng.integers(0, span, rows)
    copies = rng.integers(0, rows, rows // 20)
    return pl.DataFrame({
        "user_id": [f"u{u}" for u in np.concatenate([user, user[copies]])],
        "item_id": np.concatenate([item, item[copies]]),
        "timestamp": np.concatenate([stamp, stamp[copies]]),
        "extra": "kept but unused",
        "rating": rng.integers(1, 11, rows + rows // 20) / 2,
    })


def read(folder: Path) -> dict[str, pl.DataFrame]:
    names = ("train", "valid", "test", "items", "users")
    return {name: pl.read_parquet(folder / f"{name}.parquet") for name in names}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def assert_same_output(a: Path, b: Path) -> None:
    left, right = read(a), read(b)
    for name in left:
        assert left[name].equals(right[name]), name


# ---------------------------------------------------------------------------------------------
# The naive twin.


def naive_prepare(log: pl.DataFrame, config: PrepareConfig) -> dict:
    """The protocol with plain Python: returns rows per split as tuples and the vocabularies.

    train: (user, item, seconds, position); valid/test: (user, item, seconds, history).
    Without a timestamp column every row gets time 0 (a repeated user-item pair is a
    duplicate), each user's rows take the order of a seeded permutation of the kept rows
    sorted by (user, item), and the seconds come out None.
    """
    timed = "timestamp" in log.columns
    stamps = log["timestamp"] if timed else [0] * log.height
    rows = {(str(u), str(i), int(t)) for u, i, t, r in
            zip(log["user_id"], log["item_id"], stamps, log["rating"], strict=True)
            if config.min_rating is None or r >= config.min_rating}  # rating filter, dedup
    while True:  # k-core
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = {r for r in rows if users[r[0]] >= config.min_user_interactions
                and items[r[1]] >= config.min_item_interactions}
        if kept == rows:
            break
        rows = kept
    user_ids = sorted({r[0] for r in rows})
    item_ids = sorted({r[1] for r in rows})
    uidx = {u: n for n, u in enumerate(user_ids)}
    iidx = {i: n for n, i in enumerate(item_ids)}
    if not timed:  # a random rank per row stands in for the time
        canonical = sorted((uidx[u], iidx[i]) for u, i, _ in rows)
        rank = np.random.default_rng((config.seed, 1)).permutation(len(canonical))
        rows = {(user_ids[u], item_ids[i], int(r))
                for (u, i), r in zip(canonical, rank, strict=True)}
    seq: dict[int, list[tuple[int, int]]] = {}  # user → [(seconds, item)] in time, item order
    for u, i, t in rows:
        seq.setdefault(uidx[u], []).append((t, iidx[i]))
    for events in seq.values():
        events.sort()

    part: dict[tuple[int, int], str] = {}  # (user, position in seq) → split
    history_end: dict[tuple[int, int], int] = {}  # temporal, leave_last_out
    fold_in_items: dict[int, list[int]] = {}  # holdout_users: a held-out user's whole fold-in
    if config.protocol == "temporal":
        times = sorted(t for events in seq.values() for t, _ in events)
        n = len(times)
        t_valid = times[int((1 - config.valid_fraction - config.test_fraction) * n)]
        t_test = times[int((1 - config.test_fraction) * n)]
        for u, events in seq.items():
            for p, (t, _) in enumerate(events):
                part[u, p] = "train" if t < t_valid else "valid" if t < t_test else "test"
                history_end[u, p] = min(q for q, (s, _) in enumerate(events) if s == t)
    elif config.protocol == "leave_last_out":
        for u, events in seq.items():
            for p, (t, _) in enumerate(events):
                last = len(events) - 1
                part[u, p] = "test" if p == last else "valid" if p == last - 1 else "train"
                history_end[u, p] = min(q for q, (s, _) in enumerate(events) if s == t)
    else:
        n_users = len(user_ids)
        n_test = max(1, round(config.test_fraction * n_users))
        n_valid = max(1, round(config.valid_fraction * n_users))
        drawn = list(np.random.default_rng(config.seed).permutation(n_users))
        held = {int(u): "test" for u in drawn[:n_test]}
        held |= {int(u): "valid" for u in drawn[n_test:n_test + n_valid]}
        at_random = config.fold_in == "random" or (config.fold_in == "auto" and not timed)
        # Random fold-in: one uniform key per held-out row, users in order, rows in time order;
        # a user's fold-in is its round(fraction · n) rows with the smallest keys.
        keys = iter(np.random.default_rng((config.seed, 2)).random(
            sum(len(events) for u, events in seq.items() if u in held)))
        for u, events in sorted(seq.items()):
            n = len(events)
            fold_in = min(max(math.floor(config.fold_in_fraction * n + 0.5), 1), n - 1)
            if u not in held:
                part.update({(u, p): "train" for p in range(n)})
                continue
            if at_random:
                key = [next(keys) for _ in events]
                chosen = set(sorted(range(n), key=key.__getitem__)[:fold_in])
            else:
                chosen = set(range(fold_in))
            for p in range(n):
                part[u, p] = "fold_in" if p in chosen else held[u]
            fold_in_items[u] = [j for p, (_, j) in enumerate(events) if p in chosen]

    out: dict = {"train": [], "valid": [], "test": [], "user_ids": user_ids,
                 "item_ids": item_ids, "history": {u: [] for u in range(len(user_ids))}}
    for u, events in sorted(seq.items()):
        for p, (t, i) in enumerate(events):
            name = part[u, p]
            seconds = t if timed else None
            if name == "train":
                out["train"].append((u, i, seconds, len(out["history"][u])))
                out["history"][u].append(i)
            elif name in ("valid", "test") and u in fold_in_items:
                out[name].append((u, i, seconds, [j for j in fold_in_items[u] if j != i]))
            elif name in ("valid", "test"):
                end = history_end[u, p]
                cap = config.max_history
                window = [j for _, j in events[0 if cap is None else max(0, end - cap):end]]
                out[name].append((u, i, seconds, [j for j in window if j != i]))
    out["count"] = Counter(i for _, i, _, _ in out["train"])
    return out


def as_tuples(frame: pl.DataFrame, last: str) -> list[tuple]:
    return [
        (u, i, t, list(h) if isinstance(h, list) else h)
        for u, i, t, h in frame.select(
            "user_index", "item_index", pl.col("timestamp").dt.epoch("s"), last
        ).iter_rows()
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("max_history", "min_rating"), [(None, None), (3, None), (None, 3.5)])
def test_matches_naive_twin(tmp_path, protocol, max_history, min_rating):
    config = PrepareConfig(protocol=protocol, max_history=max_history, min_rating=min_rating,
                           **SMALL)
    folder = assert_matches_naive_twin(random_log(seed=1, rows=900), config, tmp_path)
    assert manifest(folder)["timestamps"] is True


def assert_matches_naive_twin(log: pl.DataFrame, config: PrepareConfig, tmp_path: Path) -> Path:
    """prepare(log) equals naive_prepare(log) in every table; returns the prepared folder."""
    log.write_parquet(tmp_path / "log.parquet")
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    out = read(folder)
    want = naive_prepare(log, config)

    assert out["users"]["user_id"].to_list() == want["user_ids"]
    assert out["items"]["item_id"].to_list() == want["item_ids"]
    assert out["users"]["user_index"].to_list() == list(range(len(want["user_ids"])))
    assert as_tuples(out["train"], "position") == want["train"]
    assert as_tuples(out["valid"], "history") == want["valid"]
    assert as_tuples(out["test"], "history") == want["test"]
    assert out["users"]["history"].to_list() == [want["history"][u]
                                                 for u in range(len(want["user_ids"]))]
    counts = [want["count"][i] for i in range(len(want["item_ids"]))]
    assert out["items"]["count"].to_list() == counts
    assert out["items"]["cold"].to_list() == [c == 0 for c in counts]
    assert out["items"].columns == ["item_id", "item_index", "count", "first_seen", "cold"]
    return folder


@pytest.mark.parametrize("fold_in", ["time", "random"])
def test_fold_in_rules_match_naive_twin(tmp_path, fold_in):
    config = PrepareConfig(protocol="holdout_users", fold_in=fold_in, max_history=3, seed=2,
                           **SMALL)
    folder = assert_matches_naive_twin(random_log(seed=1, rows=900), config, tmp_path)
    assert manifest(folder)["fold_in"] == fold_in


def test_random_fold_in_is_seeded_counted_and_not_the_earliest(tmp_path):
    rng = np.random.default_rng(1)
    users, per_user = 40, 10
    pl.DataFrame({  # distinct items and times per user: a row is (user, item)
        "user_id": np.repeat([f"u{u}" for u in range(users)], per_user),
        "item_id": np.concatenate([rng.choice(30, per_user, replace=False)
                                   for _ in range(users)]),
        "timestamp": T0 + rng.permutation(users * per_user),
    }).write_parquet(tmp_path / "log.parquet")

    def fold_ins(fold_in: str, seed: int = 0) -> dict[int, list[int]]:
        """held-out user → fold-in items, from every target's history (all alike)."""
        config = PrepareConfig(protocol="holdout_users", fold_in=fold_in, seed=seed,
                               min_user_interactions=1, min_item_interactions=1)
        out = read(prepare(tmp_path / "log.parquet", tmp_path / f"{fold_in}-{seed}", config))
        targets = pl.concat([out["valid"], out["test"]])
        histories = targets.group_by("user_index").agg(pl.col("history").unique())
        assert histories["history"].list.len().max() == 1
        return {u: h[0] for u, h in histories.iter_rows()}

    by_time, drawn = fold_ins("time"), fold_ins("random")
    assert drawn == fold_ins("random") and drawn != fold_ins("random", seed=1)
    assert fold_ins("auto") == by_time and sorted(drawn) == sorted(by_time)
    assert all(len(h) == round(0.8 * per_user) for h in drawn.values())
    assert sum(set(drawn[u]) != set(by_time[u]) for u in drawn) >= len(drawn) // 2
    # Both keep time order: the drawn items are the user's items in time order, some skipped.
    out = read(tmp_path / "time-0")
    for u, history in drawn.items():
        timeline = by_time[u] + out["test"].vstack(out["valid"]).filter(
            pl.col("user_index") == u).sort("timestamp")["item_index"].to_list()
        assert history == [i for i in timeline if i in set(history)]


@pytest.mark.parametrize("min_rating", [None, 3.5])
def test_without_timestamps_matches_naive_twin(tmp_path, min_rating):
    config = PrepareConfig(protocol="holdout_users", min_rating=min_rating, seed=3, **SMALL)
    log = random_log(seed=1, rows=900).drop("timestamp")
    folder = assert_matches_naive_twin(log, config, tmp_path)
    out = read(folder)
    assert manifest(folder)["timestamps"] is False
    for name, column in [("train", "timestamp"), ("valid", "timestamp"), ("test", "timestamp"),
                         ("items", "first_seen")]:
        assert out[name][column].dtype == pl.Datetime("us")
        assert out[name][column].null_count() == out[name].height > 0


def test_without_timestamps_the_order_is_seeded_and_free_of_file_order(tmp_path):
    log = random_log(seed=15, rows=900).drop("timestamp")
    config = PrepareConfig(protocol="holdout_users", fold_in_fraction=0.7, **SMALL)
    reference = prepare(_write_parts(log, tmp_path / "a", order=[0, 1, 2]), tmp_path / "oa",
                        config)
    shuffled = log.sample(fraction=1.0, shuffle=True, seed=4)
    assert_same_output(reference, prepare(_write_parts(shuffled, tmp_path / "b", order=[2, 0, 1]),
                                          tmp_path / "ob", config))
    other_seed = read(prepare(tmp_path / "a", tmp_path / "oc",
                              dataclasses.replace(config, seed=1)))
    out = read(reference)
    assert not out["users"]["history"].equals(other_seed["users"]["history"])
    histories = [h for h in out["users"]["history"].to_list() if len(h) > 2]
    assert sum(h != sorted(h) for h in histories) > len(histories) // 2  # not in item order
    for split in ("valid", "test"):  # fold-in share: round(0.7 · n) of a user's n rows
        per_user = out[split].group_by("user_index").agg(pl.len(), pl.col("history").first())
        for n_targets, history in per_user.select("len", "history").iter_rows():
            n = n_targets + len(set(history))  # deduped: a user's items are distinct
            assert len(history) == min(max(math.floor(0.7 * n + 0.5), 1), n - 1)


def test_a_folder_without_timestamps_feeds_the_evaluator_and_the_trainer(tmp_path):
    random_log(seed=16, rows=900).drop("timestamp").write_parquet(tmp_path / "log.parquet")
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out",
                     PrepareConfig(protocol="holdout_users", **SMALL))
    out = read(folder)
    queries = load_queries(folder, "test")
    assert len(queries) + queries.dropped == out["test"]["user_index"].n_unique()
    for u, seen, relevant in zip(queries.user_index, queries.seen, queries.relevant,
                                 strict=True):
        targets = out["test"].filter(pl.col("user_index") == u)
        assert set(seen.tolist()) == set(targets["history"][0])  # no training rows: fold-in
        assert set(relevant.tolist()) == set(targets["item_index"]) - set(seen.tolist())
    rows = load_training(folder)
    assert len(rows) == out["train"].height
    tower = TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4, attribute_dim=4,
                        user_id=False)
    result = fit(folder, TrainConfig(epochs=1, batch_size=64, val_k=5, max_history=5,
                                     tower=tower), progress=False)
    assert result.best_epoch == 1 and math.isfinite(result.history[0]["loss"])


def test_a_folder_with_the_old_log_q_column_reads_and_trains_the_same(tmp_path):
    # Folders prepared before the column was dropped hold log_q = log(count / training rows)
    # in items.parquet; every reader selects its columns, so they ignore it.
    random_log(seed=17, rows=900).write_parquet(tmp_path / "log.parquet")
    new = prepare(tmp_path / "log.parquet", tmp_path / "new", PrepareConfig(**SMALL))
    old = prepare(tmp_path / "log.parquet", tmp_path / "old", PrepareConfig(**SMALL))
    items = pl.read_parquet(old / "items.parquet")
    log_q = (items["count"] / items["count"].sum()).log().clip(lower_bound=math.log(1e-12))
    items.insert_column(3, log_q.alias("log_q")).write_parquet(old / "items.parquet")
    assert "log_q" in pl.read_parquet(old / "items.parquet").columns
    old_queries, new_queries = load_queries(old, "test"), load_queries(new, "test")
    assert np.array_equal(old_queries.item_ids, new_queries.item_ids)
    assert [r.tolist() for r in old_queries.relevant] == [r.tolist() for r in new_queries.relevant]
    assert np.array_equal(load_training(old).item_counts, load_training(new).item_counts)
    tower = TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4, attribute_dim=4)
    cfg = TrainConfig(epochs=1, batch_size=64, val_k=5, max_history=5, tower=tower,
                      softmax="sampled")
    assert fit(old, cfg, progress=False).history == fit(new, cfg, progress=False).history


def test_kcore_is_a_fixed_point(tmp_path):
    random_log(seed=0, rows=300).write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="leave_last_out", min_user_interactions=5,
                           min_item_interactions=6)
    first = prepare(tmp_path / "log.parquet", tmp_path / "first", config)
    rounds = manifest(first)["rows"]["kcore_rounds"]
    assert len(rounds) >= 2, "the fixture should need several k-core rounds"

    out = read(first)
    kept = pl.concat([out[name].select("user_index", "item_index", "timestamp")
                      for name in ("train", "valid", "test")])
    assert kept.group_by("user_index").len()["len"].min() >= 5
    assert kept.group_by("item_index").len()["len"].min() >= 6
    # The kept log, written back with its ids, goes through the same k-core unchanged.
    again = (kept.join(out["users"].select("user_index", "user_id"), on="user_index")
             .join(out["items"].select("item_index", "item_id"), on="item_index")
             .select("user_id", "item_id", "timestamp"))
    again.write_parquet(tmp_path / "again.parquet")
    second = prepare(tmp_path / "again.parquet", tmp_path / "second", config)
    assert manifest(second)["rows"]["kcore_rounds"] == []
    assert_same_output(first, second)


def test_histories_never_hold_the_target_or_the_future(tmp_path):
    random_log(seed=3, span=50).write_parquet(tmp_path / "log.parquet")  # many ties
    for protocol in PROTOCOLS:
        folder = prepare(tmp_path / "log.parquet", tmp_path / protocol,
                         PrepareConfig(protocol=protocol, **SMALL))
        out = read(folder)
        every = pl.concat([out[n].select("user_index", "item_index", "timestamp")
                           for n in ("train", "valid", "test")])
        seen = {}  # (user, item) → earliest time
        for u, i, t in every.iter_rows():
            seen[u, i] = min(t, seen.get((u, i), t))
        for name in ("valid", "test"):
            for u, i, t, history in out[name].select(
                "user_index", "item_index", "timestamp", "history"
            ).iter_rows():
                assert i not in history
                if protocol != "holdout_users":  # fold-in rows are in no split file
                    assert all(seen[u, j] < t for j in history)


def test_temporal_split_respects_the_cut_and_marks_cold_items(tmp_path):
    log = random_log(seed=4)
    # Two items arrive only at the very end: they must be cold but still in the vocabulary.
    late = pl.DataFrame({"user_id": ["u0", "u1", "u2", "u3"] * 2, "item_id": [98] * 4 + [99] * 4,
                         "timestamp": [T0 + 10_000] * 8, "extra": "x", "rating": 4.0})
    pl.concat([log, late]).write_parquet(tmp_path / "log.parquet")
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", PrepareConfig(**SMALL))
    out, info = read(folder), manifest(folder)
    train, valid, test = (out[n]["timestamp"] for n in ("train", "valid", "test"))
    assert train.max() < valid.min() <= valid.max() < test.min()
    cut = np.datetime64(info["cuts"]["valid"])
    assert str(valid.min()) == str(cut.astype("datetime64[us]").item()).replace("T", " ")
    items = out["items"]
    cold_by_time = items.filter(pl.col("first_seen") >= valid.min())["item_index"].to_list()
    assert items.filter("cold")["item_index"].to_list() == cold_by_time
    assert {"98", "99"} <= set(items.filter("cold")["item_id"].to_list())
    assert items.filter("cold")["count"].to_list() == [0] * len(cold_by_time)
    assert info["cold_items"] == len(cold_by_time)


def test_holdout_users_are_disjoint_and_folded_in(tmp_path):
    random_log(seed=5, rows=1500, users=60).write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="holdout_users", fold_in_fraction=0.6, max_history=1000,
                           **SMALL)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    out, info = read(folder), manifest(folder)
    train = set(out["train"]["user_index"])
    valid, test = set(out["valid"]["user_index"]), set(out["test"]["user_index"])
    assert not train & valid and not train & test and not valid & test
    assert len(valid) == info["held_out_users"]["valid"] == round(0.1 * info["users"])
    held = out["users"].filter(pl.col("user_index").is_in(sorted(valid | test)))
    assert held["history"].list.len().max() == 0  # no training sequence for held-out users
    assert info["rows"]["fold_in"] > 0


def test_holdout_fold_in_is_whole_whatever_max_history(tmp_path):
    """The evaluator masks, and EASE reads, the history: a cap must not cut the fold-in."""
    rng = np.random.default_rng(0)
    users, per_user = 30, 25
    log = pl.DataFrame({  # distinct items per user, distinct times: fold-in = 20 rows each
        "user_id": np.repeat([f"u{u}" for u in range(users)], per_user),
        "item_id": np.concatenate([rng.choice(40, per_user, replace=False)
                                   for _ in range(users)]),
        "timestamp": T0 + rng.permutation(users * per_user),
    })
    log.write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="holdout_users", max_history=3, min_user_interactions=1,
                           min_item_interactions=1)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    out = read(folder)
    ids = dict(out["items"].select("item_id", "item_index").iter_rows())
    names = dict(out["users"].select("user_index", "user_id").iter_rows())
    for split in ("valid", "test"):
        targets = out[split]
        queries = load_queries(folder, split)
        seen = dict(zip(queries.user_index.tolist(), queries.seen, strict=True))
        for (u,), rows in targets.group_by(["user_index"]):
            user_log = log.filter(pl.col("user_id") == names[u]).sort("timestamp")
            answers = set(rows["item_index"])
            fold_in = [ids[str(i)] for i in user_log["item_id"] if ids[str(i)] not in answers]
            assert len(fold_in) == round(0.8 * per_user) > config.max_history
            for history in rows["history"]:
                assert history.to_list() == fold_in  # whole and in time order
            assert set(fold_in) <= set(seen[u].tolist())


def test_long_histories_are_written_in_bounded_blocks(tmp_path, monkeypatch):
    random_log(seed=2).write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="temporal", **SMALL)
    reference = prepare(tmp_path / "log.parquet", tmp_path / "one", config)
    monkeypatch.setattr(data_module, "_BLOCK_TARGETS", 5)
    monkeypatch.setattr(data_module, "_BLOCK_HISTORY", 7)  # below one user's history: 1 row
    blocks = prepare(tmp_path / "log.parquet", tmp_path / "blocks", config)
    assert_same_output(reference, blocks)
    assert pq.ParquetFile(blocks / "test.parquet").num_row_groups > 10


def test_train_position_indexes_the_user_history(tmp_path):
    random_log(seed=6).write_parquet(tmp_path / "log.parquet")
    out = read(prepare(tmp_path / "log.parquet", tmp_path / "out", PrepareConfig(**SMALL)))
    history = dict(out["users"].select("user_index", "history").iter_rows())
    for u, i, p in out["train"].select("user_index", "item_index", "position").iter_rows():
        assert history[u][p] == i


# ---------------------------------------------------------------------------------------------
# Sources: layouts, id types, order.


def test_every_source_layout_gives_the_same_folder(tmp_path):
    log = random_log(seed=7)
    log.write_parquet(tmp_path / "one.parquet")
    parts = tmp_path / "parts"
    hive = tmp_path / "hive"
    parts.mkdir()
    for n, chunk in enumerate(log.iter_slices(250)):
        chunk.write_parquet(parts / f"part-{n}.parquet")
        (hive / f"day={n}").mkdir(parents=True)
        chunk.write_parquet(hive / f"day={n}" / "data.parquet")
    for folder in (parts, hive):  # what Spark and Hadoop leave beside the data
        (folder / "_SUCCESS").touch()
        (folder / ".part-0.parquet.crc").write_bytes(b"junk")
    log.write_csv(tmp_path / "log.csv")
    log.write_parquet(tmp_path / "log[2**62].parquet")  # a file, though its name looks a glob
    log.write_csv(tmp_path / "log*.csv")
    config = PrepareConfig(**SMALL)
    reference = prepare(tmp_path / "one.parquet", tmp_path / "out-file", config)
    for name, source in [("folder", parts), ("hive", hive), ("glob", parts / "*.parquet"),
                         ("csv", tmp_path / "log.csv"),
                         ("odd-name", tmp_path / "log[2**62].parquet"),
                         ("odd-csv", tmp_path / "log*.csv")]:
        folder = prepare(source, tmp_path / f"out-{name}", config)
        assert_same_output(reference, folder)
    assert len(manifest(tmp_path / "out-glob")["files"]) == 3


def test_int_and_string_ids_share_one_path(tmp_path):
    log = random_log(seed=8)
    log.write_parquet(tmp_path / "int.parquet")  # item_id is an integer column
    log.with_columns(pl.col("item_id").cast(pl.String)).write_parquet(tmp_path / "str.parquet")
    config = PrepareConfig(**SMALL)
    assert_same_output(prepare(tmp_path / "int.parquet", tmp_path / "a", config),
                       prepare(tmp_path / "str.parquet", tmp_path / "b", config))


def test_vocabularies_ignore_file_and_row_order(tmp_path):
    log = random_log(seed=9)
    config = PrepareConfig(**SMALL)
    reference = prepare(_write_parts(log, tmp_path / "a", order=[0, 1, 2]), tmp_path / "oa",
                        config)
    shuffled = log.sample(fraction=1.0, shuffle=True, seed=3)
    other = prepare(_write_parts(shuffled, tmp_path / "b", order=[2, 0, 1]), tmp_path / "ob",
                    config)
    assert_same_output(reference, other)
    again = prepare(_write_parts(log, tmp_path / "a", order=[0, 1, 2]), tmp_path / "oc", config)
    assert_same_output(reference, again)


def _write_parts(log: pl.DataFrame, folder: Path, order: list[int]) -> Path:
    """The log as three files whose names sort in `order`."""
    folder.mkdir(exist_ok=True)
    size = -(-log.height // 3)
    for name, n in zip("xyz", order, strict=True):
        log.slice(n * size, size).write_parquet(folder / f"{name}.parquet")
    return folder


def test_timestamp_types_agree(tmp_path):
    log = random_log(seed=10)
    log.write_parquet(tmp_path / "seconds.parquet")
    stamps = log.with_columns(pl.from_epoch("timestamp", time_unit="s"))
    variants = {
        "datetime": stamps,
        "zoned": stamps.with_columns(
            pl.col("timestamp").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Tokyo")
        ),
        "string": stamps.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S")),
    }
    config = PrepareConfig(**SMALL)
    reference = prepare(tmp_path / "seconds.parquet", tmp_path / "o-seconds", config)
    for name, frame in variants.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")
        assert_same_output(reference, prepare(tmp_path / f"{name}.parquet", tmp_path / f"o-{name}",
                                              config))


def test_every_sort_path_gives_the_same_folder(tmp_path):
    """Packed (user, time, item) key; packed (user, time) key and argsort, taken when a weight
    column must move too; polars' sort, taken when user and time need more than 64 bits."""
    log = random_log(seed=14)
    loners = 2100  # one row each, dropped by the k-core, but 12 bits of user code when sorting
    log = pl.concat([log, pl.DataFrame({
        "user_id": [f"z{n}" for n in range(loners)], "item_id": np.arange(loners) + 1000,
        "timestamp": np.full(loners, T0), "extra": "", "rating": np.ones(loners)})])
    variants = {
        "packed": log,
        "argsort": log.with_columns(weight=pl.lit(1.0)),
        "polars": log.with_columns(  # 1970 to 2192 in µs: 53 bits of time, 12 of user
            pl.from_epoch((pl.col("timestamp") - T0) * 2**44, time_unit="us")
        ),
    }
    config = PrepareConfig(protocol="leave_last_out", **SMALL)
    outputs = {}
    for name, frame in variants.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")
        out = read(prepare(tmp_path / f"{name}.parquet", tmp_path / name, config))
        outputs[name] = {key: table.drop("timestamp", "first_seen", strict=False)
                         for key, table in out.items()}
    for name in ("argsort", "polars"):
        for key, table in outputs[name].items():
            assert table.equals(outputs["packed"][key]), (name, key)


def test_column_mapping_events_and_weights(tmp_path):
    log = random_log(seed=11).rename({"user_id": "visitor", "item_id": "sku"})
    events = np.array(["view", "cart", "buy"])[np.arange(log.height) % 3]
    log = log.with_columns(event=pl.Series(events), weight=pl.lit(2.0))
    log.write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(columns={"visitor": "user_id", "sku": "item_id"},
                           events=["cart", "buy"], event_weights={"buy": 3.0, "view": 9.0},
                           min_user_interactions=1, min_item_interactions=1)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    rows = manifest(folder)["rows"]
    unique = log.unique(subset=["visitor", "sku", "timestamp", "event", "weight"])
    assert rows["dedup"] == unique.height
    assert rows["event_filter"] == unique.filter(pl.col("event") != "view").height
    out = read(folder)
    weights = pl.concat([out[n]["weight"] for n in ("train", "valid", "test")])
    assert sorted(set(weights.to_list())) == [2.0, 6.0]  # cart 2·1, buy 2·3
    assert (weights == 6.0).sum() == unique.filter(pl.col("event") == "buy").height


def test_min_rating_drops_rows_below_it_before_dedup(tmp_path):
    log = random_log(seed=12).rename({"rating": "stars"})
    log.write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="leave_last_out", min_rating=4, columns={"stars": "rating"},
                           min_user_interactions=1, min_item_interactions=1)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    info, out = manifest(folder), read(folder)
    liked = log.filter(pl.col("stars") >= 4)
    assert info["rows"]["rating_filter"] == liked.height < log.height
    assert info["dropped"]["rating_filter"] == log.height - liked.height
    assert info["rows"]["dedup"] == liked.unique(["user_id", "item_id", "timestamp"]).height
    kept = pl.concat([out[n].select("user_index", "item_index", pl.col("timestamp").dt.epoch("s"))
                      for n in ("train", "valid", "test")])
    kept = (kept.join(out["users"].select("user_index", "user_id"), on="user_index")
            .join(out["items"].select("item_index", "item_id"), on="item_index")
            .select("user_id", pl.col("item_id").cast(pl.Int64), "timestamp"))
    liked_keys = liked.select("user_id", "item_id", "timestamp").unique()
    assert kept.sort(kept.columns).equals(liked_keys.sort(kept.columns))  # nothing below 4


def test_duplicates_need_equal_event_and_weight(tmp_path):
    log = pl.DataFrame({"user_id": ["a"] * 4, "item_id": [1] * 4, "timestamp": [T0] * 4,
                        "event": ["view", "view", "buy", "view"], "weight": [1.0, 1.0, 1.0, 0.5]})
    log.write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="leave_last_out", min_user_interactions=1,
                           min_item_interactions=1)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config)
    assert manifest(folder)["rows"]["dedup"] == 3


def test_manifest_counts_every_step_and_log_receives_them(tmp_path):
    random_log(seed=0, rows=300).write_parquet(tmp_path / "log.parquet")
    seen: list[tuple[dict, int]] = []
    config = PrepareConfig(min_user_interactions=5, min_item_interactions=6)
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", config,
                     log=lambda metrics, step: seen.append((dict(metrics), step)))
    info = manifest(folder)
    rows = info["rows"]
    assert rows["read"] == 315 and rows["dedup"] < rows["read"]
    assert rows["kcore"] == rows["kcore_rounds"][-1] == rows["train"] + rows["valid"] + rows[
        "test"]
    assert info["dropped"] == {"rating_filter": 0, "dedup": rows["read"] - rows["dedup"],
                               "event_filter": 0, "kcore": rows["event_filter"] - rows["kcore"]}
    assert info["schema_version"] == 1 and info["protocol"] == "temporal"
    assert info["source_stamp"] == source_stamp(tmp_path / "log.parquet")
    assert info["config"]["min_item_interactions"] == 6
    logged = {k: v for metrics, _ in seen for k, v in metrics.items()}
    assert logged["rows/read"] == rows["read"] and logged["rows/test"] == rows["test"]
    kcore_steps = [(m["rows/kcore"], s) for m, s in seen if "rows/kcore" in m]
    assert kcore_steps == [(n, s) for s, n in enumerate(rows["kcore_rounds"], start=1)]
    for name in ("train", "valid", "test"):
        schema = pl.read_parquet_schema(folder / f"{name}.parquet")
        assert schema["user_index"] == pl.Int32 and schema["item_index"] == pl.Int32


# ---------------------------------------------------------------------------------------------
# Bad input: DataError naming file, column and value, and nothing written.


def _bad(tmp_path: Path, frame: pl.DataFrame, config: PrepareConfig | None = None,
         name: str = "log.parquet") -> DataError:
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(DataError) as caught:
        prepare(path, tmp_path / "out", config)
    assert sorted(tmp_path.iterdir()) == before  # no out dir, no temporary sibling
    return caught.value


def _log(**columns) -> pl.DataFrame:
    base = {"user_id": ["a", "b", "c"], "item_id": [1, 2, 3], "timestamp": [T0, T0 + 1, T0 + 2]}
    return pl.DataFrame({**base, **columns})


@pytest.mark.parametrize(("frame", "column", "value"), [
    (_log(user_id=[1.5, 2.5, 3.5]), "user_id", "1.5"),
    (_log(item_id=[1.0, 2.0, 3.0]), "item_id", "1.0"),
    (_log(timestamp=[1.7e9, 1.7e9, 1.7e9]), "timestamp", "1700000000.0"),
    (_log(timestamp=["2024-01-01", "2024-01-02", "soon"]), "timestamp", "'soon'"),
    (_log(user_id=["a", None, "c"]), "user_id", "null id"),
    (_log(item_id=["x", "", "z"]), "item_id", "''"),
    (_log(timestamp=[T0, None, T0]), "timestamp", "null or unparseable"),
    (_log(weight=[1.0, -2.0, 1.0]), "weight", "-2.0"),
    (_log(weight=[1.0, float("nan"), 1.0]), "weight", "nan"),
    (_log(event=[1, 2, 3]), "event", "1"),
    (_log(rating=[4.0, None, 5.0]), "rating", "null, NaN or infinite rating"),
    (_log(rating=[4.0, float("nan"), 5.0]), "rating", "nan"),
    (_log(rating=["4.5", "great", "5"]), "rating", "'great'"),
])
def test_bad_values_raise_naming_file_column_and_value(tmp_path, frame, column, value):
    error = _bad(tmp_path, frame, PrepareConfig(min_rating=4.0) if column == "rating" else None)
    assert "log.parquet" in str(error) and f"column {column!r}" in str(error)
    assert value in str(error)
    assert error.column == column


@pytest.mark.parametrize(("timestamps", "value"), [
    ([T0, 10**13, T0], "10000000000000"),  # × 10**6 µs wraps around to the year −265697
    ([T0, 2**62, T0], str(2**62)),  # × 10**6 µs wraps around to exactly 1970-01-01
    ([T0, -1, T0], "-1"),
    ([date(2024, 1, 1), date(2300, 1, 1), date(2024, 1, 1)], "datetime.date(2300, 1, 1)"),
    ([datetime(2024, 1, 1), datetime(1969, 12, 31, 23, 59), datetime(2024, 1, 1)],
     "datetime.datetime(1969, 12, 31, 23, 59)"),
    (["2024-01-01", "2262-04-12", "2024-01-01"], "'2262-04-12'"),
])
def test_times_outside_the_window_are_refused(tmp_path, timestamps, value):
    error = _bad(tmp_path, _log(timestamp=timestamps))
    assert "log.parquet, column 'timestamp': outside 1970-01-01 .. 2262-04-11" in str(error)
    assert value in str(error) and "look like" not in str(error)


@pytest.mark.parametrize(("scale", "unit", "divisor"), [
    (10**3, "milliseconds", "1,000"), (10**6, "microseconds", "1,000,000"),
    (10**9, "nanoseconds", "1,000,000,000"),
])
def test_int_times_in_a_finer_unit_are_refused_with_the_conversion(tmp_path, scale, unit,
                                                                   divisor):
    error = _bad(tmp_path, _log(timestamp=[T0 * scale, T0 * scale + 7, T0 * scale + 9]))
    assert f"these look like {unit} since the epoch; convert to seconds (divide by {divisor})" in (
        str(error))
    assert str(T0 * scale) in str(error)


def test_the_window_holds_its_ends(tmp_path):
    """0 s and 9,223,372,036 s (2262-04-11T23:47:16, the last whole second int64 ns hold)."""
    last = 2**63 // 10**9
    pl.DataFrame({"user_id": ["a"] * 3, "item_id": [1, 2, 3], "timestamp": [0, T0, last]}) \
        .write_parquet(tmp_path / "log.parquet")
    config = PrepareConfig(protocol="leave_last_out", min_user_interactions=1,
                           min_item_interactions=1)
    out = read(prepare(tmp_path / "log.parquet", tmp_path / "out", config))
    assert out["train"]["timestamp"].to_list() == [datetime(1970, 1, 1)]
    assert out["test"]["timestamp"].to_list() == [datetime(2262, 4, 11, 23, 47, 16)]


def test_missing_column_names_the_file_and_the_mapping(tmp_path):
    for protocol in ("temporal", "leave_last_out"):
        error = _bad(tmp_path, _log().drop("timestamp"), PrepareConfig(protocol=protocol))
        assert "log.parquet" in str(error) and error.column == "timestamp"
        assert f"the {protocol} protocol" in str(error)
        assert 'protocol="holdout_users"' in str(error)
    error = _bad(tmp_path, _log().drop("user_id"), PrepareConfig(columns={"visitor": "user_id"}))
    assert error.column == "visitor"
    assert ("columns renames ['visitor'], which the file lacks; it has ['item_id', 'timestamp']"
            in str(error))
    error = _bad(tmp_path, _log(wt=[1.0, 2.0, 3.0]), PrepareConfig(columns={"wieght": "weight"}))
    assert "log.parquet, column 'wieght': columns renames ['wieght'], which the file lacks; it " \
        "has ['user_id', 'item_id', 'timestamp', 'wt']" in str(error)  # not silently unweighted
    error = _bad(tmp_path, _log(), PrepareConfig(events=["buy"]))
    assert error.column == "event"
    error = _bad(tmp_path, _log().drop("timestamp"),
                 PrepareConfig(protocol="holdout_users", fold_in="time"))
    assert error.column == "timestamp" and 'fold_in="random"' in str(error)
    error = _bad(tmp_path, _log(stars=[4, 5, 3]), PrepareConfig(min_rating=4))
    assert error.column == "rating" and "min_rating=4.0" in str(error)
    assert "['user_id', 'item_id', 'timestamp', 'stars']" in str(error)


def test_bad_value_in_one_of_many_files_names_that_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _log().write_parquet(folder / "a.parquet")
    _log(user_id=["d", None, "f"]).write_parquet(folder / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet, column 'user_id': null id"):
        prepare(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _hive(folder: Path, frames: list[pl.DataFrame], bad: pl.DataFrame | bytes) -> Path:
    """A hive-partitioned folder: frames[n] at day=n/data.parquet, then `bad` (a frame or raw
    bytes) at day=<len(frames)>/data.parquet; returns the bad file."""
    for day, frame in enumerate([*frames, bad]):
        path = folder / f"day={day}" / "data.parquet"
        path.parent.mkdir(parents=True)
        if isinstance(frame, bytes):
            path.write_bytes(frame)
        else:
            frame.write_parquet(path)
    return path


@pytest.mark.parametrize(("bad", "message"), [
    (_log(user_id=["d", None, "f"]), "column 'user_id': null id"),
    (_log(user_id=[1.5, 2.5, 3.5]), "column 'user_id': must be an integer or string id, got "
     "Float64 (e.g. 1.5)"),
    (_log(timestamp=[1.7e9, 1.7e9, 1.7e9]), "column 'timestamp': must be a timestamp, a date, "
     "int seconds or a parseable string, got Float64 (e.g. 1700000000.0)"),
    (_log(timestamp=[T0 * 1000, T0 * 1000, T0 * 1000]), "column 'timestamp': outside "
     "1970-01-01 .. 2262-04-11 as int seconds since the epoch; these look like milliseconds"),
    (_log().with_columns(pl.from_epoch("timestamp")), "column 'timestamp': is Datetime("
     "time_unit='us', time_zone=None) here but Int64 in {first}; give every file one type"),
    (_log().drop("timestamp"), "column 'timestamp': missing column, which {first} has"),
    (b"PAR1 not Parquet", "cannot read: "),
])
def test_a_bad_file_in_a_hive_folder_is_named(tmp_path, bad, message):
    """One bad file of five: the error names it, not the folder."""
    folder = tmp_path / "log"
    path = _hive(folder, [_log(user_id=[f"{n}{u}" for u in "abc"]) for n in range(4)], bad)
    with pytest.raises(DataError) as caught:
        prepare(folder, tmp_path / "out", PrepareConfig(**SMALL))
    first = folder / "day=0" / "data.parquet"
    assert f"{path}: " in str(caught.value) or f"{path}, " in str(caught.value)
    assert message.format(first=first) in str(caught.value)
    assert sorted(tmp_path.iterdir()) == [folder]


def test_files_mixing_id_and_time_types_prepare_as_the_all_string_log(tmp_path):
    """Int ids in one file and string ids in another (and datetimes of several units and
    zones, weights of several number types) read as one log: ids as strings, times as UTC.
    A column only some files have is fine while unused (rating), named when used."""
    log = random_log(seed=15).with_columns(pl.col("user_id").str.slice(1).cast(pl.Int64),
                                           weight=pl.lit(1.0))
    reference = log.with_columns(pl.col("user_id", "item_id").cast(pl.String))
    reference.write_parquet(tmp_path / "strings.parquet")
    stamps = pl.from_epoch("timestamp")
    parts = [
        log.with_columns(stamps.dt.cast_time_unit("ms"), pl.col("weight").cast(pl.Float32)),
        log.with_columns(pl.col("item_id").cast(pl.String), stamps.dt.cast_time_unit("ns"),
                         pl.col("weight").cast(pl.Int8), extra=pl.lit(1)).drop("rating"),
        reference.with_columns(stamps.dt.replace_time_zone("UTC")
                               .dt.convert_time_zone("Asia/Tokyo")),
    ]
    size = -(-log.height // 3)
    for day, part in enumerate(parts):
        (tmp_path / "hive" / f"day={day}").mkdir(parents=True)
        part.slice(day * size, size).write_parquet(tmp_path / "hive" / f"day={day}" / "a.parquet")
    config = PrepareConfig(**SMALL)
    assert_same_output(prepare(tmp_path / "strings.parquet", tmp_path / "a", config),
                       prepare(tmp_path / "hive", tmp_path / "b", config))
    with pytest.raises(DataError, match=r"day=1/a\.parquet, column 'rating': missing column, "
                                        r"which .*day=0/a\.parquet has"):
        prepare(tmp_path / "hive", tmp_path / "c", PrepareConfig(min_rating=3, **SMALL))


def test_bad_csv_value_names_the_csv(tmp_path):
    error = _bad(tmp_path, _log(user_id=[1.5, 2.5, 3.5]), name="log.csv")
    assert "log.csv" in str(error) and "1.5" in str(error)


@pytest.mark.parametrize(("config", "message"), [
    (PrepareConfig(), "k-core 5/5 left no interactions"),
    (PrepareConfig(events=["cart"], min_rating=3, min_user_interactions=1,
                   min_item_interactions=1),  # the only cart row is rated 2
     "event filter ['cart'] left no interactions; the log's events are ['cart', 'view']"),
    (PrepareConfig(protocol="leave_last_out", min_user_interactions=1, min_item_interactions=1),
     "leave_last_out split left no training interactions"),
    (PrepareConfig(min_rating=4.5), "min_rating 4.5 left no interactions; the highest rating "
     "is 4.0"),
])
def test_empty_results_name_the_filter(tmp_path, config, message):
    frame = _log(event=["view", "view", "cart"], rating=[1, 4, 2])
    error = _bad(tmp_path, frame, config)
    assert message in str(error)


@pytest.mark.parametrize(("config", "option", "unknown"), [
    (PrepareConfig(events=("view", "purchse")), "events", "['purchse']"),
    (PrepareConfig(event_weights={"purchse": 3.0, "view": 1.0, "bye": 2.0}), "event_weights",
     "['purchse', 'bye']"),
])
def test_unknown_event_names_are_refused_listing_the_logs_events(tmp_path, config, option,
                                                                 unknown):
    error = _bad(tmp_path, _log(event=["view", "purchase", "view"]), config)
    assert error.column == "event"
    assert (f"log.parquet, column 'event': {option} names {unknown}, which no row has; the "
            f"log's events are ['purchase', 'view']") in str(error)


def test_missing_source_and_failed_rerun_keep_the_old_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepare(tmp_path / "nope.parquet", tmp_path / "out")
    random_log(seed=13).write_parquet(tmp_path / "log.parquet")
    folder = prepare(tmp_path / "log.parquet", tmp_path / "out", PrepareConfig(**SMALL))
    before = read(folder)
    _log(user_id=["a", None, "c"]).write_parquet(tmp_path / "log.parquet")
    with pytest.raises(DataError):
        prepare(tmp_path / "log.parquet", folder, PrepareConfig(**SMALL))
    assert all(before[n].equals(after) for n, after in read(folder).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet", "out"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"protocol": "random"}, "'random'.*temporal, leave_last_out, holdout_users"),
    ({"min_user_interactions": 0}, "min_user_interactions"),
    ({"max_history": 0}, "max_history"),
    ({"valid_fraction": 1.2}, "valid_fraction"),
    ({"valid_fraction": 0.6, "test_fraction": 0.5}, "valid_fraction \\+ test_fraction"),
    ({"fold_in_fraction": 1.0}, "fold_in_fraction"),
    ({"fold_in": "first"}, "fold_in must be one of auto, time, random"),
    ({"event_weights": {"buy": -1.0}}, "event_weights"),
    ({"min_rating": float("inf")}, "min_rating"),
    ({"columns": {"a": "user_id", "b": "user_id"}}, "two source columns"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**kwargs)
    if "protocol" in kwargs:
        with pytest.raises(DataError):
            PrepareConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Real data: MovieLens latest-small.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_movielens_small(tmp_path, protocol):
    if not ML_RATINGS.exists():
        pytest.skip(f"MovieLens ratings {ML_RATINGS} is absent")
    config = PrepareConfig(protocol=protocol,
                           columns={"userId": "user_id", "movieId": "item_id"})
    folder = prepare(ML_RATINGS, tmp_path / protocol, config)
    info, out = manifest(folder), read(folder)
    assert info["rows"]["read"] == 100_836
    assert info["users"] == out["users"].height and info["items"] == out["items"].height
    kept = pl.concat([out[n].select("user_index", "item_index") for n in ("train", "valid",
                                                                          "test")])
    if protocol != "holdout_users":
        assert kept.height == info["rows"]["kcore"]
        assert kept.group_by("user_index").len()["len"].min() >= 5
    assert out["items"]["count"].sum() == out["train"].height
    if protocol == "leave_last_out":
        assert out["valid"].height == out["test"].height == info["users"]


def test_movielens_small_keeps_ratings_of_four_and_up(tmp_path):
    """Liang et al. 2018's binarisation; MovieLens's `rating` column needs no renaming."""
    if not ML_RATINGS.exists():
        pytest.skip(f"MovieLens ratings {ML_RATINGS} is absent")
    config = PrepareConfig(protocol="holdout_users", min_rating=4,
                           columns={"userId": "user_id", "movieId": "item_id"})
    info = manifest(prepare(ML_RATINGS, tmp_path / "out", config))
    ratings = pl.read_csv(ML_RATINGS)
    assert info["rows"]["read"] == ratings.height
    assert info["rows"]["rating_filter"] == ratings.filter(pl.col("rating") >= 4).height
