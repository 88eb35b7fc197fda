"""The user and item towers and the two-tower model that joins them.

Item tower (one row per prepared item, `item_index` 0..I-1):

    content(i)  = normalize(head_c(mlp_c([ W_img · h_i | attr_emb(a_i,1) | … ])))     (d,)
    id(i)       = bounded(head_id(mlp_id(id_emb(i))))                 |id(i)| < 1       (d,)
    item(i)     = normalize(content(i) + id(i))   for a warm item
                = content(i)                      for a cold one

- the content path reads what every product has from the day it is listed: the frozen
  SimCLR image embedding h_i (a buffer, never trained, through a learned projection; zeros
  for items without one) and categorical attributes (category, brand, …);
- the id path adds a per-item residual after the content projection, so a warm product keeps
  what its interactions say (its popularity, above all) and a cold one, which has no id,
  gets its content vector. `bounded` keeps the residual shorter than the unit content
  vector, so a warm item's vector stays within 45° of its content vector: the content-only
  vectors are then on the same scale as the full ones, and the ranking of a cold product
  against warm ones does not depend on where training happened to leave each path. This is
  Heater's constraint that the content and collaborative representations of an item stay
  similar (Zhu et al. 2020, "Recommendation for New Users and New Items via Randomized
  Training and Mixture-of-Experts Transformation"), as a hard bound;
- in training each id is dropped with probability `id_dropout` (Volkovs et al. 2017,
  "DropoutNet: Addressing Cold Start in Recommender Systems"), and
  `train.TrainConfig.content_loss` also trains content(i) on every row on its own, so the
  content path is never starved by the id path; in that loss each item's log popularity is
  a fixed prior on its logit (`content_prior`; Zhang et al. 2021, "Causal Intervention for
  Leveraging Popularity Bias in Recommendation"), so content(i) learns whose taste a product
  suits rather than a popularity that nothing about a new product reveals;
- an id-only model has no content path: its item vector is normalize(head_id(mlp_id(id_emb)))
  and every cold item shares the unknown id row.

User tower:

    features(i) = [ id_emb(i or unknown) | W_img · h_i | attr_emb(a_i,1) | … ]       (F,)
    pool(u)  = [ mean_l features(hist_l) | Σ_l w_l features(hist_l) / Σ_l w_l ]      (2F,)
    user(u)  = normalize(head(mlp([ id_emb(u or unknown) | pool(u) | attr_emb(b_u) ])))

with w_l = decay^(age of item l, 0 for the newest): the recency-weighted mean; users without
training rows share the unknown id row, and so do history items without one. The history
reads the item tower's `features`, so the two towers share the item embeddings, as in Covington
et al. 2016 ("Deep Neural Networks for YouTube Recommendations") and Yi et al. 2019. The user-id
embedding is optional (off for `holdout_users`, whose test users were never trained on).

`TwoTower.forward(batch) -> (user_vectors, item_vectors, content_vectors)`, each (B, d) and
unit-norm (content_vectors None unless the item tower has both paths), is what `info_nce`
consumes: row i of the item vectors is user i's positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twotower.heads import HeadKind, ProjectionHead

__all__ = ["PAD", "ItemFeatures", "ItemTower", "TowerConfig", "TwoTower", "UserTower",
           "bounded", "pad_histories"]

PAD = -1
"""Padding value of `history` rows: no item."""


@dataclass
class TowerConfig:
    """Sizes and switches of both towers."""

    dim: int = 128
    """Size d of the user and item vectors the loss and the index see."""
    hidden_dim: int = 256
    """Width of each tower's MLP."""
    id_dim: int = 256
    """Size of the item-id and user-id embeddings (the best trial of every search in
    benchmarks/bench_two_tower.py had 256)."""
    image_dim: int = 128
    """Size of the learned projection of the frozen image embedding h (128 in the best trial
    of both shop searches of benchmarks/bench_two_tower.py)."""
    attribute_dim: int = 8
    """Size of each categorical attribute's embedding."""
    item_id: bool = True
    """Give the item tower an item-id embedding: a residual on warm items' vectors, and the
    history's id features (cold items share the unknown row there)."""
    user_id: bool | None = None
    """Give the user tower a user-id embedding; None: `fit` turns it off on a holdout_users
    split, whose evaluation users were never trained on (it reads the prepared folder's
    manifest), and on otherwise."""
    id_dropout: float = 0.3
    """Training probability of replacing an item or user id by its unknown row."""
    recency_decay: float = 0.8
    """Weight ratio between consecutive history items in the recency-weighted mean."""
    head: HeadKind = "mlp"
    """Projection head on each tower: mlp, linear or none."""

    def __post_init__(self) -> None:
        for name in ("dim", "hidden_dim", "id_dim", "image_dim", "attribute_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1), got {self.id_dropout}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must lie in (0, 1], got {self.recency_decay}")


@dataclass
class ItemFeatures:
    """What the item tower knows of each of the I prepared items (row i = item_index i)."""

    warm: np.ndarray
    """(I,) bool: the item has training interactions, so it may use its own id row."""
    images: np.ndarray | None = None
    """(I, h) float32 frozen image embeddings, zeros where `has_image` is False; or None."""
    has_image: np.ndarray | None = None
    """(I,) bool: which rows of `images` are real."""
    attributes: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Attribute name → (I,) int codes in 0..cardinality-1 (0 may stand for unknown)."""
    ids: np.ndarray | None = None
    """(I,) str item_id of each row, when known: what exported item vectors are keyed by."""
    vocabularies: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Attribute name → its known values, sorted: code c ≥ 1 stands for vocabularies[name][c - 1]
    (`twotower.inputs.attribute_codes` codes a new product's values with it); may be empty."""

    def __post_init__(self) -> None:
        n = len(self.warm)
        if self.images is not None:
            if self.images.ndim != 2 or len(self.images) != n:
                raise ValueError(f"images must be ({n}, h), got {self.images.shape}")
            if self.has_image is None:
                self.has_image = np.ones(n, bool)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"ids must hold one id per item ({n}), got {len(self.ids)}")
        for name, codes in self.attributes.items():
            if codes.shape != (n,) or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"attribute {name!r} must be ({n},) integer codes, got "
                                 f"{codes.dtype} {codes.shape}")
            if n and codes.min() < 0:
                raise ValueError(f"attribute {name!r} has a negative code {codes.min()}")

    def __len__(self) -> int:
        return len(self.warm)


def _id_rows(index: Tensor, warm: Tensor, dropout: float, training: bool,
             generator: torch.Generator | None) -> Tensor:
    """Embedding rows of ids: index + 1 for a warm id, 0 (unknown) for a cold or −1 one, and
    in training for a random `dropout` share of them, drawn from `generator` (None: torch's
    global one)."""
    known = (index >= 0) & warm[index.clamp_min(0)]
    rows = torch.where(known, index + 1, 0)
    if training and dropout > 0:
        drop = torch.rand(index.shape, device=index.device, generator=generator) < dropout
        rows = rows.masked_fill(drop, 0)
    return rows


def bounded(x: Tensor) -> Tensor:
    """Rows of x (..., d) scaled to length tanh(|x|) < 1, direction kept: a residual that can
    never outweigh the unit vector it is added to."""
    norm = x.norm(dim=-1, keepdim=True)
    return x * (torch.tanh(norm) / norm.clamp_min(1e-12))


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU())


class ItemTower(nn.Module):
    """Item index (B,) → unit item vectors (B, d); `content` gives them without the id, and
    `features` is what user histories pool."""

    def __init__(self, items: ItemFeatures, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        n = len(items)
        self.register_buffer("warm", torch.from_numpy(np.asarray(items.warm, bool)))
        self.ids = self.id_mlp = self.id_head = None
        if config.item_id:
            self.ids = nn.Embedding(n + 1, config.id_dim)  # row 0: the unknown item
            self.id_mlp = _mlp(config.id_dim, config.hidden_dim)
            self.id_head = ProjectionHead(config.hidden_dim, config.dim, kind=config.head)
        content_width = 0
        self.image_projection = None
        if items.images is not None:
            self.register_buffer("images", torch.from_numpy(
                np.ascontiguousarray(items.images, np.float32)))
            self.register_buffer("has_image", torch.from_numpy(np.asarray(items.has_image)))
            self.image_projection = nn.Linear(items.images.shape[1], config.image_dim)
            content_width += config.image_dim
        self.attribute_names = list(items.attributes)
        for name, codes in items.attributes.items():
            self.register_buffer(f"attr_{name}", torch.from_numpy(codes.astype(np.int64)))
        self.attributes = nn.ModuleList(
            nn.Embedding(int(codes.max(initial=0)) + 1, config.attribute_dim)
            for codes in items.attributes.values())
        content_width += config.attribute_dim * len(self.attributes)
        if content_width == 0 and self.ids is None:
            raise ValueError("the item tower has no input: enable item_id or give image "
                             "embeddings or attributes")
        self.has_content = content_width > 0
        self.feature_dim = content_width + (config.id_dim if self.ids is not None else 0)
        self.content_mlp = self.content_head = None
        if self.has_content:
            self.content_mlp = _mlp(content_width, config.hidden_dim)
            self.content_head = ProjectionHead(config.hidden_dim, config.dim, kind=config.head)

    def _content_inputs(self, items: Tensor) -> list[Tensor]:
        """(...,) item indices → the projected image h and attribute embeddings."""
        parts = []
        if self.image_projection is not None:
            projected = self.image_projection(self.images[items])
            parts.append(projected * self.has_image[items].unsqueeze(-1))
        for name, table in zip(self.attribute_names, self.attributes, strict=True):
            parts.append(table(getattr(self, f"attr_{name}")[items]))
        return parts

    def features(self, items: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(...,) item indices → (..., F) input features (ids, projected image h, attributes);
        `generator` draws the id dropout in training."""
        parts = self._content_inputs(items)
        if self.ids is not None:
            parts.insert(0, self.ids(_id_rows(items, self.warm, self.config.id_dropout,
                                              self.training, generator)))
        return torch.cat(parts, dim=-1)

    def _content(self, items: Tensor) -> Tensor:
        """(B,) → (B, d) content vectors, before normalisation."""
        return self.content_head(self.content_mlp(torch.cat(self._content_inputs(items), -1)))

    def _id(self, rows: Tensor) -> Tensor:
        """(B,) id embedding rows → (B, d) id vectors, before normalisation."""
        return self.id_head(self.id_mlp(self.ids(rows)))

    def content(self, items: Tensor) -> Tensor:
        """(B,) item indices → (B, d) unit vectors from content alone: a cold item's vector."""
        return F.normalize(self._content(items), dim=-1)

    def both(self, items: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor | None]:
        """(B,) → (item vectors, content vectors), unit-norm, sharing one pass of the content
        path; the content vectors are None unless the tower has both paths (without an id
        they are the item vectors). `generator` draws the id dropout in training."""
        rows = (_id_rows(items, self.warm, self.config.id_dropout, self.training, generator)
                if self.ids is not None else None)
        if not self.has_content:  # id-only: a cold or dropped id is the unknown row
            return F.normalize(self._id(rows), dim=-1), None
        content = F.normalize(self._content(items), dim=-1)
        if rows is None:
            return content, None
        residual = bounded(self._id(rows)) * (rows > 0).unsqueeze(-1)
        return F.normalize(content + residual, dim=-1), content

    def forward(self, items: Tensor) -> Tensor:
        """(B,) item indices → (B, d) unit item vectors."""
        return self.both(items)[0]

    @torch.no_grad()
    def append(self, items: ItemFeatures) -> None:
        """Add rows after the current I items for products the tower was built without.

        They are cold, as `fit(new_products=True)` makes the products without interactions it
        appends: `forward` gives them their content vector and a history may hold them. Like
        those products' rows they get id embedding rows that are never read (a cold id is the
        unknown row). `items` must have the tower's inputs: image embeddings of its width when
        it reads them, its attributes in its order with codes its tables have. `truncate`
        takes them off again.
        """
        if np.any(items.warm):
            raise ValueError("appended items must be cold (warm False): they have no trained id")
        if (items.images is None) != (self.image_projection is None):
            raise ValueError("the tower reads image embeddings" if items.images is None
                             else "the tower reads no image embeddings; give none")
        if items.images is not None and items.images.shape[1] != self.images.shape[1]:
            raise ValueError(f"image embeddings must have width {self.images.shape[1]}, got "
                             f"{items.images.shape[1]}")
        if list(items.attributes) != self.attribute_names:
            raise ValueError(f"the tower reads attributes {self.attribute_names}, got "
                             f"{list(items.attributes)}")
        for (name, codes), table in zip(items.attributes.items(), self.attributes, strict=True):
            if len(codes) and codes.max() >= table.num_embeddings:
                raise ValueError(f"attribute {name!r} code {codes.max()} is past its "
                                 f"{table.num_embeddings} embedding rows")
        device = self.warm.device
        new = {"warm": items.warm.astype(bool)}
        if items.images is not None:
            new.update(images=np.ascontiguousarray(items.images, np.float32),
                       has_image=np.asarray(items.has_image, bool))
        new.update({f"attr_{name}": codes.astype(np.int64)
                    for name, codes in items.attributes.items()})
        for name, rows in new.items():
            setattr(self, name, torch.cat([getattr(self, name),
                                           torch.tensor(rows, device=device)]))
        if self.ids is not None:
            weight = self.ids.weight
            self.ids.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(
                len(items), weight.shape[1])]), requires_grad=weight.requires_grad)
            self.ids.num_embeddings = weight.shape[0] + len(items)

    @torch.no_grad()
    def truncate(self, count: int) -> None:
        """Keep the first `count` items only: undo `append`."""
        for name, _ in list(self.named_buffers(recurse=False)):
            setattr(self, name, getattr(self, name)[:count])
        if self.ids is not None:
            self.ids.weight = nn.Parameter(self.ids.weight[:count + 1],
                                           requires_grad=self.ids.weight.requires_grad)
            self.ids.num_embeddings = count + 1


class UserTower(nn.Module):
    """(user index, padded history) → unit user vectors (B, d), reading the item features."""

    def __init__(self, warm: np.ndarray, item_tower: ItemTower, config: TowerConfig,
                 user_attributes: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.config = config
        self.item_tower = item_tower  # shared: its features embed the history
        num_users = len(warm)
        self.register_buffer("warm", torch.from_numpy(np.asarray(warm, bool)))
        width = 2 * item_tower.feature_dim
        self.ids = None
        if config.user_id is not False:  # None, undecided, is on (fit decides it first)
            self.ids = nn.Embedding(num_users + 1, config.id_dim)  # row 0: the unknown user
            width += config.id_dim
        user_attributes = dict(user_attributes or {})
        self.attribute_names = list(user_attributes)
        for name, codes in user_attributes.items():
            if codes.shape != (num_users,) or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"user attribute {name!r} must be ({num_users},) integer "
                                 f"codes, got {codes.dtype} {codes.shape}")
            self.register_buffer(f"attr_{name}", torch.from_numpy(codes.astype(np.int64)))
        self.attributes = nn.ModuleList(
            nn.Embedding(int(codes.max(initial=0)) + 1, config.attribute_dim)
            for codes in user_attributes.values())
        width += config.attribute_dim * len(self.attributes)
        self.mlp = _mlp(width, config.hidden_dim)
        self.head = ProjectionHead(config.hidden_dim, config.dim, kind=config.head)

    def pooled(self, history: Tensor, features: Tensor) -> Tensor:
        """(B, L) item indices, newest last, PAD-padded on the left, and their (B, L, F)
        features → (B, 2F) mean and recency-weighted mean (zeros for an empty history)."""
        present = history != PAD  # (B, L)
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=history.device)  # (L,) 0 for the newest
        decay = torch.tensor(self.config.recency_decay, device=history.device)
        weights = [present.float(), present * decay.pow(age)]  # (B, L) each
        pools = []
        for w in weights:
            total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (B, 1)
            pools.append(torch.einsum("bl,blf->bf", w.to(features.dtype), features) / total)
        return torch.cat(pools, dim=-1)

    def forward(self, users: Tensor, history: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        """users (B,) user indices (−1: unknown), history (B, L) → (B, d) unit vectors;
        `generator` draws the id dropout (of the user and the history items) in training."""
        parts = []
        if self.ids is not None:
            parts.append(self.ids(_id_rows(users, self.warm, self.config.id_dropout,
                                           self.training, generator)))
        features = self.item_tower.features(history.clamp_min(0), generator)  # (B, L, F)
        parts.append(self.pooled(history, features))
        known = users.clamp_min(0)
        for name, table in zip(self.attribute_names, self.attributes, strict=True):
            parts.append(table(getattr(self, f"attr_{name}")[known]))
        return F.normalize(self.head(self.mlp(torch.cat(parts, dim=-1))), dim=-1)


class TwoTower(nn.Module):
    """The user tower and the item tower; `forward(batch)` gives both sides of a batch.

    users_warm: (U,) bool, the users with training rows (the others share the unknown id row).
    batch: {"user_index": (B,) long, −1 for a user outside the vocabulary; "history": (B, L)
    long item indices, newest last, PAD-padded on the left; "item_index": (B,) long positives}.
    """

    def __init__(self, users_warm: np.ndarray, items: ItemFeatures,
                 config: TowerConfig | None = None,
                 user_attributes: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.config = config or TowerConfig()
        self.item_ids = items.ids  # row i of item_vectors() is item_ids[i] (None: unknown)
        self.item_tower = ItemTower(items, self.config)
        self.user_tower = UserTower(users_warm, self.item_tower, self.config, user_attributes)

    def forward(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """→ (user_vectors, item_vectors, content_vectors), each (B, d) unit-norm; the
        content vectors (the items without their ids) are None unless the item tower has both
        an id and content inputs. `generator` draws every id dropout of the batch in training
        (None: torch's global generator)."""
        users = self.user_tower(batch["user_index"], batch["history"], generator)
        return users, *self.item_tower.both(batch["item_index"], generator)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], config: TowerConfig, *,
                        item_ids: np.ndarray | None = None,
                        attributes: Sequence[str] = ()) -> TwoTower:
        """The model whose `state_dict()` is `state`, rebuilt from it alone: the item features
        are its buffers (warm flags, image embeddings, attribute codes), so a saved state needs
        only its tower config, the item ids and the item attributes' names in their order."""
        def array(key: str) -> np.ndarray:
            return state[key].cpu().numpy()

        images = "item_tower.images" in state
        items = ItemFeatures(
            warm=array("item_tower.warm"),
            images=array("item_tower.images") if images else None,
            has_image=array("item_tower.has_image") if images else None,
            attributes={name: array(f"item_tower.attr_{name}") for name in attributes},
            ids=item_ids)
        model = cls(array("user_tower.warm"), items, config)
        model.load_state_dict(state)
        return model

    def append_items(self, items: ItemFeatures) -> None:
        """Add cold items after the current ones (`ItemTower.append`), with their ids."""
        if (self.item_ids is None) != (items.ids is None):
            raise ValueError("give the new items' ids exactly when the model knows its items'")
        self.item_tower.append(items)
        if items.ids is not None:
            self.item_ids = np.concatenate([self.item_ids, np.asarray(items.ids, str)])

    def truncate_items(self, count: int) -> None:
        """Keep the first `count` items only: undo `append_items`."""
        self.item_tower.truncate(count)
        if self.item_ids is not None:
            self.item_ids = self.item_ids[:count]

    @torch.no_grad()
    def item_vectors(self, batch_size: int = 8192) -> Tensor:
        """(I, d) unit vectors of every item, in item_index order, in eval mode."""
        items = torch.arange(len(self.item_tower.warm), device=self.item_tower.warm.device)
        return self._in_eval(lambda s: self.item_tower(items[s]), len(items), batch_size)

    @torch.no_grad()
    def user_vectors(self, users: Tensor, history: Tensor, batch_size: int = 8192) -> Tensor:
        """(U, d) unit vectors for users (U,) with histories (U, L), in eval mode."""
        return self._in_eval(lambda s: self.user_tower(users[s], history[s]), len(users),
                             batch_size)

    def _in_eval(self, encode, n: int, batch_size: int) -> Tensor:
        """encode(slice) over 0..n in blocks, with dropout and batch statistics off."""
        was = self.training
        self.eval()
        try:
            parts = [encode(slice(s, s + batch_size)) for s in range(0, n, batch_size)]
        finally:
            self.train(was)
        device = self.item_tower.warm.device
        return torch.cat(parts) if parts else torch.zeros(0, self.config.dim, device=device)


def pad_histories(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Q item-index arrays (time order) → (Q, length) int64, the newest `length` of each at the
    right, PAD on the left."""
    out = np.full((len(histories), length), PAD, np.int64)
    for row, items in enumerate(histories):
        tail = np.asarray(items, np.int64)[-length:] if length else items[:0]
        if tail.size:
            out[row, length - tail.size:] = tail
    return out
