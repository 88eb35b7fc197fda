"""The `recommend` stage: every user's top-k to Parquet, as the Retriever serves them."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import parse_config
from pipelines.recommend import SCHEMA, RecommendConfig, run
from pipelines.tracking import tracking_uri
from twotower.evaluate import load_queries
from twotower.files import DataError
from twotower.retriever import Retriever

pytestmark = pytest.mark.usefixtures("local_mlflow")


@pytest.mark.slow  # the trained run of tests/conftest.py
def test_a_split_gets_k_rows_per_user_as_the_retriever_serves_them(two_tower_run):
    run_dir = two_tower_run / "run"
    summary = run(RecommendConfig(run_dir=str(run_dir), users="test", k=7, chunk_size=5,
                                  device="cpu"))

    out = run_dir / "recommend" / "image" / "recommendations.parquet"
    assert summary["recommendations"] == str(out)
    table = pq.read_table(out)
    assert table.schema == SCHEMA
    frame = table.to_pandas()
    queries = load_queries(run_dir / "prepare", "test")
    assert summary["users"] == len(queries) and len(frame) == 7 * len(queries)
    assert frame["user_id"].drop_duplicates().tolist() == queries.user_id.tolist()
    assert (frame.groupby("user_id", sort=False)["rank"].apply(list)
            == [list(range(1, 8))] * len(queries)).all()
    # Chunk after chunk, the same rows the Retriever gives all the users at once.
    histories = [queries.item_ids[h] if h.size else None for h in queries.history]
    expected = Retriever.load(run_dir).recommend(queries.user_id, histories, k=7).to_frame()
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert sum(summary["sources"].values()) == len(queries)
    logged = MlflowClient(tracking_uri(run_dir)).get_run(summary["run_id"])
    assert logged.info.run_name == "recommend" and logged.data.metrics["users"] == len(queries)
    saved = json.loads((out.parent / "config.json").read_text())
    assert saved["users"] == "test" and saved["k"] == 7


@pytest.mark.slow  # the trained run of tests/conftest.py
def test_a_histories_file_is_served_row_by_row(two_tower_run, tmp_path):
    run_dir = two_tower_run / "run"
    retriever = Retriever.load(run_dir)
    known = str(pd.read_parquet(run_dir / "prepare" / "users.parquet")["user_id"][0])
    histories = [list(retriever.item_ids[:3]), None, [], list(retriever.item_ids[5:6])]
    pq.write_table(pa.table({"user_id": [known, "a", "b", "c"],
                             "history": pa.array(histories, pa.list_(pa.string()))}),
                   tmp_path / "histories.parquet")
    out = tmp_path / "recs.parquet"
    summary = run(RecommendConfig(run_dir=str(run_dir), users=str(tmp_path / "histories.parquet"),
                                  k=4, chunk_size=3, device="cpu", out=str(out)))
    frame = pd.read_parquet(out)
    expected = retriever.recommend([known, "a", "b", "c"],
                                   [histories[0], None, None, histories[3]], k=4).to_frame()
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert summary["sources"] == {"user": 1, "history": 1, "popularity": 2}


@pytest.mark.slow  # the trained run of tests/conftest.py
def test_a_bad_histories_file_is_named_and_nothing_is_written(two_tower_run, tmp_path):
    run_dir = two_tower_run / "run"
    path = tmp_path / "histories.parquet"
    out = tmp_path / "recs.parquet"

    def recommend():
        run(RecommendConfig(run_dir=str(run_dir), users=str(path), k=3, device="cpu",
                            out=str(out)))

    pq.write_table(pa.table({"user": ["a"], "history": [["x"]]}), path)
    with pytest.raises(DataError, match=r"histories\.parquet, column 'user_id': missing column"):
        recommend()
    pq.write_table(pa.table({"user_id": ["a"], "history": ["x"]}), path)
    with pytest.raises(DataError, match=r"histories\.parquet, column 'history': must hold lists "
                                        r"of product ids, not string"):
        recommend()
    some = str(Retriever.load(run_dir).item_ids[0])
    pq.write_table(pa.table({"user_id": ["a", "b"], "history": [[some], [some, "nope"]]}), path)
    with pytest.raises(DataError, match=r"histories\.parquet, column 'history': in the 2 rows "
                                        r"from row 0: history 1 holds a product id the model "
                                        r"does not know \(e\.g\. 'nope'\)"):
        recommend()
    pq.write_table(pa.table({"user_id": pa.array([None, "b"], pa.string()),
                             "history": [[some], [some]]}), path)
    with pytest.raises(DataError, match=r"histories\.parquet, column 'user_id': 1 null user ids"):
        recommend()
    with pytest.raises(DataError, match="no histories file here"):
        run(RecommendConfig(run_dir=str(run_dir), users=str(tmp_path / "absent.parquet")))
    assert not out.exists() and not list(tmp_path.glob(".recs*"))


def test_the_config_on_the_command_line():
    cfg = parse_config(RecommendConfig, ["--users", "valid", "--k", "20", "--no-exclude-seen"])
    assert (cfg.users, cfg.k, cfg.exclude_seen) == ("valid", 20, False)
    assert cfg.out_path.as_posix() == "runs/demo/recommend/image/recommendations.parquet"
    with pytest.raises(ValueError, match="k must be at least 1"):
        RecommendConfig(k=0)
    with pytest.raises(ValueError, match="plain folder name"):
        RecommendConfig(name="../x")
