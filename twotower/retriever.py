"""Retriever: a trained two-tower model and its item index, serving the top-k products of users.

    retriever = Retriever.load("runs/demo")                 # a run folder, or a saved retriever
    recs = retriever.recommend(user_ids=["u1", "u2"], k=10)
    recs = retriever.recommend(histories=[["i3", "i9"]], k=10)
    retriever.add_items(["new1"], embeddings=h, attributes={"category": ["shirt"]})
    retriever.remove_items(["i3"])
    retriever.save("runs/demo/retriever")

Each query row is served one of three ways (`Recommendations.source`):

    user        the user id is one the model was trained on (it has training rows): the user
                tower reads its id and its training history, or the history given with it;
                its training items and that history are excluded
    history     an unknown user (or none) with a history: the user tower reads the history
                with the unknown user row, as the evaluation serves a held-out user; the
                history is excluded
    popularity  neither: the live products by training count, most first

A test-split user asked for with its id and its split history gets exactly the ranking
`twotower.evaluate` gives it from the exported user vectors (`user_vectors_<split>.parquet`):
the same user tower input, the same exclusions, the same index.

New products join the live index without retraining: their image embeddings h (given, or
computed from their photos by an `ImageEncoder`) and attributes become cold rows of the item
tower (`ItemTower.append`), whose vector is the content path's, exactly what
`fit(new_products=True)` gives a product without interactions, and the index is rebuilt over
the live products (`ItemIndex` has no incremental add or remove: a rebuild costs one item
tower pass and, for ivf kinds, one k-means). Removed products leave the index but stay in the
tower, so a history may still hold them.

`save` writes a self-contained folder (weights and tower config, whose buffers hold every
item's features; item ids and training counts; the attribute vocabularies; every user's
training history; the index), which `load` reads back, refusing another format version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from twotower.export import encode_users
from twotower.files import DataError, atomic_path
from twotower.index import ItemIndex, default_params
from twotower.inputs import attribute_codes, item_features, load_training, read_catalog
from twotower.towers import ItemFeatures, TowerConfig, TwoTower
from twotower.vectors import read_vectors

__all__ = ["FORMAT_VERSION", "ImageEncoder", "Recommendations", "Retriever"]

FORMAT_VERSION = 1
"""The `format` of a saved retriever folder's retriever.json; `load` refuses any other."""
CHUNK = 4096
"""Query rows encoded and searched at once: `recommend` holds about CHUNK · k results more."""
_FILES = {"meta": "retriever.json", "model": "model.pt", "items": "items.parquet",
          "users": "users.parquet", "index": "index"}

ImageEncoder = Callable[[torch.Tensor], np.ndarray]
"""uint8 images (N, C, H, W) → their frozen image embeddings h (N, D) float32, as the item
tower was trained on (same normalization as the embeddings Parquet)."""


@dataclass(frozen=True)
class Recommendations:
    """The top-k of n query rows, best first."""

    user_ids: np.ndarray
    """(n,) str: the query's user id, or "" for a history-only query."""
    item_ids: np.ndarray
    """(n, k) str."""
    scores: np.ndarray
    """(n, k) float32: cosine of user and item vectors; for `popularity` rows the items'
    training counts."""
    source: np.ndarray
    """(n,) str: "user", "history" or "popularity" (see the module docstring)."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def to_frame(self) -> pd.DataFrame:
        """Long format, k rows per query: user_id, rank (1..k), item_id, score, source."""
        n, k = self.item_ids.shape
        return pd.DataFrame({
            "user_id": np.repeat(self.user_ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "item_id": self.item_ids.reshape(-1),
            "score": self.scores.reshape(-1),
            "source": np.repeat(self.source, k),
        })


@dataclass(frozen=True)
class _Users:
    """The model's user vocabulary and each user's training history (CSR, item rows)."""

    ids: np.ndarray
    """(U,) str user_id, in user_index order."""
    offsets: np.ndarray
    """(U + 1,) int64: user u's history is items[offsets[u]:offsets[u + 1]], oldest first."""
    items: np.ndarray
    """(N,) int64 item rows of every user's training history."""

    def history(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    @property
    def warm(self) -> np.ndarray:
        """(U,) bool: users with training rows."""
        return np.diff(self.offsets) > 0


class Retriever:
    """A two-tower model, its live item index and what serving needs beside them.

    Build with `Retriever.load`; see the module docstring for what each method does.
    """

    def __init__(self, model: TwoTower, index: ItemIndex, *, users: _Users, counts: np.ndarray,
                 max_history: int, vocabularies: Mapping[str, np.ndarray],
                 image_size: int | None, image_encoder: ImageEncoder | None,
                 device: str) -> None:
        if model.item_ids is None:
            raise ValueError("the model must know its item ids (ItemFeatures.ids)")
        self.model = model.eval()
        self.max_history = max_history
        self.image_encoder = image_encoder
        self._users = users
        self._user_rows = pd.Index(users.ids)
        self._warm_users = users.warm  # (U,) once: every chunk of queries reads it
        self._counts = counts  # (I,) training rows per item row of the model, 0 for new ones
        self._vocabularies = dict(vocabularies)
        self._image_size = image_size  # side of the images the image encoder takes, if known
        self._device = device
        self._item_rows = pd.Index(model.item_ids)
        self._set_index(index)

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, name: str | None = None,
             image_encoder: ImageEncoder | None = None, device: str = "cpu") -> Retriever:
        """A folder written by `save`, or a pipeline run folder.

        A run folder holds `train_two_tower/<name>/` (model.pt, config.json), the index
        `build_index/<name>/` and the prepared folder and embeddings the model was trained
        with; name: which model (default "image" when the run has it, else its only one).
        A saved folder of another format version is refused with a `DataError` naming it.
        """
        path = Path(path)
        if (path / _FILES["meta"]).is_file():
            return cls._load_saved(path, image_encoder, device)
        if (path / "train_two_tower").is_dir():
            return cls._load_run(path, name, image_encoder, device)
        raise DataError(f"neither a saved retriever (no {_FILES['meta']}) nor a run folder "
                        "(no train_two_tower/)", path=path)

    @classmethod
    def _load_run(cls, run: Path, name: str | None, image_encoder: ImageEncoder | None,
                  device: str) -> Retriever:
        """Rebuild the model as `fit` built it from the inputs its config.json records."""
        folder = run / "train_two_tower" / _model_name(run / "train_two_tower", name)
        config = _read_json(folder / "config.json")
        saved = _read_weights(folder / "model.pt")
        prepared = Path(config["prepared"]) if config.get("prepared") else run / "prepare"
        embeddings = read_vectors(config["embeddings"]) if config.get("embeddings") else None
        attributes = tuple(config.get("attributes") or ())
        features = item_features(
            prepared, embeddings=embeddings, attributes=attributes,
            catalog=read_catalog(config["catalog"], attributes) if attributes else None,
            new_products=bool(config.get("new_products")))
        rows = load_training(prepared)
        model = TwoTower(rows.users_warm, features, TowerConfig(**saved["tower"]))
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as err:
            raise DataError(f"the weights do not fit the model its config.json inputs make "
                            f"({str(err).splitlines()[0]}); were they changed since training?",
                            path=folder / "model.pt") from err
        users = pd.read_parquet(prepared / "users.parquet", columns=["user_id", "user_index"])
        users = users.sort_values("user_index")["user_id"].astype(str).to_numpy()
        counts = np.zeros(len(features), np.int64)  # new products after the prepared items
        counts[:rows.num_items] = rows.item_counts
        image_size = embeddings.metadata.get("image_size") if embeddings is not None else None
        return cls(model.to(device), ItemIndex.load(run / "build_index" / folder.name, device),
                   users=_Users(users, rows.offsets, rows.sequence_items), counts=counts,
                   max_history=int(config["train"]["max_history"]),
                   vocabularies=features.vocabularies, image_size=image_size,
                   image_encoder=image_encoder, device=device)

    @classmethod
    def _load_saved(cls, folder: Path, image_encoder: ImageEncoder | None,
                    device: str) -> Retriever:
        meta = _read_json(folder / _FILES["meta"])
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"a retriever folder of format {meta.get('format')!r}; this twotower "
                            f"reads format {FORMAT_VERSION}: save it again with the twotower "
                            "that wrote it, or rebuild it from its run folder",
                            path=folder / _FILES["meta"])
        items = pq.read_table(folder / _FILES["items"])
        item_ids = np.asarray(items.column("item_id").to_numpy(zero_copy_only=False), str)
        vocabularies = {name: np.asarray(values, str) for name, values in meta["attributes"]}
        model = TwoTower.from_state_dict(_read_weights(folder / _FILES["model"])["model"],
                                         TowerConfig(**meta["tower"]), item_ids=item_ids,
                                         attributes=list(vocabularies))
        users = pq.read_table(folder / _FILES["users"])
        history = users.column("history").combine_chunks()
        offsets = history.offsets.to_numpy().astype(np.int64)
        return cls(model.to(device), ItemIndex.load(folder / _FILES["index"], device),
                   users=_Users(
                       ids=np.asarray(users.column("user_id").to_numpy(zero_copy_only=False),
                                      str),
                       offsets=offsets - offsets[0],
                       items=history.flatten().to_numpy().astype(np.int64)),
                   counts=items.column("count").to_numpy().astype(np.int64),
                   max_history=meta["max_history"], vocabularies=vocabularies,
                   image_size=meta["image_size"], image_encoder=image_encoder, device=device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write everything `load` needs to `path`, a folder, atomically; return it."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            state = {key: value.cpu() for key, value in self.model.state_dict().items()}
            torch.save({"model": state}, tmp / _FILES["model"])
            pq.write_table(pa.table({"item_id": pa.array(self.model.item_ids, pa.string()),
                                     "count": self._counts}), tmp / _FILES["items"])
            history = pa.LargeListArray.from_arrays(self._users.offsets, self._users.items)
            pq.write_table(pa.table({"user_id": pa.array(self._users.ids, pa.string()),
                                     "history": history}), tmp / _FILES["users"])
            self.index.save(tmp / _FILES["index"])
            meta = {"format": FORMAT_VERSION, "tower": dataclasses.asdict(self.model.config),
                    "max_history": self.max_history, "image_size": self._image_size,
                    "attributes": [[name, values.tolist()]
                                   for name, values in self._vocabularies.items()]}
            (tmp / _FILES["meta"]).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    # ---------------------------------------------------------------- serving
    @property
    def item_ids(self) -> np.ndarray:
        """(N,) str: the live products, the ones `recommend` can return."""
        return self.index.ids

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        """Size d of the user and item vectors."""
        return self.model.config.dim

    def recommend(self, user_ids: Sequence[str] | None = None,
                  histories: Sequence[Sequence[str] | None] | None = None, *, k: int = 100,
                  exclude_seen: bool = True) -> Recommendations:
        """The top k live products of each query row (see the module docstring).

        Give user_ids, histories (product ids, oldest first), or both of one length: a given
        history replaces a known user's stored one; a None entry gives that row none.
        exclude_seen: never return a known user's training items or the given history.
        Rows are served CHUNK at a time, so any number of them fits in memory.
        """
        if user_ids is None and histories is None:
            raise ValueError("give user_ids, histories, or both")
        for name, given in (("user_ids", user_ids), ("histories", histories)):
            if isinstance(given, str | bytes):
                raise TypeError(f"{name} must be a list, one entry per query, not the string "
                                f"{given!r}")
        histories = None if histories is None else list(histories)
        n = len(user_ids) if user_ids is not None else len(histories)
        if histories is not None and len(histories) != n:
            raise ValueError(f"{n} user_ids but {len(histories)} histories: give one each")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(self):
            raise ValueError(f"k must be an integer in [1, {len(self)}] (the live products), "
                             f"got {k!r}")
        users = (np.asarray(user_ids, dtype=str) if user_ids is not None
                 else np.full(n, "", dtype="U1"))
        parts = [self._recommend(users[start:start + CHUNK], user_ids is not None,
                                 None if histories is None else histories[start:start + CHUNK],
                                 start, k, exclude_seen)
                 for start in range(0, n, CHUNK)]
        if not parts:
            empty = np.zeros((0, k))
            return Recommendations(users, empty.astype(str), empty.astype(np.float32),
                                   np.zeros(0, str))
        return Recommendations(users, *(np.concatenate(p) for p in zip(*parts, strict=True)))

    def _recommend(self, users: np.ndarray, by_id: bool, histories: list | None, offset: int,
                   k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item ids, scores, source) of one chunk of query rows; `offset`: its first row."""
        n = len(users)
        rows = self._user_rows.get_indexer(users) if by_id else np.full(n, -1)
        known = rows >= 0
        known[known] = self._warm_users[rows[known]]
        given = ([None] * n if histories is None
                 else [self._history_rows(h, offset + i) for i, h in enumerate(histories)])
        source = np.where(known, "user", np.where([h is not None for h in given], "history",
                                                  "popularity"))
        ids = np.empty((n, k), dtype=self.index.ids.dtype)
        scores = np.empty((n, k), np.float32)
        popular = source == "popularity"
        ids[popular], scores[popular] = self._popular_ids[:k], self._popular_counts[:k]
        served = np.flatnonzero(~popular)
        if served.size:
            empty = np.zeros(0, np.int64)
            stored = [self._users.history(rows[i]) if known[i] else empty for i in served]
            read = [given[i] if given[i] is not None else s
                    for i, s in zip(served, stored, strict=True)]
            vectors = encode_users(self.model, rows[served], read, self.max_history)
            exclude = None
            if exclude_seen:
                exclude = [self.model.item_ids[np.union1d(s, given[i] if given[i] is not None
                                                          else empty)]
                           for i, s in zip(served, stored, strict=True)]
            scores[served], ids[served] = self.index.search(vectors, k, exclude=exclude)
        return ids, scores, source

    def _history_rows(self, history: Sequence[str] | None, row: int) -> np.ndarray | None:
        """A given history's product ids → the model's item rows; None stays None."""
        if history is None:
            return None
        if isinstance(history, str | bytes):
            raise TypeError(f"history {row} is the string {history!r}; a history is a list of "
                            f"product ids: write [{history!r}]")
        ids = np.asarray(list(history)).astype(str)
        if not ids.size:
            raise ValueError(f"history {row} is empty; give None for a row without a history")
        items = self._item_rows.get_indexer(ids)
        if (items < 0).any():
            raise DataError(f"history {row} holds a product id the model does not know",
                            value=str(ids[items < 0][0]))
        return items

    # ---------------------------------------------------------------- the live catalog
    def add_items(self, item_ids: Sequence[str], *, images: torch.Tensor | np.ndarray | None = None,
                  embeddings: np.ndarray | None = None,
                  attributes: Mapping[str, Sequence[str]] | None = None) -> None:
        """Put new products into the live index, from their photos or their image embeddings.

        images: uint8 (N, C, H, W), encoded by the `image_encoder` given to `load`;
        embeddings: their h (N, D) directly; one of the two when the item tower reads h, none
        when it does not. attributes: attribute name → N values, for each attribute the tower
        reads (a value it never saw gets the attribute's unknown row, as a product missing
        from the catalog did in training). All or nothing: on any error the retriever is as
        it was.
        """
        ids = self._new_ids(item_ids)
        tower = self.model.item_tower
        if not tower.has_content:
            raise ValueError("this model's item tower is id-only: a new product has no trained "
                             "id, so it would get the unknown id's vector, the same for all")
        h = None
        if tower.image_projection is not None:
            if (images is None) == (embeddings is None):
                raise ValueError("the item tower reads image embeddings: give the new products' "
                                 "images or their embeddings (one of the two)")
            h = (self._encode(images, len(ids)) if images is not None
                 else np.asarray(embeddings, np.float32))
            width = tower.images.shape[1]
            if h.shape != (len(ids), width):
                raise ValueError(f"embeddings must be ({len(ids)}, {width}), one h per product "
                                 f"of the width the tower was trained on; got {h.shape}")
            if not np.isfinite(h).all():
                raise ValueError(f"the embedding of {str(ids[~np.isfinite(h).all(1)][0])!r} is not "
                                 "finite")
        elif images is not None or embeddings is not None:
            raise ValueError("this model's item tower reads no image embeddings: give no images "
                             "or embeddings")
        features = ItemFeatures(warm=np.zeros(len(ids), bool), images=h,
                                attributes=self._attribute_codes(attributes, len(ids)), ids=ids)
        before = len(self.model.item_ids)
        self.model.append_items(features)
        try:
            live = np.concatenate([self._item_rows.get_indexer(self.index.ids),
                                   np.arange(before, before + len(ids))])
            self._item_rows = pd.Index(self.model.item_ids)
            self._counts = np.concatenate([self._counts[:before], np.zeros(len(ids), np.int64)])
            self._set_index(self._rebuilt(live))
        except BaseException:
            self.model.truncate_items(before)
            self._item_rows = pd.Index(self.model.item_ids)
            self._counts = self._counts[:before]
            raise

    def remove_items(self, item_ids: Sequence[str]) -> None:
        """Take products out of the live index (they stay known: a history may hold them)."""
        if isinstance(item_ids, str | bytes):
            raise TypeError(f"item_ids must be a list, not the string {item_ids!r}")
        ids = np.asarray(list(item_ids)).astype(str)
        absent = ids[~np.isin(ids, self.index.ids)]
        if absent.size:
            raise ValueError(f"{str(absent[0])!r} is not in the live index")
        keep = self.index.ids[~np.isin(self.index.ids, ids)]
        if not keep.size:
            raise ValueError("removing every product would leave an empty index")
        self._set_index(self._rebuilt(self._item_rows.get_indexer(keep)))

    def _new_ids(self, item_ids: Sequence[str]) -> np.ndarray:
        """New product ids as strings: some, unique, none the model knows already."""
        if isinstance(item_ids, str | bytes):
            raise TypeError(f"item_ids must be a list, not the string {item_ids!r}")
        ids = np.asarray(list(item_ids)).astype(str)
        if not ids.size:
            raise ValueError("no item_ids to add")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"item_ids repeats {str(unique[counts > 1][0])!r}")
        known = ids[self._item_rows.get_indexer(ids) >= 0]
        if known.size:
            where = "in the live index" if known[0] in self._live else "known to the model " \
                "(removed from the index; a removed product cannot be added again)"
            raise ValueError(f"product {str(known[0])!r} is already {where}")
        return ids

    def _encode(self, images: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
        """Photos → h through the image encoder, after checking they are what it takes."""
        if self.image_encoder is None:
            raise ValueError("adding products from images needs an image_encoder: pass one to "
                             "Retriever.load, or give their embeddings")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor or array (N, C, H, W), got "
                             f"{getattr(images, 'dtype', type(images).__name__)}")
        if images.ndim != 4 or images.shape[0] != n or 0 in images.shape:
            raise ValueError(f"images must be ({n}, C, H, W), one per product, got "
                             f"{tuple(images.shape)}")
        size = self._image_size
        if size is not None and tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"images are {images.shape[2]}x{images.shape[3]}; the image "
                             f"encoder takes {size}x{size}")
        try:
            return np.asarray(self.image_encoder(images), np.float32)
        except RuntimeError as err:  # e.g. a channel count the encoder's first layer refuses
            raise ValueError(f"the image encoder refused images of shape "
                             f"{tuple(images.shape)}: {str(err).splitlines()[0]}") from err

    def _attribute_codes(self, attributes: Mapping[str, Sequence[str]] | None,
                         n: int) -> dict[str, np.ndarray]:
        """The tower's attribute codes of n new products."""
        names = self.model.item_tower.attribute_names
        given = dict(attributes or {})
        if set(given) != set(names):
            raise ValueError(f"the item tower reads attributes {names}: give attributes with "
                             f"exactly those names, got {sorted(given)}")
        codes = {}
        for name in names:
            values = given[name]
            if isinstance(values, str | bytes) or len(values) != n:
                raise ValueError(f"attribute {name!r} needs a list of {n} values, one per "
                                 f"product, got {values!r}")
            codes[name] = attribute_codes(list(values), self._vocabularies[name])
        return codes

    def _rebuilt(self, rows: np.ndarray) -> ItemIndex:
        """An index like the current one over the model's item rows `rows`."""
        vectors = self.model.item_vectors().float().cpu().numpy()[rows]
        index = self.index
        params = index.params  # defaults chosen for the old size are chosen again for the new
        if params == default_params(index.kind, len(index), index.dim):
            params = {}
        return ItemIndex.build(vectors, self.model.item_ids[rows], index.kind,
                               device=self._device, normalize=index.normalized,
                               source=index.source, **params)

    def _set_index(self, index: ItemIndex) -> None:
        """Serve from `index`; its ids must be items of the model, its vectors of its size."""
        rows = self._item_rows.get_indexer(index.ids)
        if (rows < 0).any():
            raise DataError(f"the index holds {int((rows < 0).sum())} product(s) the model does "
                            "not know: was it built from this model's item vectors?",
                            value=str(index.ids[rows < 0][0]))
        if index.dim != self.dim:
            raise DataError(f"the index has dimension {index.dim}, the model {self.dim}")
        self.index = index
        self._live = set(index.ids.tolist())
        order = np.argsort(-self._counts[rows], kind="stable")  # ties in index order
        self._popular_ids = index.ids[order]
        self._popular_counts = self._counts[rows][order].astype(np.float32)


def _model_name(stage: Path, name: str | None) -> str:
    """The model of a run folder's train_two_tower/ to serve: `name`, or the default."""
    names = sorted(p.name for p in stage.iterdir() if (p / "model.pt").is_file())
    if name is None:
        if "image" in names or len(names) == 1:
            return "image" if "image" in names else names[0]
        raise DataError(f"the run has models {names}: choose one with name=", path=stage)
    if name not in names:
        raise DataError(f"no trained model {name!r} here (models: {names})", path=stage)
    return name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("missing", path=path) from None
    except ValueError as err:
        raise DataError(f"unreadable JSON ({err})", path=path) from err


def _read_weights(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("missing", path=path)
    return torch.load(path, map_location="cpu", weights_only=True)
