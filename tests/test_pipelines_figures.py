"""The `figures` stage: the user-selection rule, the user gallery's rows and marks, and the
stage end to end on two models (random vectors: what is drawn, not what is learned)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from pipelines import figures
from pipelines.figures import FiguresConfig, pick_users, user_retrievals
from twotower.data import PrepareConfig, prepare
from twotower.evaluate import EvalQueries, load_queries
from twotower.index import ItemIndex
from twotower.synthetic import ShopConfig, make_shop, write_shop
from twotower.vectors import write_vectors

pytestmark = pytest.mark.usefixtures("local_mlflow")


def _naive_pick(recall: list[float], quantiles: list[float]) -> list[int]:
    """The rule as the docstring states it, with loops: for each quantile in turn (linear
    interpolation between the sorted values), the untaken user nearest it, the first on ties."""
    ordered = sorted(recall)
    taken: list[int] = []
    for q in quantiles[:len(recall)]:
        at = q * (len(ordered) - 1)
        below = int(at)
        above = min(below + 1, len(ordered) - 1)
        level = ordered[below] + (at - below) * (ordered[above] - ordered[below])
        best = None
        for row, value in enumerate(recall):
            nearer = best is None or abs(value - level) < abs(recall[best] - level)
            if row not in taken and nearer:
                best = row
        taken.append(best)
    return taken


@pytest.mark.parametrize("quantiles", [[0.5], [0.25, 0.5, 0.75], [0.5, 0.75, 0.9], [1.0, 0.0],
                                       [0.5] * 9])
def test_pick_users_is_the_nearest_untaken_user_to_each_quantile(quantiles):
    rng = np.random.default_rng(len(quantiles))
    recall = list(rng.choice([0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0], size=7))  # many ties
    assert pick_users(np.asarray(recall), quantiles).tolist() == _naive_pick(recall, quantiles)


def test_pick_users_by_hand():
    # Quartiles of [0, 0, 0, .25, .5, 1, 1] are 0, .25, .75: rows 0 (first of the zeros), 3,
    # and 4 (.5 and 1 are both .25 from .75: the first wins).
    quartiles = [0.25, 0.5, 0.75]
    assert pick_users(np.array([0, 0, 0, .25, .5, 1, 1]), quartiles).tolist() == [0, 3, 4]
    # Every user at 0: the median user is the first, then the next ones.
    assert pick_users(np.zeros(5), quartiles).tolist() == [0, 1, 2]
    assert pick_users(np.array([0.5]), quartiles).tolist() == [0]  # fewer users than asked for
    assert pick_users(np.array([]), quartiles).tolist() == []


def _queries() -> EvalQueries:
    """Two users over ten products p0..p9, of which p8 and p9 are new (cold)."""
    return EvalQueries(
        user_index=np.array([0, 1]), user_id=np.array(["alice", "bob"]),
        history=[np.array([0, 1, 2]), np.array([3])], seen=[np.array([0, 1, 2]), np.array([3])],
        relevant=[np.array([4, 9]), np.array([5])],
        item_ids=np.array([f"p{i}" for i in range(10)]),
        item_counts=np.array([5, 4, 3, 3, 2, 2, 1, 1, 0, 0]))


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_user_retrievals_shows_both_models_side_by_side_with_targets_and_new_products_marked():
    ids = np.array([f"p{i}" for i in range(10)])
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    retrieved = {"id_only": np.array([["p4", "p5", "p6"], ["p0", "p1", "p2"]]),
                 "image": np.array([["p9", "p8", "p4"], ["p5", "p8", "p0"]])}
    fig = user_retrievals(images, ids, _queries(), retrieved, caption="the rule", history=3)

    assert fig.get_suptitle() == "the rule"
    blocks = fig.subfigs
    assert [b.get_suptitle() for b in blocks] == ["alice", "bob"]
    alice = blocks[0].axes  # rows: history (3 cells, a gap, targets), id_only, image
    width = 5
    labels = [ax.get_ylabel() for ax in alice[::width]]
    assert labels[0].startswith("history")
    assert labels[1].startswith("id_only") and "1 of 2" in labels[1]  # p4
    assert labels[2].startswith("image") and "2 of 2" in labels[2]  # p9 and p4
    image_row = alice[2 * width:2 * width + 3]
    assert [_texts(ax) for ax in image_row] == [["new"], ["new"], []]  # p9, p8 cold; p4 not
    framed = [ax.spines["top"].get_visible() for ax in image_row]
    assert framed == [True, False, True]  # the test targets p9 and p4
    assert image_row[0].spines["top"].get_edgecolor() == to_rgba("tab:green")
    assert not alice[3].get_visible()  # the gap between history and targets
    assert _texts(alice[4]) == ["new"]  # room for one target: the new one, p9, comes first
    assert alice[4].get_title(loc="left") == "then chose 2 (1 shown)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("test target" in t for t in legend) and any("new" in t for t in legend)


def test_user_retrievals_with_one_model():
    ids = np.array([f"p{i}" for i in range(10)])
    images = np.zeros((10, 3, 8, 8), dtype=np.uint8)
    fig = user_retrievals(images, ids, _queries().take(np.array([1])),
                          {"only": np.array([["p5", "p6"]])}, history=2)
    (block,) = fig.subfigs
    labels = [ax.get_ylabel() for ax in block.axes if ax.get_ylabel()]
    assert len(labels) == 2 and labels[1].startswith("only") and "1 of 1" in labels[1]
    with pytest.raises(ValueError, match="at least one model"):
        user_retrievals(images, ids, _queries(), {})


def test_figures_config_needs_both_paths_of_every_model_and_picks_the_last_by_default():
    cfg = FiguresConfig(catalog="c", embeddings="e", models={"a": "ia", "b": "ib"},
                        user_vectors={"a": "ua", "b": "ub"})
    assert cfg.chooser == "b" and {"ia", "ib", "ua", "ub"} <= set(map(str, cfg.inputs))
    assert FiguresConfig(catalog="c", embeddings="e", models={"a": "ia", "b": "ib"},
                         user_vectors={"a": "ua", "b": "ub"}, select_by="a").chooser == "a"
    with pytest.raises(ValueError, match="both an index and user vectors"):
        FiguresConfig(catalog="c", embeddings="e", models={"a": "ia"}, user_vectors={"b": "u"})
    with pytest.raises(ValueError, match="--select-by 'c' is not one of"):
        FiguresConfig(catalog="c", embeddings="e", models={"a": "ia"}, user_vectors={"a": "u"},
                      select_by="c")
    with pytest.raises(ValueError, match=r"quantiles must be one or more values in \[0, 1\]"):
        FiguresConfig(catalog="c", embeddings="e", models={"a": "ia"}, user_vectors={"a": "u"},
                      quantiles=(0.5, 50.0))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A tiny shop split in time (products released later are cold), its catalog and image
    embeddings, and two 'models' of random item and user vectors, each with a flat index."""
    root = tmp_path_factory.mktemp("figures")
    made = make_shop(ShopConfig(num_items=60, num_users=40, num_interactions=1500, image_size=8,
                                initial_fraction=0.5))
    written = write_shop(made, root)
    prepare(written["interactions"], root / "prepare",
            PrepareConfig(protocol="temporal", min_user_interactions=3, min_item_interactions=1))
    rng = np.random.default_rng(0)
    write_vectors(made.catalog["item_id"], rng.normal(size=(len(made.catalog), 4)),
                  root / "embeddings.parquet", {})
    items = pd.read_parquet(root / "prepare" / "items.parquet")["item_id"]
    users = pd.read_parquet(root / "prepare" / "users.parquet")["user_id"]
    paths = {}
    for name in ("id_only", "image"):
        index = ItemIndex.build(rng.normal(size=(len(items), 4)), items.to_numpy(), "flat",
                                device="cpu")
        index.save(root / name)
        write_vectors(users, rng.normal(size=(len(users), 4)), root / f"{name}_users.parquet",
                      {}, id_column="user_id")
        paths[name] = (str(root / name), str(root / f"{name}_users.parquet"))
    return root, paths


def test_the_stage_draws_the_users_the_rule_picks_with_both_models(two_models, monkeypatch):
    root, paths = two_models
    drawn = {}

    def keep(*args, **kwargs):
        drawn["queries"], drawn["figure"] = args[2], user_retrievals(*args, **kwargs)
        return drawn["figure"]

    monkeypatch.setattr(figures, "user_retrievals", keep)
    cfg = FiguresConfig(catalog=str(root / "catalog.parquet"),
                        embeddings=str(root / "embeddings.parquet"),
                        models={name: p[0] for name, p in paths.items()},
                        user_vectors={name: p[1] for name, p in paths.items()},
                        run_dir=str(root / "run"), prepared=str(root / "prepare"), k=5,
                        cold_k=20)
    out = figures.run(cfg)
    monkeypatch.undo()

    assert set(out) == {"image_neighbours", "user_retrievals", "cold_retrievals"}
    for path in out.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
    every = load_queries(root / "prepare", "test")
    assert (every.item_counts == 0).any()  # the shop has cold products
    ranked = figures.VectorScorer.from_saved(*paths["image"]).rank(every, 5)
    recall = np.array([np.isin(ranked[u], every.item_ids[r]).sum() / r.size
                       for u, r in enumerate(every.relevant)])
    picked = pick_users(recall, [0.5, 0.75, 0.9])
    assert list(drawn["queries"].user_id) == list(every.user_id[picked])
    fig = drawn["figure"]
    assert "percentiles 50, 75, 90 of image's recall@5" in fig.get_suptitle()
    assert f"{(recall == 0).mean():.0%} have none" in fig.get_suptitle()
    assert [b.get_suptitle().split(":")[0] for b in fig.subfigs] == list(every.user_id[picked])
    labels = [ax.get_ylabel().split("\n")[0] for ax in fig.subfigs[0].axes if ax.get_ylabel()]
    assert labels == ["history", "id_only", "image"]
