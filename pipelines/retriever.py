"""A trained retriever as an MLflow model: loaded from wherever it lives, served over HTTP.

    retriever = load_retriever("runs/demo")                      # a run folder
    retriever = load_retriever("runs:/<run_id>/retriever")       # the model build_index logged
    retriever = load_retriever("models:/twotower-image/1")       # a registered version
    retriever.add_items(["p9001"], images=photos)                # photos → SimCLR h → index

and from a shell (the Serving section of the README):

    mlflow models serve -m runs:/<run_id>/retriever --env-manager local --port 5000
    curl -X POST localhost:5000/invocations -H 'Content-Type: application/json' \
        -d '{"dataframe_records": [{"user_id": "u00007"}, {"history": ["p00042"]}]}'

A `twotower.Retriever` reads the image embeddings h of its products but never computes one:
products added from their photos need the SimCLR encoder the embeddings were made with. This
module wires it (`simclr_vision.embed.image_encoder`): from a run folder, the checkpoint and the
normalization recorded in the metadata of the embeddings the model was trained with; from a
saved folder, the copy `save_retriever` put in it (`image_encoder/`), so a model served on
another machine still takes photos. The MLflow model (`RetrieverModel`, logged by
`log_retriever`) holds one such saved folder as its artifact; `build_index` logs one for every
index it builds over a trained model's item vectors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from simclr_vision.embed import FrozenEncoder, image_encoder
from twotower.files import DataError, atomic_path
from twotower.retriever import Retriever
from twotower.vectors import read_vectors

__all__ = ["RetrieverModel", "load_retriever", "log_retriever", "save_retriever"]

ARTIFACT = "retriever"
"""The MLflow model's artifact: a folder written by `save_retriever`."""
ENCODER = "image_encoder"
"""The subfolder of a saved retriever holding its SimCLR checkpoint and embeddings metadata."""
DEFAULT_K = 100
"""Products per query row when neither the row nor the request's params give `k` (fewer when
the catalog has fewer products)."""
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # runs:/, models:/, s3://; not C:/ or a path


def load_retriever(source: str | os.PathLike[str], *, name: str | None = None,
                   device: str = "cpu") -> Retriever:
    """The retriever in a run folder, a saved folder, or an MLflow model URI, with its encoder.

    source: a pipeline run folder (`name` picks the model, as in `Retriever.load`), a folder
    written by `save_retriever`, or an MLflow model URI such as `runs:/<run_id>/retriever` or
    `models:/<name>/<version>`, downloaded with `mlflow.artifacts` (to MLflow's temporary
    folder) from the current tracking URI. When the item tower reads image embeddings made by
    a SimCLR checkpoint (their metadata names it), that encoder is attached as the retriever's
    `image_encoder`, so `add_items(images=...)` works; a retriever without it is
    `twotower.Retriever.load`'s.
    """
    if isinstance(source, str) and _URI.match(source):
        if name is not None:
            raise ValueError(f"name={name!r} picks a model of a run folder; the model URI "
                             f"{source} holds one")
        return load_retriever(_downloaded(source), device=device)
    folder = Path(source)
    retriever = Retriever.load(folder, name=name, device=device)
    if retriever.model.item_tower.image_projection is not None:
        retriever.image_encoder = _encoder(folder, retriever, device)  # None: h from elsewhere
    return retriever


def save_retriever(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   name: str | None = None) -> Path:
    """Write the retriever of `source` (a run or saved folder) to `out`, atomically, with what
    its encoder needs: `Retriever.save`'s files, and `image_encoder/` (the embeddings' metadata
    and the SimCLR checkpoint it names) when the item tower reads image embeddings."""
    return _save(load_retriever(source, name=name), Path(source), Path(out))


def log_retriever(source: str | os.PathLike[str], *, name: str | None = None,
                  artifact_path: str = ARTIFACT,
                  registered_model_name: str | None = None) -> str:
    """Log the retriever of `source` (a run or saved folder) as an MLflow model; its URI.

    Logs to the active run (or a new one) of the current tracking URI: `RetrieverModel` with
    `save_retriever`'s folder as its artifact, the input and output signature and an example
    request (MLflow checks it by serving it once). `registered_model_name` also registers it as
    a new version of that name (the tracking store must have a model registry: a database or a
    tracking server does).
    """
    retriever = load_retriever(source, name=name)
    example = pd.DataFrame({"history": [list(retriever.item_ids[:2])]})
    with tempfile.TemporaryDirectory(prefix="retriever-") as tmp:
        folder = _save(retriever, Path(source), Path(tmp) / ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name=artifact_path, python_model=RetrieverModel(), artifacts={ARTIFACT: str(folder)},
            signature=_signature(_default_k(retriever)), input_example=example,
            model_config={"device": "cpu"}, registered_model_name=registered_model_name)
    return info.model_uri


class RetrieverModel(mlflow.pyfunc.PythonModel):
    """The retriever as an MLflow pyfunc model: request rows in, recommendation rows out.

    Each input row is one query: `user_id` (a known user: its id and training history; an
    unknown one: the popular products), `history` (product ids, oldest first; with a user_id
    it replaces the stored history), or both; `k` in a row overrides the request's `k` param.
    The output is `Recommendations.to_frame()` of every row in input order, k rows each:
    user_id ("" for a history-only row), rank, item_id, score, source.

    The model's pickle holds no code, only the name of this class, so it serves where this
    project is installed (`mlflow models serve --env-manager local` in its environment).
    """

    retriever: Retriever

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the saved retriever artifact on the device of the model config (cpu)."""
        device = (context.model_config or {}).get("device", "cpu")
        self.retriever = load_retriever(context.artifacts[ARTIFACT], device=device)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Recommendations of every row of `model_input`; a bad row is a 400 naming it."""
        params = params or {}
        users, histories, ks = _queries(model_input, params.get("k", _default_k(self.retriever)))
        frames = []
        for k in dict.fromkeys(ks):  # one recommend call per distinct k, in first-seen order
            rows = np.flatnonzero(ks == k)
            try:
                recs = self.retriever.recommend(
                    [users[i] for i in rows], [histories[i] for i in rows], k=int(k),
                    exclude_seen=bool(params.get("exclude_seen", True)))
            except (ValueError, TypeError) as err:  # DataError too: a bad id in a request
                raise MlflowException.invalid_parameter_value(str(err)) from err
            frames.append(recs.to_frame().assign(_row=np.repeat(rows, int(k))))
        out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        return out.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)


def _queries(frame: pd.DataFrame, k: int) -> tuple[list[str], list[Any], np.ndarray]:
    """Request rows → (user ids, "" for none; histories, None for none; k per row)."""
    if len(frame) == 0:
        raise MlflowException.invalid_parameter_value("the request has no rows")
    missing = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    users = [None if _absent(u) else u for u in frame.get("user_id", missing)]
    histories = [None if _absent(h) else h for h in frame.get("history", missing)]
    ks = frame["k"].fillna(k) if "k" in frame else pd.Series(k, index=frame.index)
    for row, (user, history, row_k) in enumerate(zip(users, histories, ks, strict=True)):
        if user is None and history is None:
            raise MlflowException.invalid_parameter_value(
                f"row {row} has neither a user_id nor a history: give one (an unknown user_id "
                "gets the popular products)")
        if user is not None and not isinstance(user, str):
            raise MlflowException.invalid_parameter_value(
                f"row {row}: user_id must be a string, got {user!r}")
        if not (float(row_k).is_integer() and row_k >= 1):
            raise MlflowException.invalid_parameter_value(
                f"row {row}: k must be a whole number of at least 1, got {row_k!r}")
    return [u or "" for u in users], histories, ks.to_numpy(np.int64)


def _absent(value: Any) -> bool:
    """A cell a request left out: None, or the NaN pandas fills a missing key with."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _default_k(retriever: Retriever) -> int:
    """The `k` of a request that gives none: DEFAULT_K, or every product of a smaller catalog."""
    return min(DEFAULT_K, len(retriever))


def _signature(k: int) -> ModelSignature:
    """Rows in: `user_id` and/or `history`, optionally `k`; params `k` (default `k`) and
    `exclude_seen`; rows out: `Recommendations.to_frame()`."""
    return ModelSignature(
        inputs=Schema([
            ColSpec(DataType.string, "user_id", required=False),
            # A list of product ids, oldest first. AnyType, not Array(string): a request mixing
            # rows with and without a history gives the others NaN, which Array refuses.
            ColSpec(AnyType(), "history", required=False),
            ColSpec(DataType.double, "k", required=False),  # double: a row without one is NaN
        ]),
        outputs=Schema([
            ColSpec(DataType.string, "user_id"),
            ColSpec(DataType.integer, "rank"),
            ColSpec(DataType.string, "item_id"),
            ColSpec(DataType.float, "score"),
            ColSpec(DataType.string, "source"),
        ]),
        params=ParamSchema([
            ParamSpec("k", DataType.long, k),
            ParamSpec("exclude_seen", DataType.boolean, True),
        ]),
    )


def _save(retriever: Retriever, source: Path, out: Path) -> Path:
    """`save_retriever` of a retriever `load_retriever` loaded from `source`."""
    with atomic_path(out) as tmp:
        retriever.save(tmp)
        if retriever.model.item_tower.image_projection is not None:
            checkpoint, metadata = _encoder_files(source, retriever)
            (tmp / ENCODER).mkdir()
            (tmp / ENCODER / "embeddings.json").write_text(json.dumps(metadata, indent=2) + "\n")
            if checkpoint is not None:
                shutil.copyfile(checkpoint, tmp / ENCODER / "checkpoint.pt")
    return out


def _downloaded(uri: str) -> Path:
    """The saved retriever folder inside the MLflow model at `uri`, downloaded."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts") or {}
    if ARTIFACT not in artifacts:
        raise DataError(f"not a retriever model: its MLmodel names no {ARTIFACT!r} artifact",
                        path=uri)
    return local / artifacts[ARTIFACT]["path"]


def _encoder(folder: Path, retriever: Retriever, device: str) -> FrozenEncoder | None:
    """The SimCLR encoder that made the h the retriever's item tower reads; None when the
    embeddings name no checkpoint (h computed elsewhere: new products then come with their h)."""
    checkpoint, metadata = _encoder_files(folder, retriever)
    if checkpoint is None:
        return None
    return image_encoder(checkpoint, normalize=bool(metadata.get("normalized")), device=device)


def _encoder_files(folder: Path, retriever: Retriever) -> tuple[Path | None, dict[str, Any]]:
    """(SimCLR checkpoint or None, embeddings metadata) of a saved folder or a run's model.

    A saved folder carries both in `image_encoder/`. In a run folder they are found from the
    index: its source is the model's item vectors, whose metadata names the embeddings the model
    was trained with, whose metadata names the checkpoint (if SimCLR made them) and the
    normalization.
    """
    saved = folder / ENCODER
    if saved.is_dir():
        checkpoint = saved / "checkpoint.pt"
        metadata = json.loads((saved / "embeddings.json").read_text())
        return (checkpoint if checkpoint.is_file() else None), metadata
    vectors = retriever.index.source
    if not vectors or not Path(vectors).is_file():
        raise DataError(f"the item tower reads image embeddings, but this folder has no "
                        f"{ENCODER}/ (save_retriever writes one) and the item vectors its index "
                        f"was built from are gone ({vectors!r}): nothing says which encoder "
                        "made the embeddings", path=folder)
    embeddings = read_vectors(vectors).metadata.get("embeddings")
    if not embeddings:
        raise DataError("the item tower reads image embeddings, but the model's item vectors "
                        "name none (metadata 'embeddings')", path=vectors)
    metadata = read_vectors(embeddings).metadata
    if "checkpoint" not in metadata:
        return None, metadata
    checkpoint = Path(metadata["checkpoint"])
    if not checkpoint.is_file():
        raise DataError(f"the SimCLR checkpoint these embeddings were made with is missing "
                        f"({metadata['checkpoint']}): without it photos cannot be encoded",
                        path=embeddings)
    return checkpoint, metadata
