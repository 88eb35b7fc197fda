"""The end-to-end demo at a tiny size: results, skipping, redoing what a change reaches,
resuming, and the MLflow record.

Its products are the Fashion-MNIST photos shipped in the package, so it needs nothing beside
the checkout (no ../shared)."""

from __future__ import annotations

import dataclasses
import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import demo
from pipelines.tracking import StageRun, tracking_uri

# The whole demo, twice over, with MLflow: minutes, so outside the quick run.
pytestmark = [pytest.mark.usefixtures("local_mlflow"), pytest.mark.slow]

TINY = ["--shop.num-items", "120", "--shop.num-users", "60", "--shop.num-interactions", "2500",
        "--shop.image-size", "8", "--pretrain.image-size", "8", "--pretrain.epochs", "1",
        "--pretrain.batch-size", "32", "--train.epochs", "3", "--train.batch-size", "128",
        "--ks", "5", "10", "--report-k", "10", "--device", "cpu"]
STAGES = ["make_shop", "pretrain_vision", "embed_catalog", "probe_vision", "prepare",
          "train_two_tower/id_only",
          "build_index/id_only", "train_two_tower/image", "build_index/image",
          "evaluate_retrieval", "figures"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted demo run: (run folder, what `main` returned)."""
    run_dir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = demo.main(["--run-dir", str(run_dir), *TINY])
        while mlflow.active_run() is not None:
            mlflow.end_run()
    return run_dir, out


def test_demo_runs_every_stage_and_reports(finished, capsys):
    run_dir, out = finished
    assert out["ran"] == STAGES and out["skipped"] == []
    results = out["results"]
    assert list(results.index) == ["id_only", "image", "popularity", "ease", "ials", "image_knn"]
    assert {"recall@10", "ndcg@10", "warm recall@10", "tail recall@10"} <= set(results.columns)
    assert results["recall@10"].between(0, 1).all() and results["recall@10"].max() > 0
    report = run_dir / "evaluate_retrieval"
    for name in ("report.md", "metrics.csv", "recall_at_k.png", "ndcg_at_k.png"):
        assert (report / name).stat().st_size > 0
    assert len(out["plots"]) == 5
    for plot in out["plots"]:
        assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert {p.split("/")[-1] for p in out["plots"]} >= {"image_neighbours.png",
                                                         "user_retrievals.png",
                                                         "cold_retrievals.png"}
    drawn = json.loads((run_dir / "figures" / "done.json").read_text())["config"]
    assert list(drawn["models"]) == list(drawn["user_vectors"]) == ["id_only", "image"]
    assert drawn["select_by"] == "image"  # both models side by side, users picked by image's


def test_the_products_are_the_shipped_photos_and_the_demo_says_what_h_knows(finished, capsys):
    run_dir, out = finished
    catalog = pd.read_parquet(run_dir / "make_shop" / "catalog.parquet")
    assert len(catalog) == 120 and catalog["category"].nunique() > 5  # Fashion-MNIST classes
    assert set(out["probe"]) == {"h", "pixels", "random_encoder"}
    assert all(0 <= v <= 1 for v in out["probe"].values())
    assert out["probe"]["pixels"] > 0.3  # 10 classes: chance is 0.1
    cold = out["cold_start"]
    assert list(cold.index) == list(out["results"].index)
    assert cold.loc["image", "cold recall@10 (95% interval)"].count("(") == 1
    again = demo.main(["--run-dir", str(run_dir), *TINY])  # all skipped: printed from files
    printed = capsys.readouterr().out
    assert again["probe"] == out["probe"]
    assert "kNN accuracy on the products' categories" in printed and "Cold start" in printed


def test_running_it_again_skips_every_stage_and_records_no_run(finished, capsys):
    run_dir, out = finished
    client = MlflowClient(tracking_uri(run_dir))
    experiment = client.get_experiment_by_name("twotower").experiment_id
    before = client.search_runs([experiment])
    again = demo.main(["--run-dir", str(run_dir), *TINY])
    assert again["ran"] == [] and again["skipped"] == STAGES
    assert len(client.search_runs([experiment])) == len(before)  # no empty `demo` run
    pd.testing.assert_frame_equal(again["results"], out["results"])
    assert "skipped (already done): make_shop" in capsys.readouterr().out


def test_a_new_simclr_setting_redoes_only_the_stages_that_read_the_image_encoder(tmp_path):
    first = demo.main(["--run-dir", str(tmp_path), *TINY])
    again = demo.main(["--run-dir", str(tmp_path), *TINY, "--pretrain.temperature", "0.3"])
    assert again["ran"] == ["pretrain_vision", "embed_catalog", "probe_vision",
                            "train_two_tower/image", "build_index/image", "evaluate_retrieval",
                            "figures"]
    assert again["skipped"] == ["make_shop", "prepare", "train_two_tower/id_only",
                                "build_index/id_only"]
    kept = ["id_only", "popularity", "ease", "ials"]  # read nothing SimCLR wrote: as before
    pd.testing.assert_frame_equal(again["results"].loc[kept], first["results"].loc[kept])
    mlflow.set_tracking_uri(tracking_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["twotower"], order_by=["start_time ASC"])
    parents = runs[runs["tags.mlflow.runName"] == "demo"]["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[-1]]
    assert len(parents) == 2 and sorted(children["tags.mlflow.runName"]) == sorted(again["ran"])


def test_mlflow_holds_the_parent_and_one_child_per_stage(finished):
    run_dir, _ = finished
    mlflow.set_tracking_uri(tracking_uri(run_dir))
    runs = mlflow.search_runs(experiment_names=["twotower"], order_by=["start_time ASC"])
    parent = runs[runs["tags.mlflow.runName"] == "demo"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert sorted(children["tags.mlflow.runName"]) == sorted(STAGES)  # a run per model too
    assert (children["status"] == "FINISHED").all()
    assert parent["params.pretrain.arch"] == "resnet_narrow"
    assert parent["metrics.image/recall_at_10"] == pytest.approx(
        finished[1]["results"].loc["image", "recall@10"])
    client = MlflowClient(tracking_uri(run_dir))
    train = children[children["tags.mlflow.runName"].str.startswith("train_two_tower/")]
    assert len(train) == 2
    assert train["params.train.epochs"].eq("3").all()
    for run_id in train["run_id"]:
        assert len(client.get_metric_history(run_id, "epoch/loss")) == 3
        assert {a.path for a in client.list_artifacts(run_id)} == {"model", "vectors"}
    evaluation = children[children["tags.mlflow.runName"] == "evaluate_retrieval"].iloc[0]
    files = {a.path for a in client.list_artifacts(evaluation["run_id"], "report")}
    assert {"report/report.md", "report/recall_at_k.png"} <= files


def test_killed_during_training_it_resumes_to_the_same_metrics(finished, tmp_path, monkeypatch):
    run_dir, _ = finished
    log = StageRun.log

    def interrupt(self, metrics, step):  # the image model, after its second epoch
        name = mlflow.active_run().info.run_name
        if name == "train_two_tower/image" and "epoch/loss" in metrics and step == 2:
            raise KeyboardInterrupt
        log(self, metrics, step)

    monkeypatch.setattr(StageRun, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        demo.main(["--run-dir", str(tmp_path), *TINY])
    while mlflow.active_run() is not None:
        mlflow.end_run()
    assert (tmp_path / "train_two_tower" / "image" / "last.pt").is_file()
    assert not (tmp_path / "evaluate_retrieval").exists()
    monkeypatch.setattr(StageRun, "log", log)
    resumed = demo.main(["--run-dir", str(tmp_path), *TINY])
    assert resumed["ran"] == STAGES[7:]
    straight = pd.read_csv(run_dir / "evaluate_retrieval" / "metrics.csv")
    again = pd.read_csv(tmp_path / "evaluate_retrieval" / "metrics.csv")
    pd.testing.assert_frame_equal(again, straight)
    mlflow.set_tracking_uri(tracking_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["twotower"])
    assert set(runs["status"]) >= {"FAILED", "FINISHED"}


def test_a_failing_stage_is_marked_failed_and_earlier_outputs_stay(tmp_path, monkeypatch):
    from pipelines import figures

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    drawing = figures.image_neighbours
    monkeypatch.setattr(figures, "image_neighbours", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        demo.main(["--run-dir", str(tmp_path), *TINY])
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(tracking_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["twotower"])
    status = dict(zip(runs["tags.mlflow.runName"], runs["status"], strict=False))
    assert status["figures"] == "FAILED" and status["demo"] == "FAILED"
    assert status["evaluate_retrieval"] == "FINISHED"
    for stage in STAGES[:-1]:
        assert (tmp_path / stage / "done.json").is_file(), stage
    assert not (tmp_path / "figures" / "done.json").exists()
    monkeypatch.setattr(figures, "image_neighbours", drawing)
    again = demo.main(["--run-dir", str(tmp_path), *TINY])
    assert again["ran"] == ["figures"] and again["skipped"] == STAGES[:-1]


def test_the_probe_names_a_missing_label_column(finished):
    from pipelines.probe_vision import ProbeVisionConfig, probe
    from twotower.files import DataError

    run_dir, out = finished
    cfg = ProbeVisionConfig(catalog=str(run_dir / "make_shop" / "catalog.parquet"),
                            embeddings=str(run_dir / "embed_catalog" / "embeddings.parquet"),
                            run_dir=str(run_dir), device="cpu")
    assert probe(cfg) == out["probe"]  # the stage's figures are reproducible
    with pytest.raises(DataError, match="brand"):
        probe(dataclasses.replace(cfg, label="brand"))
