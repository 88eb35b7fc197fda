"""Stage `figures`: pictures of what the models learned, for people rather than tables.

    python -m pipelines.figures --run-dir runs/demo \
        --catalog runs/demo/make_shop/catalog.parquet \
        --embeddings runs/demo/embed_catalog/embeddings.parquet \
        --index runs/demo/build_index/image \
        --user-vectors runs/demo/train_two_tower/image/user_vectors_test.parquet

Writes `<run_dir>/figures/`:

    image_neighbours.png  query products (left column) and their nearest products by the
                          frozen image embedding h (cosine), nearest first
    user_retrievals.png   for a few test users: their latest history items, then the items
                          the model retrieves for them, a test target framed in green
    cold_retrievals.png   products nobody had touched before the split (cold), each beside
                          the history of a test user the model retrieved it for, who then
                          interacted with it: what the image tower makes possible
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipelines.config import parse_config
from pipelines.tracking import stage_run
from simclr_vision.data import load_catalog
from twotower.evaluate import EvalQueries, VectorScorer, load_queries
from twotower.files import atomic_path
from twotower.index import ItemIndex
from twotower.vectors import read_vectors

__all__ = ["FiguresConfig", "cold_retrievals", "image_neighbours", "main", "run",
           "user_retrievals"]

STAGE = "figures"


@dataclass
class FiguresConfig:
    """Draw the demo's galleries (stage `figures`)."""

    catalog: str
    """Catalog Parquet with the product images (item_id, image or image_path)."""
    embeddings: str
    """Image embeddings Parquet (item_id, embedding) of the catalog."""
    index: str
    """The model's index folder (`build_index` output)."""
    user_vectors: str
    """The model's user vectors for the split's users (user_id, embedding)."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/figures/`."""
    prepared: str | None = None
    """Prepared folder; None: `<run_dir>/prepare`."""
    split: str = "test"
    """Whose users `user_retrievals.png` shows."""
    queries: int = 8
    """Query products in `image_neighbours.png`."""
    users: int = 4
    """Users in `user_retrievals.png`."""
    k: int = 8
    """Neighbours per query product, and items retrieved per user."""
    cold: int = 6
    """Cold products in `cold_retrievals.png`."""
    cold_k: int = 50
    """A cold product counts as retrieved for a user within this rank."""
    seed: int = 0
    """Picks the query products and the users."""

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared) if self.prepared is not None else Path(self.run_dir) / "prepare"

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return self.catalog, self.embeddings, self.index, self.user_vectors, self.prepared_dir


def _picture(ax, image: np.ndarray, *, frame: str | None = None) -> None:
    """One (C, H, W) uint8 image on an axis, without ticks, optionally framed in a colour."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    ax.imshow(pixels, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def image_neighbours(images: np.ndarray, ids: np.ndarray, h: np.ndarray, path: str | Path, *,
                     queries: int = 8, k: int = 8, seed: int = 0) -> Path:
    """Gallery of `queries` random products, each followed by its k nearest by cosine on h.

    images: (N, C, H, W) uint8 in the order of ids and h (N, d).
    """
    index = ItemIndex.build(h, ids, "flat", device="cpu")
    rows = np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)),
                                              replace=False)
    scores, found = index.search(h[rows], min(k + 1, len(ids)))
    position = pd.Index(ids)
    fig = Figure(figsize=(1.2 * (k + 1), 1.25 * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, row in enumerate(rows):
        _picture(axes[r][0], images[row], frame="tab:blue")
        axes[r][0].set_title(str(ids[row]), fontsize=7)
        neighbours = [(i, s) for i, s in zip(found[r], scores[r], strict=True) if i != ids[row]]
        for c, (item, score) in enumerate(neighbours[:k], start=1):
            _picture(axes[r][c], images[position.get_loc(item)])
            axes[r][c].set_title(f"{score:.2f}", fontsize=7)
        for c in range(len(neighbours[:k]) + 1, k + 1):
            axes[r][c].set_visible(False)
    fig.suptitle("Query product (blue) and its nearest products by image h (cosine)")
    return _save(fig, Path(path))


def user_retrievals(images: np.ndarray, ids: np.ndarray, histories: list[np.ndarray],
                    retrieved: np.ndarray, targets: list[set[str]], users: list[str],
                    path: str | Path, *, history: int = 8) -> Path:
    """Per user two rows: the latest `history` items they interacted with, then the items
    retrieved for them (`retrieved`, (U, k) ids), a test target framed in green."""
    k = retrieved.shape[1]
    width = max(k, history)
    position = pd.Index(ids)
    fig = Figure(figsize=(1.1 * width, 2.5 * len(users)))
    axes = fig.subplots(2 * len(users), width, squeeze=False)
    for u, user in enumerate(users):
        recent = list(histories[u][-history:])
        for c in range(width):
            top, bottom = axes[2 * u][c], axes[2 * u + 1][c]
            top.set_visible(c < len(recent))
            if c < len(recent):
                _picture(top, images[position.get_loc(recent[c])])
            item = retrieved[u][c] if c < k else None
            bottom.set_visible(item is not None)
            if item is not None:
                _picture(bottom, images[position.get_loc(item)],
                         frame="tab:green" if item in targets[u] else None)
        hits = sum(item in targets[u] for item in retrieved[u])
        axes[2 * u][0].set_title(f"{user}: latest history (newest right)", fontsize=8,
                                 loc="left")
        axes[2 * u + 1][0].set_title(f"retrieved top {k}: {hits} test target(s), framed",
                                     fontsize=8, loc="left")
    fig.suptitle("What a user did, and what the model retrieves for them")
    return _save(fig, Path(path))


def cold_retrievals(images: np.ndarray, ids: np.ndarray, queries: EvalQueries,
                    retrieved: np.ndarray, path: str | Path, *, rows: int = 6,
                    history: int = 7, seed: int = 0) -> Path:
    """Cold products the model found: each row one retrieved cold test target (framed green,
    with its rank) beside the latest `history` items of the user it was retrieved for.

    retrieved: (U, k) item ids ranked for `queries`' users. Each product appears once; when no
    cold target was retrieved the figure says so.
    """
    names = queries.item_ids
    cold = set(names[queries.item_counts == 0])
    found: dict[str, tuple[int, int]] = {}  # cold item → (query row, rank), first user found
    for u in np.random.default_rng(seed).permutation(len(queries)):
        targets = set(names[queries.relevant[u]]) & cold
        for rank, item in enumerate(retrieved[u], start=1):
            if item in targets and item not in found:
                found[item] = (int(u), rank)
                break
    picked = list(found.items())[:rows]
    position = pd.Index(ids)
    width = history + 1
    fig = Figure(figsize=(1.1 * width, 1.45 * max(len(picked), 1) + 0.4))
    axes = fig.subplots(max(len(picked), 1), width, squeeze=False)
    for r, (item, (u, rank)) in enumerate(picked):
        _picture(axes[r][0], images[position.get_loc(item)], frame="tab:green")
        axes[r][0].set_title(f"new {item}\nrank {rank}", fontsize=7)
        recent = list(names[queries.history[u]][-history:])
        for c in range(1, width):
            ax = axes[r][c]
            ax.set_visible(c <= len(recent))
            if c <= len(recent):
                _picture(ax, images[position.get_loc(recent[c - 1])])
        axes[r][1].set_title(f"{queries.user_id[u]}: latest history (newest right)",
                             fontsize=7, loc="left")
    if not picked:
        for ax in axes[0]:
            ax.set_visible(False)
        fig.text(0.5, 0.5, f"no cold product was retrieved within the top {retrieved.shape[1]} "
                 "of a user who then chose it", ha="center", va="center")
    fig.suptitle(f"Cold products (green: no interaction before the split) retrieved in the top "
                 f"{retrieved.shape[1]} for a user who then chose them, beside that user's history",
                 fontsize=9)
    return _save(fig, Path(path))


def run(cfg: FiguresConfig) -> dict[str, Any]:
    """Draw both figures; return their paths."""
    catalog = load_catalog(cfg.catalog)
    images, ids = catalog.images.numpy(), np.asarray(catalog.ids, dtype=str)
    embeddings = read_vectors(cfg.embeddings)
    row_of = pd.Index(embeddings.ids).get_indexer(ids)
    has = row_of >= 0
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        paths = {"image_neighbours": image_neighbours(
            images[has], ids[has], embeddings.vectors[row_of[has]],
            cfg.out_dir / "image_neighbours.png", queries=cfg.queries, k=cfg.k, seed=cfg.seed)}
        every = load_queries(cfg.prepared_dir, cfg.split)
        scorer = VectorScorer.from_saved(cfg.index, cfg.user_vectors)
        pick = np.sort(np.random.default_rng(cfg.seed).choice(
            len(every), size=min(cfg.users, len(every)), replace=False))
        queries = every.take(pick)
        retrieved = scorer.rank(queries, cfg.k)
        names = queries.item_ids
        paths["user_retrievals"] = user_retrievals(
            images, ids, [names[h] for h in queries.history], retrieved,
            [set(names[r]) for r in queries.relevant], list(queries.user_id),
            cfg.out_dir / "user_retrievals.png")
        paths["cold_retrievals"] = cold_retrievals(
            images, ids, every, scorer.rank(every, cfg.cold_k),
            cfg.out_dir / "cold_retrievals.png", rows=cfg.cold, seed=cfg.seed)
        for path in paths.values():
            tracker.artifact(path, folder="figures")
    return {name: str(path) for name, path in paths.items()}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(FiguresConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower figures`
    import sys

    from pipelines.cli import main as cli

    cli(["figures", *sys.argv[1:]])
