"""twotower.Retriever on a tiny shop trained through the stages: the evaluation's ranking, a saved
folder, new products through the item tower's content path, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.evaluate import VectorScorer, load_queries
from twotower.files import DataError
from twotower.index import ItemIndex, default_params
from twotower.retriever import FORMAT_VERSION, Retriever
from twotower.vectors import read_vectors

# Every test here reads the model tests/conftest.py trains through the stages, whose MLflow
# store alone takes seconds to create.
pytestmark = pytest.mark.slow
IMAGE = (3, 8, 8)  # the photos the fake image encoder takes (the run's embeddings say 8x8)
MAX_HISTORY = 5  # the run's train.max_history


@pytest.fixture
def shop(two_tower_run):
    """The trained run of tests/conftest.py."""
    return two_tower_run


def category_of(shop) -> dict[str, str]:
    catalog = pd.read_parquet(shop / "catalog.parquet")
    return dict(zip(catalog["item_id"], catalog["category"].astype(str), strict=True))


def fake_encoder(images: torch.Tensor) -> np.ndarray:
    """A deterministic stand-in for the frozen SimCLR encoder: a fixed projection of the
    pixels to h (N, 8)."""
    weights = torch.from_numpy(np.random.default_rng(7).normal(size=(int(np.prod(IMAGE)), 8)))
    return (images.reshape(len(images), -1).double() / 255 @ weights).float().numpy()


def test_a_split_user_gets_the_evaluations_ranking(shop):
    """The test users asked for with their id and their split history (what `load_queries`
    gives the evaluation: the history before their first target) get exactly the ranking
    `VectorScorer.from_saved` gives from the exported user_vectors_test.parquet: same user
    tower input, same exclusions (training items and that history), same index."""
    run = shop / "run"
    queries = load_queries(run / "prepare", "test")
    with_history = np.flatnonzero([h.size > 0 for h in queries.history])
    assert with_history.size > 10
    queries = queries.take(with_history)
    vectors = run / "train_two_tower" / "image" / "user_vectors_test.parquet"
    scorer = VectorScorer.from_saved(run / "build_index" / "image", vectors, device="cpu")
    expected = scorer.rank(queries, 10)

    retriever = Retriever.load(run)
    got = retriever.recommend(user_ids=queries.user_id,
                              histories=[queries.item_ids[h] for h in queries.history], k=10)
    np.testing.assert_array_equal(got.item_ids, expected)
    assert set(got.source) == {"user"} and (got.user_ids == queries.user_id).all()
    assert (np.diff(got.scores, axis=1) <= 1e-6).all()  # best first


def test_sources_and_the_long_frame(shop):
    retriever = Retriever.load(shop / "run")
    known = str(pd.read_parquet(shop / "run" / "prepare" / "users.parquet")["user_id"][0])
    history = list(retriever.item_ids[:2])
    recs = retriever.recommend(user_ids=[known, "stranger", "stranger"],
                               histories=[None, history, None], k=5)
    assert recs.source.tolist() == ["user", "history", "popularity"]
    # The user's stored training history is read and excluded; a given history is excluded.
    train = pd.read_parquet(shop / "run" / "prepare" / "users.parquet")["history"][0]
    seen = set(retriever.model.item_ids[np.asarray(train)])
    assert not seen & set(recs.item_ids[0]) and not set(history) & set(recs.item_ids[1])
    # Popularity: the live products by training count, the counts as scores.
    items = pd.read_parquet(shop / "run" / "prepare" / "items.parquet")
    top = items.sort_values(["count", "item_index"], ascending=[False, True]).head(5)
    assert recs.item_ids[2].tolist() == top["item_id"].tolist()
    assert recs.scores[2].tolist() == top["count"].astype(float).tolist()
    frame = recs.to_frame()
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "source"]
    assert len(frame) == 15 and frame["rank"].tolist() == [1, 2, 3, 4, 5] * 3
    assert frame["item_id"].tolist() == recs.item_ids.reshape(-1).tolist()
    # Without exclusion the training items may come back; history-only queries match the ids.
    alone = retriever.recommend(histories=[history], k=5)
    np.testing.assert_array_equal(alone.item_ids[0], recs.item_ids[1])
    assert alone.user_ids.tolist() == [""]


def test_rows_are_served_in_chunks_with_the_same_result(shop, monkeypatch):
    import twotower.retriever

    retriever = Retriever.load(shop / "run")
    users = pd.read_parquet(shop / "run" / "prepare" / "users.parquet")["user_id"].astype(str)
    whole = retriever.recommend(user_ids=users, k=7)
    monkeypatch.setattr(twotower.retriever, "CHUNK", 4)
    chunked = retriever.recommend(user_ids=users, k=7)
    np.testing.assert_array_equal(whole.item_ids, chunked.item_ids)
    np.testing.assert_allclose(whole.scores, chunked.scores, atol=1e-6)


def test_save_and_load_give_the_same_results(shop, tmp_path):
    retriever = Retriever.load(shop / "run")
    users = pd.read_parquet(shop / "run" / "prepare" / "users.parquet")["user_id"].astype(str)
    retriever.add_items(["new"], embeddings=np.ones((1, 8), np.float32),
                        attributes={"category": ["1"]})
    retriever.remove_items([retriever.item_ids[0]])
    before = retriever.recommend(user_ids=[*users, "nobody"], k=10)
    history = retriever.recommend(histories=[["new"]], k=10)

    loaded = Retriever.load(retriever.save(tmp_path / "saved"))
    after = loaded.recommend(user_ids=[*users, "nobody"], k=10)
    np.testing.assert_array_equal(after.item_ids, before.item_ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.source, before.source)
    np.testing.assert_array_equal(loaded.recommend(histories=[["new"]], k=10).item_ids,
                                  history.item_ids)
    assert sorted(loaded.item_ids) == sorted(retriever.item_ids)
    # The saved folder can itself take new products: the vocabularies came along.
    loaded.add_items(["newer"], embeddings=np.ones((1, 8), np.float32),
                     attributes={"category": ["1"]})
    assert "newer" in loaded.item_ids


def test_a_new_product_gets_its_content_vector_and_its_categorys_users(shop):
    """A product never in the log, added from its h and category, is placed exactly where the
    model's own cold products are: it is given the h and category of one of them, P (a
    catalog product the k-core left out of the log, whose item vector `fit(new_products=True)`
    made from its content alone), and gets P's score for every query. What makes it land in
    the top 10 of a user whose history is P's category: the model ranks by category (that
    user's top 10 is nearly all of it) and P is among them."""
    retriever = Retriever.load(shop / "run")
    category = category_of(shop)
    prepared = set(pd.read_parquet(shop / "run" / "prepare" / "items.parquet")["item_id"])
    cold = [i for i in retriever.model.item_ids if i not in prepared]
    assert cold, "the k-core should leave some catalog products out of the log"
    embeddings = read_vectors(shop / "embeddings.parquet")
    h_of = dict(zip(embeddings.ids, embeddings.vectors, strict=True))
    counts = pd.read_parquet(shop / "run" / "prepare" / "items.parquet")
    by_sales = counts.sort_values("count", ascending=False)["item_id"]

    def category_user(c: str) -> list[str]:
        return [i for i in by_sales if category[i] == c][:MAX_HISTORY]

    placed = None
    for p in cold:
        top = retriever.recommend(histories=[category_user(category[p])], k=10)
        if p in top.item_ids[0]:
            placed = p, top
            break
    assert placed is not None, "no cold product is in the top 10 of its category's user"
    p, top = placed
    c = category[p]
    # The model ranks by category: that user's top 10 is (nearly) all of it.
    assert sum(category[i] == c for i in top.item_ids[0]) >= 8

    retriever.add_items(["brand-new"], embeddings=h_of[p][None], attributes={"category": [c]})
    again = retriever.recommend(histories=[category_user(c)], k=11)
    ranked = again.item_ids[0].tolist()
    assert "brand-new" in ranked[:10]
    assert again.scores[0][ranked.index("brand-new")] == pytest.approx(
        again.scores[0][ranked.index(p)], abs=1e-6)
    # Its item vector is P's, the content path's: the same score for any query at all.
    some = retriever.recommend(histories=[[i] for i in retriever.item_ids[:20]], k=len(retriever),
                               exclude_seen=False)
    for ids, scores in zip(some.item_ids, some.scores, strict=True):
        row = dict(zip(ids, scores, strict=True))
        assert row["brand-new"] == pytest.approx(row[p], abs=1e-6)
    # A history may hold the new product; removing it takes it out of every top-k.
    assert retriever.recommend(histories=[["brand-new"]], k=3).source.tolist() == ["history"]
    live = len(retriever)
    retriever.remove_items(["brand-new"])
    assert "brand-new" not in retriever.item_ids and len(retriever) == live - 1
    gone = retriever.recommend(histories=[category_user(c)], k=len(retriever),
                               exclude_seen=False)
    assert "brand-new" not in gone.item_ids[0]
    assert retriever.recommend(histories=[["brand-new"]], k=3).source.tolist() == ["history"]


def test_a_new_product_from_its_photo_goes_through_the_image_encoder(shop):
    """Photos are encoded by the image encoder and then placed as their h would be."""
    calls = []

    def encoder(images: torch.Tensor) -> np.ndarray:
        calls.append(images.shape)
        return fake_encoder(images)

    retriever = Retriever.load(shop / "run", image_encoder=encoder)
    photos = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, *IMAGE),
                                                                dtype=np.uint8))
    retriever.add_items(["photo-a", "photo-b"], images=photos,
                        attributes={"category": ["0", "2"]})
    retriever.add_items(["h-a", "h-b"], embeddings=fake_encoder(photos),
                        attributes={"category": ["0", "2"]})
    assert calls == [(2, *IMAGE)]
    recs = retriever.recommend(histories=[[i] for i in retriever.item_ids[:10]],
                               k=len(retriever), exclude_seen=False)
    for ids, scores in zip(recs.item_ids, recs.scores, strict=True):
        row = dict(zip(ids, scores, strict=True))
        assert row["photo-a"] == pytest.approx(row["h-a"], abs=1e-6)
        assert row["photo-b"] == pytest.approx(row["h-b"], abs=1e-6)


def test_bad_queries_are_named(shop):
    retriever = Retriever.load(shop / "run")
    some = list(retriever.item_ids[:2])
    with pytest.raises(DataError, match=r"history 1 holds a product id the model does not "
                                        r"know \(e\.g\. 'nope'\)"):
        retriever.recommend(histories=[some, [some[0], "nope"]], k=3)
    with pytest.raises(ValueError, match="history 0 is empty"):
        retriever.recommend(histories=[[]], k=3)
    with pytest.raises(TypeError, match="history 0 is the string"):
        retriever.recommend(histories=[some[0]], k=3)
    for k in (0, -1, len(retriever) + 1, 2.5):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, "):
            retriever.recommend(histories=[some], k=k)
    with pytest.raises(ValueError, match="2 user_ids but 1 histories"):
        retriever.recommend(user_ids=["a", "b"], histories=[some], k=3)
    with pytest.raises(ValueError, match="give user_ids, histories, or both"):
        retriever.recommend(k=3)
    with pytest.raises(TypeError, match="user_ids must be a list"):
        retriever.recommend(user_ids="u1", k=3)


def test_bad_new_products_leave_the_retriever_as_it_was(shop):
    retriever = Retriever.load(shop / "run")
    ids, rows = retriever.item_ids.copy(), len(retriever.model.item_ids)
    query = retriever.recommend(histories=[list(ids[:3])], k=10)
    h = np.ones((1, 8), np.float32)
    category = {"category": ["1"]}
    bad = [
        (dict(item_ids=["x"], images=torch.zeros(1, *IMAGE, dtype=torch.uint8),
              attributes=category), ValueError, "needs an image_encoder"),
        (dict(item_ids=["x", "x"], embeddings=np.ones((2, 8)), attributes={"category": ["1"] * 2}),
         ValueError, "item_ids repeats 'x'"),
        (dict(item_ids=[ids[0]], embeddings=h, attributes=category), ValueError,
         f"product '{ids[0]}' is already in the live index"),
        (dict(item_ids=["x"], attributes=category), ValueError,
         "give the new products' images or their embeddings"),
        (dict(item_ids=["x"], embeddings=np.ones((1, 5)), attributes=category), ValueError,
         r"embeddings must be \(1, 8\)"),
        (dict(item_ids=["x"], embeddings=np.full((1, 8), np.nan), attributes=category),
         ValueError, "embedding of 'x' is not finite"),
        (dict(item_ids=["x"], embeddings=h), ValueError, r"reads attributes \['category'\]"),
        (dict(item_ids=["x"], embeddings=h, attributes={"category": ["1", "2"]}), ValueError,
         "attribute 'category' needs a list of 1 values"),
        (dict(item_ids=[], embeddings=h[:0], attributes={"category": []}), ValueError,
         "no item_ids to add"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            retriever.add_items(**kwargs)

    with_encoder = Retriever.load(shop / "run", image_encoder=fake_encoder)
    photos = [
        (torch.zeros(1, 3, 9, 9, dtype=torch.uint8), "images are 9x9; the image encoder takes 8x8"),
        (torch.zeros(1, *IMAGE), "images must be a uint8 tensor or array"),
        (np.zeros((1, 8, 8), np.uint8), r"images must be \(1, C, H, W\)"),
        (torch.zeros(2, *IMAGE, dtype=torch.uint8), r"images must be \(1, C, H, W\)"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "the image encoder refused images"),
    ]
    for images, message in photos:
        with pytest.raises(ValueError, match=message):
            with_encoder.add_items(["x"], images=images, attributes=category)

    # A failure after the tower took the new rows (here the index rebuild) undoes them too.
    def failing(*args, **kwargs):
        raise RuntimeError("disk full")

    retriever._rebuilt = failing
    with pytest.raises(RuntimeError, match="disk full"):
        retriever.add_items(["x"], embeddings=h, attributes=category)
    del retriever._rebuilt
    assert len(retriever.model.item_ids) == rows
    assert len(retriever.model.item_tower.warm) == rows
    assert (retriever.item_ids == ids).all()
    np.testing.assert_array_equal(retriever.recommend(histories=[list(ids[:3])], k=10).item_ids,
                                  query.item_ids)
    retriever.add_items(["x"], embeddings=h, attributes=category)  # and it still works
    assert "x" in retriever.item_ids

    retriever.remove_items(["x"])
    with pytest.raises(ValueError, match="already known to the model"):
        retriever.add_items(["x"], embeddings=h, attributes=category)
    with pytest.raises(ValueError, match="'zzz' is not in the live index"):
        retriever.remove_items(["zzz"])
    with pytest.raises(ValueError, match="empty index"):
        retriever.remove_items(retriever.item_ids)


def test_folders_that_are_not_a_retriever_are_named(shop, tmp_path):
    retriever = Retriever.load(shop / "run")
    saved = retriever.save(tmp_path / "saved")
    meta = json.loads((saved / "retriever.json").read_text())
    (saved / "retriever.json").write_text(json.dumps({**meta, "format": FORMAT_VERSION + 1}))
    with pytest.raises(DataError, match=rf"retriever\.json: a retriever folder of format "
                                        rf"{FORMAT_VERSION + 1}; this twotower reads format "
                                        rf"{FORMAT_VERSION}"):
        Retriever.load(saved)
    with pytest.raises(DataError, match="neither a saved retriever"):
        Retriever.load(tmp_path)
    with pytest.raises(DataError, match=r"no trained model 'ids' here \(models: \['image'\]\)"):
        Retriever.load(shop / "run", name="ids")


def test_an_index_on_default_settings_chooses_them_again_for_its_new_size(shop):
    """ivf's nlist and nprobe follow the catalog size: after products leave (or join), an
    index that was on its defaults gets the defaults of its new size, not the old ones."""
    retriever = Retriever.load(shop / "run")
    vectors = retriever.model.item_vectors().float().numpy()
    rows = retriever._item_rows.get_indexer(retriever.index.ids)
    retriever.index = ItemIndex.build(vectors[rows], retriever.index.ids, "ivf", device="cpu")
    before = len(retriever.index)
    retriever.remove_items(list(retriever.index.ids[: before // 2]))
    after = retriever.index
    assert len(after) == before - before // 2
    assert after.params == default_params("ivf", len(after), after.dim)
    assert after.params != default_params("ivf", before, after.dim)
