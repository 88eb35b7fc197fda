"""The user and item towers and the two-tower model that joins them.

Item tower (one row per prepared item, `item_index` 0..I-1):

    features(i) = [ id_emb(i or unknown) | W_img · h_i | attr_emb(a_i,1) | … ]     (F,)
    item(i)     = normalize(head(mlp(features(i))))                                  (d,)

- the id embedding is optional; items without training interactions (cold) share one
  *unknown* row, and in training each id is replaced by it with probability `id_dropout`, so
  the tower learns to place an item from its image and attributes alone (user ids likewise);
- h_i is the frozen SimCLR image embedding (a buffer, never trained), through a learned
  linear projection; items without an embedding get zeros there;
- categorical attributes (category, brand, …) each get an embedding table.

User tower:

    pool(u)  = [ mean_l features(hist_l) | Σ_l w_l features(hist_l) / Σ_l w_l ]      (2F,)
    user(u)  = normalize(head(mlp([ id_emb(u or unknown) | pool(u) | attr_emb(b_u) ])))

with w_l = decay^(age of item l, 0 for the newest): the recency-weighted mean; users without
training rows share the unknown id row. The history
reads the item tower's `features`, so the two towers share the item embeddings, as in Covington
et al. 2016 ("Deep Neural Networks for YouTube Recommendations") and Yi et al. 2019. The user-id
embedding is optional (off for `holdout_users`, whose test users were never trained on).

`TwoTower.forward(batch) -> (user_vectors, item_vectors)`, each (B, d) and unit-norm, is what
`info_nce` consumes: row i of the item vectors is user i's positive.
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
           "pad_histories"]

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
    """Give the item tower an item-id embedding (cold items share the unknown row)."""
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


def _id_rows(index: Tensor, warm: Tensor, dropout: float, training: bool) -> Tensor:
    """Embedding rows of ids: index + 1 for a warm id, 0 (unknown) for a cold or −1 one, and
    in training for a random `dropout` share of them."""
    known = (index >= 0) & warm[index.clamp_min(0)]
    rows = torch.where(known, index + 1, 0)
    if training and dropout > 0:
        rows = rows.masked_fill(torch.rand(index.shape, device=index.device) < dropout, 0)
    return rows


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU())


class ItemTower(nn.Module):
    """Item index (B,) → unit item vectors (B, d); `features` is what user histories pool."""

    def __init__(self, items: ItemFeatures, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        n = len(items)
        width = 0
        self.register_buffer("warm", torch.from_numpy(np.asarray(items.warm, bool)))
        self.ids = None
        if config.item_id:
            self.ids = nn.Embedding(n + 1, config.id_dim)  # row 0: the unknown item
            width += config.id_dim
        self.image_projection = None
        if items.images is not None:
            self.register_buffer("images", torch.from_numpy(
                np.ascontiguousarray(items.images, np.float32)))
            self.register_buffer("has_image", torch.from_numpy(np.asarray(items.has_image)))
            self.image_projection = nn.Linear(items.images.shape[1], config.image_dim)
            width += config.image_dim
        self.attribute_names = list(items.attributes)
        for name, codes in items.attributes.items():
            self.register_buffer(f"attr_{name}", torch.from_numpy(codes.astype(np.int64)))
        self.attributes = nn.ModuleList(
            nn.Embedding(int(codes.max(initial=0)) + 1, config.attribute_dim)
            for codes in items.attributes.values())
        width += config.attribute_dim * len(self.attributes)
        if width == 0:
            raise ValueError("the item tower has no input: enable item_id or give image "
                             "embeddings or attributes")
        self.feature_dim = width
        self.mlp = _mlp(width, config.hidden_dim)
        self.head = ProjectionHead(config.hidden_dim, config.dim, kind=config.head)

    def features(self, items: Tensor) -> Tensor:
        """(...,) item indices → (..., F) input features (ids, projected image h, attributes)."""
        parts = []
        if self.ids is not None:
            parts.append(self.ids(_id_rows(items, self.warm, self.config.id_dropout,
                                           self.training)))
        if self.image_projection is not None:
            projected = self.image_projection(self.images[items])
            parts.append(projected * self.has_image[items].unsqueeze(-1))
        for name, table in zip(self.attribute_names, self.attributes, strict=True):
            parts.append(table(getattr(self, f"attr_{name}")[items]))
        return torch.cat(parts, dim=-1)

    def encode(self, features: Tensor) -> Tensor:
        """(B, F) features → (B, d) unit vectors."""
        return F.normalize(self.head(self.mlp(features)), dim=-1)

    def forward(self, items: Tensor) -> Tensor:
        """(B,) item indices → (B, d) unit item vectors."""
        return self.encode(self.features(items))


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

    def forward(self, users: Tensor, history: Tensor) -> Tensor:
        """users (B,) user indices (−1: unknown), history (B, L) → (B, d) unit vectors."""
        parts = []
        if self.ids is not None:
            parts.append(self.ids(_id_rows(users, self.warm, self.config.id_dropout,
                                           self.training)))
        features = self.item_tower.features(history.clamp_min(0))  # (B, L, F)
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

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """→ (user_vectors (B, d), item_vectors (B, d)), both unit-norm."""
        users = self.user_tower(batch["user_index"], batch["history"])
        return users, self.item_tower(batch["item_index"])

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
