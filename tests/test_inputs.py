"""Training rows and histories against a naive reading of the prepared folder; item features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from twotower.data import PrepareConfig, prepare
from twotower.files import DataError
from twotower.inputs import attribute_codes, item_features, load_training, read_catalog, unsold
from twotower.towers import PAD
from twotower.vectors import Vectors


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(3)
    n = 600
    pl.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, 30, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 25, n)],
        "timestamp": 1_700_000_000 + rng.integers(0, 5000, n),
    }).write_parquet(root / "log.parquet")
    return prepare(root / "log.parquet", root / "prepare",
                   PrepareConfig(min_user_interactions=2, min_item_interactions=2))


def test_histories_are_the_latest_earlier_training_items(prepared):
    rows = load_training(prepared)
    train = pl.read_parquet(prepared / "train.parquet")
    users = pl.read_parquet(prepared / "users.parquet").sort("user_index")
    sequences = users["history"].to_list()
    picked = np.arange(len(rows))
    for length in (1, 3, 8):
        got = rows.histories(picked, length)
        for r, (u, p) in enumerate(zip(train["user_index"], train["position"], strict=True)):
            earlier = sequences[u][:p][-length:]
            assert got[r].tolist() == [PAD] * (length - len(earlier)) + earlier
    whole = rows.user_histories(np.arange(rows.num_users), 4)
    for u, sequence in enumerate(sequences):
        assert whole[u].tolist() == [PAD] * (4 - len(sequence[-4:])) + sequence[-4:]
    assert rows.item_counts.sum() == len(rows)
    assert rows.users_warm.tolist() == [len(s) > 0 for s in sequences]


def test_item_features_align_embeddings_and_attributes_with_item_index(prepared):
    items = pl.read_parquet(prepared / "items.parquet").sort("item_index")
    ids = items["item_id"].to_list()
    given = [*ids[::2], "not-in-the-log"]
    vectors = np.arange(len(given) * 3, dtype=np.float32).reshape(-1, 3)
    colours = (["red", "blue", None] * len(ids))[:len(ids) - 1]
    catalog = pd.DataFrame({"item_id": ids[1:], "colour": colours})  # ids[0] is absent
    features = item_features(prepared, embeddings=Vectors(np.array(given), vectors),
                             catalog=catalog, attributes=["colour"])
    for i, item in enumerate(ids):
        if item in given:
            assert features.has_image[i] and (features.images[i] == vectors[given.index(item)]
                                              ).all()
        else:
            assert not features.has_image[i] and not features.images[i].any()
    colour = dict(zip(ids[1:], colours, strict=True))
    codes = {None: 0, "blue": 1, "red": 2}  # 0: absent or null; then sorted values
    assert features.attributes["colour"].tolist() == [codes[colour.get(i)] for i in ids]
    assert features.warm.tolist() == (items["count"] > 0).to_list()
    # The vocabulary codes a new product's values the same way; an unseen one is unknown.
    assert features.vocabularies["colour"].tolist() == ["blue", "red"]
    assert attribute_codes(["red", None, "green", "blue"],
                           features.vocabularies["colour"]).tolist() == [2, 0, 0, 1]


def test_bad_inputs_name_what_is_wrong(prepared, tmp_path):
    with pytest.raises(DataError, match=r"train\.parquet: missing"):
        load_training(tmp_path)
    with pytest.raises(DataError, match="no prepared item has an image embedding"):
        item_features(prepared, embeddings=Vectors(np.array(["x"]), np.ones((1, 2), np.float32)))
    with pytest.raises(DataError, match=r"catalog lacks column\(s\) \['size'\]"):
        item_features(prepared, catalog=pd.DataFrame({"item_id": ["i1"]}), attributes=["size"])
    with pytest.raises(ValueError, match="need a catalog table"):
        item_features(prepared, attributes=["size"])


def test_new_products_come_after_the_prepared_items_as_cold_rows(prepared):
    ids = pl.read_parquet(prepared / "items.parquet").sort("item_index")["item_id"].to_list()
    given = np.array([ids[0], "new-b", "new-a"])
    vectors = np.arange(9, dtype=np.float32).reshape(3, 3)
    catalog = pd.DataFrame({"item_id": ["new-c", ids[1]], "colour": ["red", "blue"]})
    features = item_features(prepared, embeddings=Vectors(given, vectors), catalog=catalog,
                             attributes=["colour"], new_products=True)
    assert features.ids.tolist() == [*ids, "new-a", "new-b", "new-c"]
    assert not features.warm[len(ids):].any()
    assert (features.images[len(ids)] == vectors[2]).all()  # new-a
    assert features.has_image[len(ids):].tolist() == [True, True, False]
    assert features.attributes["colour"][len(ids):].tolist() == [0, 0, 2]  # red: code 2
    plain = item_features(prepared, embeddings=Vectors(given, vectors))
    assert plain.ids.tolist() == ids


def test_a_catalog_is_read_for_its_ids_and_attributes_only_and_its_gaps_are_named(tmp_path):
    path = tmp_path / "catalog.parquet"
    pd.DataFrame({"item_id": ["a", "b"], "category": [1, 2], "image": [b"png", b"png"]}
                 ).to_parquet(path)
    read = read_catalog(path, ("category",))
    assert list(read.columns) == ["item_id", "category"] and list(read["item_id"]) == ["a", "b"]
    with pytest.raises(DataError, match=r"catalog\.parquet, column 'brand': missing column"):
        read_catalog(path, ("category", "brand"))
    with pytest.raises(DataError, match=r"nowhere\.parquet.*no catalog file here"):
        read_catalog(tmp_path / "nowhere.parquet", ("category",))


def test_unsold_products_were_listed_by_the_training_end_and_never_bought(tmp_path):
    rng = np.random.default_rng(0)
    early = [(f"u{u}", f"i{rng.integers(0, 5)}", 1_700_000_000 + t) for t in range(300)
             for u in [t % 20]]
    late = [(f"u{u}", "late", 1_700_001_000 + u) for u in range(20)]  # bought after the split
    pl.DataFrame(early + late, schema=["user_id", "item_id", "timestamp"],
                 orient="row").write_parquet(tmp_path / "log.parquet")
    prepared = prepare(tmp_path / "log.parquet", tmp_path / "prepare",
                       PrepareConfig(min_user_interactions=2, min_item_interactions=1))
    items = pl.read_parquet(prepared / "items.parquet")
    assert items.filter(pl.col("cold"))["item_id"].to_list() == ["late"]
    end = pd.read_parquet(prepared / "train.parquet")["timestamp"].max().value // 10**9
    catalog = pd.DataFrame([("i0", end - 10), ("late", end - 10), ("never", end),
                            ("new", end + 10), ("late-listed", end + 1)],
                           columns=["item_id", "listed"])
    want = ["late", "never"]  # on sale by the split's end, no training row
    assert sorted(unsold(prepared, catalog, "listed")) == want
    as_times = catalog.assign(listed=pd.to_datetime(catalog["listed"], unit="s", utc=True))
    assert sorted(unsold(prepared, as_times, "listed")) == want
    with pytest.raises(DataError, match="no listing-time column 'since'"):
        unsold(prepared, catalog, "since")
    with pytest.raises(DataError, match="1 product"):
        unsold(prepared, catalog.assign(listed=[None, *catalog["listed"][1:]]), "listed")
    with pytest.raises(DataError, match=r"column 'listed'.*Unix seconds or timestamps"):
        unsold(prepared, catalog.assign(listed="soon"), "listed")
