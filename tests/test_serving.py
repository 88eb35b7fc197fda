"""The retriever as an MLflow model: logged by build_index, loaded from a run folder, a saved
folder or a model URI, and served over HTTP by `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.build_index import BuildIndexConfig
from pipelines.build_index import run as build_index
from pipelines.retriever import load_retriever, save_retriever
from pipelines.tracking import tracking_uri
from pipelines.train_two_tower import TrainTwoTowerConfig
from pipelines.train_two_tower import run as train_two_tower
from simclr_vision.data import load_catalog
from simclr_vision.embed import FrozenEncoder, embed_catalog
from simclr_vision.pretrain import PretrainConfig, pretrain
from twotower.data import PrepareConfig, prepare
from twotower.files import DataError
from twotower.synthetic import ShopConfig, make_shop, write_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig

# Training, MLflow stores and a server: seconds each, so outside the quick run.
pytestmark = [pytest.mark.usefixtures("local_mlflow"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(epochs=2, batch_size=64, val_k=10, max_history=5,
                    tower=TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4))


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A run folder whose image model was trained on h from a SimCLR checkpoint of its own,
    and build_index's summary (which names the logged retriever); the catalog beside it."""
    root = tmp_path_factory.mktemp("serve")
    files = write_shop(make_shop(ShopConfig(num_items=80, num_users=60, num_interactions=3000,
                                            image_size=8)), root / "shop")
    run_dir = root / "run"
    pretrain(load_catalog(files["catalog"]).images, PretrainConfig(
        arch="resnet_narrow", width=4, image_size=8, epochs=1, batch_size=32, knn_every=0,
        progress=False, checkpoint_dir=str(run_dir / "pretrain_vision")))
    embeddings = embed_catalog(files["catalog"], run_dir / "pretrain_vision" / "last.pt",
                               run_dir / "embed_catalog" / "embeddings.parquet", progress=False)
    prepare(files["interactions"], run_dir / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = train_two_tower(TrainTwoTowerConfig(
            run_dir=str(run_dir), name="image", embeddings=str(embeddings), device="cpu",
            train=TRAIN))
        built = build_index(BuildIndexConfig(vectors=trained["vectors"]["items"],
                                             run_dir=str(run_dir), name="image", device="cpu"))
    return run_dir, built, files["catalog"]


@pytest.fixture
def tracking(shop):
    """The run folder's MLflow store as the current tracking URI, as a server would have it."""
    mlflow.set_tracking_uri(tracking_uri(shop[0]))


def queries(run_dir, retriever):
    """Three known users (the first with another history than its own), a history alone."""
    users = pd.read_parquet(run_dir / "prepare" / "users.parquet")["user_id"]
    items = list(retriever.item_ids)
    return [*users[:3], ""], [items[:2], None, None, items[5:8]]


def test_build_index_logs_the_retriever_with_its_encoder_and_registers_it(shop, tracking):
    run_dir, built, _ = shop
    assert built["retriever"] == f"runs:/{built['run_id']}/retriever"
    client = MlflowClient()
    versions = client.search_model_versions("name = 'twotower-image'")
    assert [int(v.version) for v in versions] == [1] and versions[0].run_id == built["run_id"]
    local = Path(mlflow.artifacts.download_artifacts(built["retriever"]))
    encoder = local / "artifacts" / "retriever" / "image_encoder"
    assert (encoder / "checkpoint.pt").read_bytes() == (
        run_dir / "pretrain_vision" / "last.pt").read_bytes()
    assert json.loads((encoder / "embeddings.json").read_text())["image_size"] == 8
    signature = mlflow.models.get_model_info(built["retriever"]).signature
    assert signature.inputs.input_names() == ["user_id", "history", "k"]
    assert [c.name for c in signature.outputs.inputs] == ["user_id", "rank", "item_id", "score",
                                                          "source"]


def test_the_logged_model_recommends_what_the_run_folder_does(shop, tracking, tmp_path):
    run_dir, built, _ = shop
    from_run = load_retriever(run_dir)
    users, histories = queries(run_dir, from_run)
    expected = from_run.recommend(users, histories, k=7).to_frame()
    for source in (built["retriever"], "models:/twotower-image/1",
                   save_retriever(run_dir, tmp_path / "saved")):
        loaded = load_retriever(source)
        assert isinstance(loaded.image_encoder, FrozenEncoder), source
        pd.testing.assert_frame_equal(loaded.recommend(users, histories, k=7).to_frame(),
                                      expected, obj=str(source))


def test_the_logged_model_adds_products_from_photos_without_the_run_folder(shop, tracking):
    """The model carries the SimCLR checkpoint: with the run's own checkpoint gone, a product
    added from its photo gets the same vector, and the same neighbours, as from the run."""
    run_dir, built, catalog = shop
    photo = load_catalog(catalog).images[:1]
    from_run = load_retriever(run_dir)
    from_run.add_items(["new"], images=photo)
    pretrained = run_dir / "pretrain_vision"
    pretrained.rename(run_dir / "elsewhere")
    try:
        with pytest.raises(ValueError, match="SimCLR checkpoint these embeddings were made"):
            load_retriever(run_dir)
        served = load_retriever(built["retriever"])
    finally:
        (run_dir / "elsewhere").rename(pretrained)
    served.add_items(["new"], images=photo)
    pd.testing.assert_frame_equal(served.recommend(histories=[["new"]], k=5).to_frame(),
                                  from_run.recommend(histories=[["new"]], k=5).to_frame())


def test_a_bare_saved_folder_finds_its_encoder_through_the_run_or_says_what_is_missing(
        shop, tmp_path):
    run_dir = shop[0]
    bare = load_retriever(run_dir).save(tmp_path / "bare")  # twotower's files: no encoder
    assert isinstance(load_retriever(bare).image_encoder, FrozenEncoder)
    vectors = run_dir / "train_two_tower" / "image" / "item_vectors.parquet"
    vectors.rename(tmp_path / "away.parquet")
    try:
        with pytest.raises(DataError, match=r"has no image_encoder/ \(save_retriever writes"):
            load_retriever(bare)
    finally:
        (tmp_path / "away.parquet").rename(vectors)
    with pytest.raises(ValueError, match="name='image' picks a model of a run folder"):
        load_retriever(shop[1]["retriever"], name="image")


def test_embeddings_made_elsewhere_give_a_retriever_without_an_encoder(two_tower_run, tmp_path):
    """h not from a SimCLR checkpoint (the embeddings' metadata names none): the retriever
    serves without an image encoder, from the run folder and from its saved folder."""
    for source in (two_tower_run / "run", save_retriever(two_tower_run / "run",
                                                         tmp_path / "saved")):
        retriever = load_retriever(source)
        assert retriever.image_encoder is None
        assert retriever.recommend(histories=[list(retriever.item_ids[:2])], k=3).source[0] == (
            "history")
    assert not (tmp_path / "saved" / "image_encoder" / "checkpoint.pt").exists()


def test_predict_answers_each_row_in_order_with_its_own_k(shop, tracking):
    run_dir, built, _ = shop
    model = mlflow.pyfunc.load_model(built["retriever"])
    retriever = model.unwrap_python_model().retriever
    users, histories = queries(run_dir, retriever)
    rows = pd.DataFrame({"user_id": [users[0], users[1], np.nan],
                         "history": [histories[0], np.nan, histories[3]],
                         "k": [np.nan, 2.0, np.nan]})
    got = model.predict(rows, params={"k": 4})
    expected = pd.concat([
        retriever.recommend([users[0]], [histories[0]], k=4).to_frame(),
        retriever.recommend([users[1]], k=2).to_frame(),
        retriever.recommend(histories=[histories[3]], k=4).to_frame()], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    assert list(got["source"].drop_duplicates()) == ["user", "history"]
    unseen = model.predict(rows, params={"k": 4, "exclude_seen": False})
    assert not unseen.equals(got)  # the known users' training items come back


@pytest.mark.parametrize(("rows", "message"), [
    ([{"k": 3.0}], "row 0 has neither a user_id nor a history"),
    ([{"user_id": "u"}, {"user_id": "u", "k": 0.5}], "row 1: k must be a whole number"),
    ([{"history": ["no-such-product"]}], "does not know.*'no-such-product'"),
])
def test_predict_names_the_bad_row(shop, tracking, rows, message):
    model = mlflow.pyfunc.load_model(shop[1]["retriever"])
    with pytest.raises(MlflowException, match=message):
        model.predict(pd.DataFrame(rows))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_models_serve(model_uri: str, tracking: str, log: Path) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` in a subprocess, as a user would start it; yields
    its URL once /ping answers, and stops it, uvicorn included, whatever happens."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(ROOT),
           # the CLI starts `uvicorn` by name: it must find this interpreter's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while not _answers(f"{url}/ping"):
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # its own session: the CLI and its uvicorn
            server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(server.pid):  # uvicorn outlives the CLI by a moment
        assert time.monotonic() < deadline, "the server's uvicorn did not stop"
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(group: int) -> bool:
    """Whether any process of the process group `group` is left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_mlflow_models_serve_answers_as_the_retriever(shop, tmp_path):
    run_dir, built, _ = shop
    retriever = load_retriever(run_dir)
    users, histories = queries(run_dir, retriever)
    expected = pd.concat([retriever.recommend([users[1]], k=5).to_frame(),
                          retriever.recommend(histories=[histories[3]], k=5).to_frame()],
                         ignore_index=True)
    with mlflow_models_serve(built["retriever"], tracking_uri(run_dir),
                             tmp_path / "server.log") as url:
        status, body = post(f"{url}/invocations", {
            "dataframe_records": [{"user_id": users[1]}, {"history": histories[3]}],
            "params": {"k": 5}})
        assert status == 200, body
        pd.testing.assert_frame_equal(pd.DataFrame(body["predictions"]), expected,
                                      check_dtype=False)  # JSON: int64 ranks, float64 scores
        status, body = post(f"{url}/invocations", {"dataframe_records": [{"k": 3}]})
        assert status == 400 and "row 0 has neither a user_id nor a history" in body["message"]
