"""The `build_index` and `evaluate_retrieval` stages and the report they write."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pytest
from matplotlib.collections import PolyCollection
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.build_index import BuildIndexConfig
from pipelines.build_index import run as build_index
from pipelines.config import ConfigError, parse_config
from pipelines.evaluate_retrieval import EvaluateRetrievalConfig
from pipelines.evaluate_retrieval import run as evaluate_retrieval
from pipelines.report import cold_start, curves, markdown, write_report
from pipelines.tracking import tracking_uri
from twotower.data import PrepareConfig, prepare
from twotower.evaluate import load_queries
from twotower.files import DataError
from twotower.index import ItemIndex
from twotower.vectors import read_vectors, write_vectors

pytestmark = pytest.mark.usefixtures("local_mlflow")
DIM = 8


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A prepared random log (60 users, 40 items), item and user vectors, one run folder."""
    root = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(0)
    n = 1500
    pl.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, 60, n)],
        "item_id": [f"i{i}" for i in (40 * rng.random(n) ** 1.5).astype(int)],
        "timestamp": 1_700_000_000 + rng.permutation(n),
    }).write_parquet(root / "log.parquet")
    prepared = prepare(root / "log.parquet", root / "prepare",
                       PrepareConfig(min_user_interactions=2, min_item_interactions=2))
    items = pl.read_parquet(prepared / "items.parquet")["item_id"].to_list()
    users = pl.read_parquet(prepared / "users.parquet")["user_id"].to_list()
    write_vectors(items, rng.normal(size=(len(items), DIM)), root / "items.parquet", {})
    write_vectors(users, rng.normal(size=(len(users), DIM)), root / "users.parquet", {},
                  id_column="user_id")
    return root


@pytest.mark.slow
def test_build_index_saves_a_loadable_index_and_tracks_it(shop, tmp_path):
    cfg = BuildIndexConfig(vectors=str(shop / "items.parquet"), run_dir=str(tmp_path),
                           name="model", kind="ivf", params={"nlist": 2, "nprobe": 1},
                           device="cpu")
    summary = build_index(cfg)

    index = ItemIndex.load(summary["index"], device="cpu")
    vectors = read_vectors(shop / "items.parquet")
    assert (index.kind, index.params, len(index)) == ("ivf", {"nlist": 2, "nprobe": 1},
                                                      len(vectors.ids))
    assert index.source == str((shop / "items.parquet").resolve())
    saved = json.loads((tmp_path / "build_index" / "model" / "config.json").read_text())
    assert saved["params"] == {"nlist": 2, "nprobe": 1}
    run = MlflowClient(tracking_uri(tmp_path)).get_run(summary["run_id"])
    assert run.info.run_name == "build_index/model" and run.data.params["kind"] == "ivf"
    assert "retriever" not in summary  # vectors of no trained model: no retriever to log
    assert run.data.metrics["items"] == len(vectors.ids) and run.data.metrics["build_seconds"] > 0


def test_build_index_options_on_the_command_line():
    cfg = parse_config(BuildIndexConfig, ["--vectors", "v.parquet", "--kind", "hnsw",
                                          "--params", "M=16", "ef_search=64"])
    assert (cfg.kind, cfg.params) == ("hnsw", {"M": 16, "ef_search": 64})
    with pytest.raises(ValueError, match="kind must be one of"):
        BuildIndexConfig(vectors="v.parquet", kind="lsh")
    with pytest.raises(ValueError, match="plain folder name"):
        BuildIndexConfig(vectors="v.parquet", name="../elsewhere")


@pytest.mark.slow
def test_evaluate_retrieval_ranks_models_and_baselines_and_writes_the_report(shop, tmp_path):
    index = build_index(BuildIndexConfig(vectors=str(shop / "items.parquet"),
                                         run_dir=str(tmp_path), name="model", kind="ivf",
                                         params={"nlist": 2, "nprobe": 1}, device="cpu"))
    cfg = EvaluateRetrievalConfig(
        run_dir=str(tmp_path), prepared=str(shop / "prepare"), ks=(5, 10),
        models={"model": index["index"]}, user_vectors={"model": str(shop / "users.parquet")},
        baselines=("popularity", "ease", "ials", "image_knn"),
        embeddings=str(shop / "items.parquet"), device="cpu", n_boot=100, reference="ease")
    summary = evaluate_retrieval(cfg)

    out = tmp_path / "evaluate_retrieval"
    table = pd.read_csv(out / "metrics.csv")
    assert list(pd.unique(table["scorer"])) == ["model", "popularity", "ease", "ials",
                                                "image_knn"]
    assert set(table["k"]) == {5, 10}
    assert {"low", "high", "diff", "diff_low", "diff_high"} <= set(table.columns)
    means = table[table["metric"] != "coverage"]
    assert (means["low"] <= means["high"]).all() and means["low"].notna().all()
    assert (table.loc[table["scorer"] == "ease", "diff"] == 0).all()
    assert summary["users"] == len(load_queries(shop / "prepare", "test"))
    # The approximate model index is measured against exact search over its source vectors.
    ann = table.query("metric == 'ann_recall'")
    assert set(ann["scorer"]) == {"model"} and ((ann["value"] > 0) & (ann["value"] <= 1)).all()
    recall = table.query("slice == 'all' and metric == 'recall' and k == 5")
    assert summary["metrics"]["ease"]["recall@5"] == pytest.approx(
        recall.set_index("scorer").loc["ease", "value"], abs=1e-4)
    report = (out / "report.md").read_text()
    assert "| model / recall |" in report and "## recall@k on warm items" in report
    ials = table.query("scorer == 'ials' and slice == 'all' and metric == 'ndcg' and k == 5")
    assert (f"| ials / ndcg | {ials['value'].item():.4f} ({ials['low'].item():.4f}\N{EN DASH}"
            f"{ials['high'].item():.4f}) |") in report
    assert "## ANN index recall@k against exact search" in report
    for name in ("recall_at_k.png", "ndcg_at_k.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 600
    run = MlflowClient(tracking_uri(tmp_path)).get_run(summary["run_id"])
    assert run.data.metrics["ease/all/recall_at_5"] == pytest.approx(
        recall.set_index("scorer").loc["ease", "value"])
    artifacts = {a.path for a in MlflowClient(tracking_uri(tmp_path)).list_artifacts(
        summary["run_id"], "report")}
    assert {"report/report.md", "report/metrics.csv", "report/recall_at_k.png"} <= artifacts


def test_a_user_without_a_vector_is_named(shop, tmp_path):
    vectors = read_vectors(shop / "users.parquet", id_column="user_id")
    absent = load_queries(shop / "prepare", "test").user_id[0]
    keep = vectors.ids != absent
    write_vectors(vectors.ids[keep], vectors.vectors[keep], tmp_path / "few.parquet", {},
                  id_column="user_id")
    items = read_vectors(shop / "items.parquet")
    ItemIndex.build(items.vectors, items.ids, device="cpu").save(tmp_path / "index")
    cfg = EvaluateRetrievalConfig(run_dir=str(tmp_path), prepared=str(shop / "prepare"),
                                  models={"m": str(tmp_path / "index")},
                                  user_vectors={"m": str(tmp_path / "few.parquet")},
                                  baselines=(), ks=(5,), device="cpu")
    with pytest.raises(DataError, match=rf"few\.parquet, column 'user_id': no vector for 1 "
                                        rf"user\(s\) of the split \(e\.g\. '{absent}'\)"):
        evaluate_retrieval(cfg)
    assert not (tmp_path / "evaluate_retrieval" / "report.md").exists()


def test_evaluate_retrieval_config_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="both an index and user vectors"):
        EvaluateRetrievalConfig(models={"m": "idx"})
    with pytest.raises(ValueError, match="image_knn baseline needs --embeddings"):
        EvaluateRetrievalConfig(baselines=("image_knn",))
    with pytest.raises(ValueError, match="clash with a baseline"):
        EvaluateRetrievalConfig(models={"ease": "idx"}, user_vectors={"ease": "u.parquet"})
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvaluateRetrievalConfig(baselines=())
    with pytest.raises(ValueError, match="--reference 'ials' is neither a model nor a baseline"):
        EvaluateRetrievalConfig(baselines=("popularity", "ease"), reference="ials")
    with pytest.raises(ValueError, match="n_boot must be >= 0"):
        EvaluateRetrievalConfig(n_boot=-1)
    cfg = parse_config(EvaluateRetrievalConfig, [
        "--models", "tt=runs/x/build_index/tt", "--user-vectors", "tt=u.parquet",
        "--baselines", "popularity", "--ks", "10", "50"])
    assert (cfg.models, cfg.baselines, cfg.ks) == ({"tt": "runs/x/build_index/tt"},
                                                  ("popularity",), (10, 50))
    with pytest.raises(ConfigError, match="invalid choice: 'random'"):
        parse_config(EvaluateRetrievalConfig, ["--baselines", "random"])
    cfg = parse_config(EvaluateRetrievalConfig, [
        "--baselines", "ials", "--ials.factors", "16", "--ials.alpha", "40", "--n-boot", "0",
        "--reference", "ials"])
    assert (cfg.ials.factors, cfg.ials.alpha, cfg.ials.regularization) == (16, 40.0, 10.0)
    assert (cfg.n_boot, cfg.reference) == (0, "ials")
    with pytest.raises(ValueError, match="factors must be >= 1"):
        parse_config(EvaluateRetrievalConfig, ["--ials.factors", "0"])


def test_report_tables_hold_the_values_of_the_metrics_table(tmp_path):
    rows = [("a", "all", "recall", 10, 0.25, 4), ("a", "all", "recall", 20, 0.5, 4),
            ("b", "all", "recall", 10, 0.125, 4), ("b", "all", "recall", 20, 0.75, 4),
            ("a", "cold", "recall", 10, 0.0, 2), ("a", "cold", "recall", 20, 1.0, 2),
            ("b", "cold", "recall", 10, 0.5, 2), ("b", "cold", "recall", 20, 0.5, 2),
            ("a", "all", "ndcg", 10, 0.3, 4), ("a", "all", "ndcg", 20, 0.4, 4),
            ("b", "all", "ndcg", 10, 0.1, 4), ("b", "all", "ndcg", 20, 0.2, 4)]
    table = pd.DataFrame(rows, columns=["scorer", "slice", "metric", "k", "value", "users"])
    paths = write_report(table, tmp_path, title="T", notes=["a note"])

    report = paths["report"].read_text()
    assert report.startswith("# T\n\na note\n")
    assert "| a / recall | 0.2500 | 0.5000 |" in report
    assert "| b / ndcg | 0.1000 | 0.2000 |" in report
    assert "## recall@k on cold items (2 users with such a target)" in report
    assert "| b | 0.5000 | 0.5000 |" in report  # b's cold recall@10, @20
    assert pd.read_csv(paths["metrics"]).equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.csv", "ndcg_at_k.png", "recall_at_k.png", "report.md"]  # no temporary left


def test_the_overall_table_shows_each_interval_and_the_csv_keeps_them(tmp_path):
    nan = float("nan")
    rows = [("a", "all", "recall", 10, 0.3312, 0.3101, 0.3530, 4),
            ("a", "all", "ndcg", 10, 0.2, 0.1, 0.3, 4),
            ("a", "all", "coverage", 10, 0.5, nan, nan, 4),  # not a mean over users
            ("a", "cold", "recall", 10, 0.25, 0.0, 0.5, 2)]
    table = pd.DataFrame(rows, columns=["scorer", "slice", "metric", "k", "value", "low", "high",
                                        "users"])
    paths = write_report(table, tmp_path)

    report = paths["report"].read_text()
    assert "| a / recall | 0.3312 (0.3101\N{EN DASH}0.3530) |" in report
    assert "| a / coverage | 0.5000 |" in report
    assert "| a | 0.2500 (0.0000\N{EN DASH}0.5000) |" in report  # slice tables too
    pd.testing.assert_frame_equal(pd.read_csv(paths["metrics"]), table)
    skipped = table.assign(low=nan, high=nan)  # evaluate(n_boot=0)
    assert "| a / recall | 0.3312 |" in write_report(skipped, tmp_path)["report"].read_text()


def test_the_cold_start_table_puts_warm_and_cold_recall_side_by_side(tmp_path):
    rows = [(s, slice_name, metric, 10, value, value - 0.1, value + 0.1, 5)
            for s, values in (("image", (0.4, 0.2)), ("ease", (0.5, 0.0)))
            for slice_name, value in zip(("warm", "cold"), values, strict=True)
            for metric in ("recall", "ndcg")]
    table = pd.DataFrame(rows, columns=["scorer", "slice", "metric", "k", "value", "low", "high",
                                        "users"])
    cold = cold_start(table, 10)
    assert list(cold.index) == ["image", "ease"]
    assert cold.loc["image"].tolist() == ["0.4000 (0.3000\N{EN DASH}0.5000)",
                                          "0.2000 (0.1000\N{EN DASH}0.3000)", "0.50"]
    assert cold.loc["ease", "cold / warm"] == "0.00"
    report = write_report(table, tmp_path)["report"].read_text()
    assert "## Cold start" in report and "| image | 0.4000 (0.3000" in report


def test_markdown_rounds_floats_and_keeps_the_index():
    frame = pd.DataFrame({"x": [1.0 / 3.0], "n": [7]}, index=pd.Index(["row"], name="name"))
    assert markdown(frame, digits=2) == "| name | x | n |\n|---|---:|---:|\n| row | 0.33 | 7 |"


def _curve_table(with_intervals: bool = True) -> pd.DataFrame:
    """Two scorers' recall on `all` (about 0.4) and on `cold` (about 0.01), at k = 10, 20, 50;
    each value ± 10% as its interval."""
    rows = [(scorer, slice_name, "recall", k, level * k / 50 + shift, 30 if slice_name == "all"
             else 6) for scorer, shift in (("a", 0.0), ("b", 0.002))
            for slice_name, level in (("all", 0.4), ("cold", 0.01)) for k in (10, 20, 50)]
    table = pd.DataFrame(rows, columns=["scorer", "slice", "metric", "k", "value", "users"])
    if with_intervals:
        table["low"], table["high"] = 0.9 * table["value"], 1.1 * table["value"]
    return table


def test_each_slice_panel_has_its_own_scale_from_zero_and_a_band_per_scorer():
    fig = curves(_curve_table(), "recall")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["all", "cold"]
    assert "(30 users with such a target)" in panels[0].get_title()
    assert "(6 users with such a target)" in panels[1].get_title()
    (low_all, top_all), (low_cold, top_cold) = (ax.get_ylim() for ax in panels)
    assert low_all == low_cold == 0
    assert 0.44 <= top_all < 0.6 and 0.011 <= top_cold < 0.02  # the cold curve fills its panel
    for ax in panels:
        assert len(ax.lines) == 2  # one line per scorer
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # and its band


def test_the_legend_has_a_cell_of_its_own_and_names_every_scorer():
    fig = curves(_curve_table(), "recall")
    keys = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(keys) == 1 and not keys[0].lines and not keys[0].collections  # hides no data
    labels = [t.get_text() for t in keys[0].get_legend().get_texts()]
    assert labels[:2] == ["a", "b"] and "95% bootstrap interval" in labels[2]


def test_curves_without_intervals_draw_lines_only():
    fig = curves(_curve_table(with_intervals=False), "recall")
    assert not any(ax.collections for ax in fig.axes)
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
    with pytest.raises(ValueError, match="no 'ndcg' rows"):
        curves(_curve_table(), "ndcg")
