"""Stage `figures`: pictures of what the models learned, for people rather than tables.

    python -m pipelines.figures --run-dir runs/demo \
        --catalog runs/demo/make_shop/catalog.parquet \
        --embeddings runs/demo/embed_catalog/embeddings.parquet \
        --models id_only=runs/demo/build_index/id_only image=runs/demo/build_index/image \
        --user-vectors id_only=runs/demo/train_two_tower/id_only/user_vectors_test.parquet \
                       image=runs/demo/train_two_tower/image/user_vectors_test.parquet

Writes `<run_dir>/figures/`:

    image_neighbours.png  query products (left column) and their nearest products by the
                          frozen image embedding h (cosine), nearest first
    user_retrievals.png   a few test users picked by a stated rule (`pick_users`: the users
                          nearest the 50th, 75th and 90th percentile of the `select_by` model's
                          recall@k): each user's latest history and the products they then
                          chose, then every model's top k side by side; test targets framed
                          in green, products without a training interaction (cold) tagged
                          "new" in orange
    cold_retrievals.png   products nobody had touched before the split (cold), each beside
                          the history of a test user the `select_by` model retrieved it for,
                          who then interacted with it: what the image tower makes possible
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pipelines.config import parse_config
from pipelines.tracking import stage_run
from simclr_vision.data import load_catalog
from twotower.evaluate import EvalQueries, VectorScorer, load_queries
from twotower.files import atomic_path
from twotower.index import ItemIndex
from twotower.metrics import per_query_metrics
from twotower.vectors import read_vectors

__all__ = ["FiguresConfig", "cold_retrievals", "image_neighbours", "main", "pick_users", "run",
           "user_retrievals"]

STAGE = "figures"
TARGET, NEW = "tab:green", "tab:orange"
"""The marks of `user_retrievals.png`: a test target's frame, a cold product's tag."""


@dataclass
class FiguresConfig:
    """Draw the demo's galleries (stage `figures`)."""

    catalog: str
    """Catalog Parquet with the product images (item_id, image or image_path)."""
    embeddings: str
    """Image embeddings Parquet (item_id, embedding) of the catalog."""
    models: dict[str, str]
    """Model name → its index folder (`build_index` output); `user_retrievals.png` shows each
    model's top k, in this order."""
    user_vectors: dict[str, str]
    """Model name → its user vectors for the split's users (user_id, embedding)."""
    select_by: str | None = None
    """The model whose recall@k picks the users of `user_retrievals.png` and whose retrievals
    `cold_retrievals.png` shows; None: the last of `models`."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/figures/`."""
    prepared: str | None = None
    """Prepared folder; None: `<run_dir>/prepare`."""
    split: str = "test"
    """Whose users `user_retrievals.png` shows."""
    queries: int = 8
    """Query products in `image_neighbours.png`."""
    quantiles: tuple[float, ...] = (0.5, 0.75, 0.9)
    """One user in `user_retrievals.png` per quantile of the `select_by` model's recall@k over
    the split's users: the one nearest it (`pick_users`). The median first: at small k most
    users have no target in their top k, and the median user is one of them."""
    k: int = 10
    """Neighbours per query product, and items retrieved per user."""
    history: int = 6
    """History items per user in `user_retrievals.png`, newest right."""
    cold: int = 6
    """Cold products in `cold_retrievals.png`."""
    cold_k: int = 50
    """A cold product counts as retrieved for a user within this rank."""
    seed: int = 0
    """Picks the query products and the order cold products are looked for in."""

    def __post_init__(self) -> None:
        if not self.models or set(self.models) != set(self.user_vectors):
            raise ValueError(
                f"every model needs both an index and user vectors: --models names "
                f"{sorted(self.models)}, --user-vectors names {sorted(self.user_vectors)}")
        if self.select_by is not None and self.select_by not in self.models:
            raise ValueError(f"--select-by {self.select_by!r} is not one of --models "
                             f"{list(self.models)}")
        if min(self.k, self.history, self.cold_k) < 1:
            raise ValueError(f"k, history and cold_k must be >= 1, got {self.k}, "
                             f"{self.history}, {self.cold_k}")
        if not self.quantiles or not all(0 <= q <= 1 for q in self.quantiles):
            raise ValueError(f"quantiles must be one or more values in [0, 1], got "
                             f"{self.quantiles!r}")

    @property
    def chooser(self) -> str:
        """The model that picks the users and finds the cold products."""
        return self.select_by if self.select_by is not None else list(self.models)[-1]

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared) if self.prepared is not None else Path(self.run_dir) / "prepare"

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return (self.catalog, self.embeddings, *self.models.values(), *self.user_vectors.values(),
                self.prepared_dir)


def pick_users(recall: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Rows of users spread over a recall distribution, by a rule a caption can state.

    For each q of `quantiles` in turn, the user whose recall is nearest the q-quantile of
    `recall` (numpy's linear one), ties to the first row, each user at most once. Neither the
    best users (a showcase) nor random ones, but users whose place in the distribution is
    known. recall: (U,) one value per user. Returns (min(len(quantiles), U),) rows in the order
    of `quantiles`.
    """
    recall = np.asarray(recall, dtype=float)
    levels = np.quantile(recall, quantiles) if recall.size else []
    taken = np.zeros(recall.size, dtype=bool)
    rows = []
    for level in levels[:recall.size]:
        distance = np.where(taken, np.inf, np.abs(recall - level))
        rows.append(int(np.argmin(distance)))  # the first row among equals
        taken[rows[-1]] = True
    return np.asarray(rows, dtype=np.int64)


def _picture(ax, image: np.ndarray, *, frame: str | None = None, new: bool = False) -> None:
    """One (C, H, W) uint8 image on an axis, without ticks, optionally framed in a colour and
    tagged "new" (a cold product)."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    ax.imshow(pixels, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)
    if new:
        ax.text(0.04, 0.96, "new", transform=ax.transAxes, ha="left", va="top", fontsize=7,
                color="white", bbox={"facecolor": NEW, "edgecolor": "none", "pad": 1.5})


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def image_neighbours(images: np.ndarray, ids: np.ndarray, h: np.ndarray, *, queries: int = 8,
                     k: int = 8, seed: int = 0) -> Figure:
    """Gallery of `queries` random products, each followed by its k nearest by cosine on h.

    images: (N, C, H, W) uint8 in the order of ids and h (N, d).
    """
    index = ItemIndex.build(h, ids, "flat", device="cpu")
    rows = np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)),
                                              replace=False)
    scores, found = index.search(h[rows], min(k + 1, len(ids)))
    position = pd.Index(ids)
    fig = Figure(figsize=(1.1 * (k + 1), 1.2 * len(rows) + 0.5), layout="constrained")
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
    fig.suptitle("Query product (blue, its id above) and its nearest products by image h, "
                 "cosine above each")
    return fig


def user_retrievals(images: np.ndarray, ids: np.ndarray, queries: EvalQueries,
                    retrieved: Mapping[str, np.ndarray], *, headings: list[str] | None = None,
                    caption: str = "", history: int = 6) -> Figure:
    """Per user of `queries` one block: a row with their latest `history` items (newest right)
    and then the products they chose (their test targets, as many as fit), then one row per
    model of `retrieved` with its top k, labelled with the model's name and hits.

    retrieved: model name → (U, k) item ids ranked for `queries`' users, every model the same
    k. A test target is framed green, a product without a training interaction (cold:
    `item_counts == 0`) tagged "new" in orange; a legend says so. headings: one line per user
    (default their user_id); caption: the figure's title (which models, which users).
    """
    if not retrieved:
        raise ValueError("user_retrievals needs at least one model's retrievals")
    k = next(iter(retrieved.values())).shape[1]
    width = max(k, history + 2)
    shown = width - history - 1  # targets beside the history, after an empty cell
    names, position = queries.item_ids, pd.Index(ids)
    cold = set(names[queries.item_counts == 0])
    fig = Figure(figsize=(1.0 * width + 1.2, (1.0 * (len(retrieved) + 1) + 0.5) * len(queries)
                          + 1.0), layout="constrained")
    blocks = fig.subfigures(len(queries), 1, squeeze=False)[:, 0]
    for u, block in enumerate(blocks):
        axes = block.subplots(len(retrieved) + 1, width, squeeze=False)
        targets = set(names[queries.relevant[u]])
        recent = list(names[queries.history[u]][-history:])
        chose = sorted(targets, key=lambda item: (item not in cold, item))[:shown]  # cold first
        cells = {c: item for c, item in enumerate(recent)}
        cells |= {history + 1 + c: item for c, item in enumerate(chose)}
        for c, ax in enumerate(axes[0]):
            ax.set_visible(c in cells)
            if c in cells:
                _picture(ax, images[position.get_loc(cells[c])], new=cells[c] in cold,
                         frame=TARGET if c > history else None)
        axes[0][0].set_ylabel("history\n(newest right)", rotation=0, ha="right", va="center",
                              fontsize=8)
        axes[0][history + 1].set_title(
            f"then chose {len(targets)}" + (f" ({len(chose)} shown)" if len(chose) < len(targets)
                                            else ""), fontsize=8, loc="left")
        for row, (model, ranked) in enumerate(retrieved.items(), start=1):
            for c, ax in enumerate(axes[row]):
                ax.set_visible(c < k)
                if c < k:
                    item = ranked[u][c]
                    _picture(ax, images[position.get_loc(item)], new=item in cold,
                             frame=TARGET if item in targets else None)
            hits = sum(item in targets for item in ranked[u])
            axes[row][0].set_ylabel(f"{model}\ntop {k}:\n{hits} of {len(targets)}",
                                    rotation=0, ha="right", va="center", fontsize=8)
        block.suptitle(headings[u] if headings else str(queries.user_id[u]), fontsize=9,
                       x=0.02, ha="left")
    fig.legend(handles=[Patch(facecolor="none", edgecolor=TARGET, linewidth=3,
                              label="chosen after the split (a test target)"),
                        Patch(facecolor=NEW, label="new: no training interaction (cold)")],
               loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(caption or "What users did, and what the models retrieve for them", fontsize=10)
    return fig


def cold_retrievals(images: np.ndarray, ids: np.ndarray, queries: EvalQueries,
                    retrieved: np.ndarray, *, model: str = "the model", rows: int = 6,
                    history: int = 7, seed: int = 0) -> Figure:
    """Cold products `model` found: each row one retrieved cold test target (framed green,
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
    fig = Figure(figsize=(1.1 * width, 1.45 * max(len(picked), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(picked), 1), width, squeeze=False)
    for r, (item, (u, rank)) in enumerate(picked):
        _picture(axes[r][0], images[position.get_loc(item)], frame=TARGET, new=True)
        axes[r][0].set_title(f"{item}\nrank {rank}", fontsize=7)
        recent = list(names[queries.history[u]][-history:])
        for c in range(1, width):
            ax = axes[r][c]
            ax.set_visible(c <= len(recent))
            if c <= len(recent):
                _picture(ax, images[position.get_loc(recent[c - 1])], new=recent[c - 1] in cold)
        axes[r][1].set_title(f"{queries.user_id[u]}: latest history (newest right)",
                             fontsize=7, loc="left")
    if not picked:
        for ax in axes[0]:
            ax.set_visible(False)
        fig.text(0.5, 0.5, f"no cold product was retrieved within the top {retrieved.shape[1]} "
                 "of a user who then chose it", ha="center", va="center")
    fig.suptitle(f"Cold products (new: no training interaction) that {model} put in the "
                 f"top {retrieved.shape[1]}\nof a user who then chose them (green), beside that "
                 "user's history", fontsize=9)
    return fig


def _caption(cfg: FiguresConfig, recall: np.ndarray) -> str:
    """The title of `user_retrievals.png`: the rule that picked its users, and where the
    recall@k they were picked by stands."""
    percentiles = ", ".join(f"{100 * q:g}" for q in cfg.quantiles)
    return (f"{cfg.split.capitalize()} users nearest the percentiles {percentiles} of "
            f"{cfg.chooser}'s recall@{cfg.k} (ties: the first by user index); over all "
            f"{recall.size:,} {cfg.split} users its mean is {recall.mean():.2f} and "
            f"{(recall == 0).mean():.0%} have none\nEach user's history and what they then "
            f"chose; below, the top {cfg.k} of {' and of '.join(cfg.models)}")


def run(cfg: FiguresConfig) -> dict[str, Any]:
    """Draw the three figures; return their paths."""
    catalog = load_catalog(cfg.catalog)
    images, ids = catalog.images.numpy(), np.asarray(catalog.ids, dtype=str)
    embeddings = read_vectors(cfg.embeddings)
    row_of = pd.Index(embeddings.ids).get_indexer(ids)
    has = row_of >= 0
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        figures = {"image_neighbours": image_neighbours(
            images[has], ids[has], embeddings.vectors[row_of[has]], queries=cfg.queries,
            k=cfg.k, seed=cfg.seed)}
        every = load_queries(cfg.prepared_dir, cfg.split)
        scorers = {name: VectorScorer.from_saved(cfg.models[name], cfg.user_vectors[name])
                   for name in cfg.models}
        names = every.item_ids
        ranked = scorers[cfg.chooser].rank(every, max(cfg.k, cfg.cold_k))  # (U, max k)
        recall = per_query_metrics(ranked[:, :cfg.k], [names[r] for r in every.relevant],
                                   [cfg.k])[f"recall@{cfg.k}"]
        rows = pick_users(recall, cfg.quantiles)
        shown = every.take(rows)
        headings = [f"{user}: {cfg.chooser} recall@{cfg.k} {recall[row]:.2f}, the user nearest "
                    f"its percentile {100 * q:g} ({np.quantile(recall, q):.2f})"
                    for user, row, q in zip(shown.user_id, rows, cfg.quantiles, strict=False)]
        figures["user_retrievals"] = user_retrievals(
            images, ids, shown, {name: scorer.rank(shown, cfg.k)
                                 for name, scorer in scorers.items()},
            headings=headings, caption=_caption(cfg, recall), history=cfg.history)
        figures["cold_retrievals"] = cold_retrievals(
            images, ids, every, ranked[:, :cfg.cold_k], model=cfg.chooser, rows=cfg.cold,
            seed=cfg.seed)
        paths = {name: _save(fig, cfg.out_dir / f"{name}.png") for name, fig in figures.items()}
        for path in paths.values():
            tracker.artifact(path, folder="figures")
    return {name: str(path) for name, path in paths.items()}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_config(FiguresConfig, argv)), indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower figures`
    import sys

    from pipelines.cli import main as cli

    cli(["figures", *sys.argv[1:]])
