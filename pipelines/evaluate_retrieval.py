r"""Stage `evaluate_retrieval`: offline recall@k / NDCG@k of models and baselines on one split.

    python -m pipelines.evaluate_retrieval --prepared runs/ml/prepare --run-dir runs/ml \
        --baselines popularity ease ials
    python -m pipelines.evaluate_retrieval --run-dir runs/demo \
        --models two_tower=runs/demo/build_index/two_tower \
        --user-vectors two_tower=runs/demo/train_two_tower/user_vectors_test.parquet \
        --baselines popularity ease image_knn \
        --embeddings runs/demo/embed_catalog/embeddings.parquet

Every user of the split with a target gets a full-catalog ranking with their training items
masked (`twotower.evaluate`). Scorers: each model (a saved `ItemIndex` plus a user vectors
Parquet keyed by `user_id`; an approximate index is also measured against exact search over the
vectors it was built from) and the baselines popularity, EASE (Steck 2019), iALS (Hu et al. 2008,
through `implicit`; `--ials.factors`, `--ials.regularization`, `--ials.alpha`, ...) and image-kNN
(needs `--embeddings`). Every value gets a 95% bootstrap interval over users (`--n-boot`);
`--reference NAME` adds each scorer's difference from that one with its paired interval. It
writes `<run_dir>/evaluate_retrieval/` — metrics.csv, report.md, recall_at_k.png, ndcg_at_k.png —
and logs every value as an MLflow metric `scorer/slice/metric_at_k` with those files as
artifacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.config import parse_config, resolve_device, save_config
from pipelines.report import write_report
from pipelines.tracking import stage_run
from twotower.evaluate import (
    KS,
    EASEScorer,
    EvalQueries,
    IALSConfig,
    IALSScorer,
    PopularityScorer,
    Scorer,
    VectorScorer,
    evaluate,
    image_knn,
    load_queries,
)
from twotower.vectors import read_vectors

__all__ = ["EvaluateRetrievalConfig", "main", "run"]

STAGE = "evaluate_retrieval"
Baseline = Literal["popularity", "ease", "ials", "image_knn"]


@dataclass
class EvaluateRetrievalConfig:
    """Evaluate models and baselines on a prepared split (stage `evaluate_retrieval`)."""

    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/evaluate_retrieval/`."""
    prepared: str | None = None
    """Prepared folder (`twotower.prepare` output); None: `<run_dir>/prepare`."""
    split: Literal["valid", "test"] = "test"
    """Which split's users and targets to rank for."""
    ks: tuple[int, ...] = KS
    """Cut-offs k of every metric@k."""
    models: dict[str, str] = field(default_factory=dict)
    """Model name → its index folder (`build_index` output)."""
    user_vectors: dict[str, str] = field(default_factory=dict)
    """Model name → its user vectors Parquet (user_id, embedding) for the split's users."""
    baselines: tuple[Baseline, ...] = ("popularity", "ease")
    """Baselines to rank with beside the models: popularity, ease, ials, image_knn."""
    embeddings: str | None = None
    """Image embeddings Parquet (item_id, embedding) for the image_knn baseline."""
    ease_l2: float = 500.0
    """EASE's L2 penalty λ."""
    ials: IALSConfig = field(default_factory=IALSConfig)
    """The iALS baseline's factors, regularization, alpha, iterations, seed and threads."""
    head_fraction: float = 0.2
    """Share of the warm items, most popular first, in the `head` slice; the rest is `tail`."""
    device: str = "auto"
    """Where indexes search: auto (a GPU when present), cpu or cuda."""
    n_boot: int = 1000
    """Bootstrap resamples of the users behind each value's 95% interval; 0 skips them."""
    reference: str | None = None
    """A model or baseline to compare every scorer with (diff and its paired interval)."""

    def __post_init__(self) -> None:
        if set(self.models) != set(self.user_vectors):
            raise ValueError(
                f"every model needs both an index and user vectors: --models names "
                f"{sorted(self.models)}, --user-vectors names {sorted(self.user_vectors)}")
        if "image_knn" in self.baselines and self.embeddings is None:
            raise ValueError("the image_knn baseline needs --embeddings (an embeddings Parquet)")
        clash = set(self.models) & set(self.baselines)
        if clash:
            raise ValueError(f"model name(s) {sorted(clash)} clash with a baseline's name")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks!r}")
        if not self.models and not self.baselines:
            raise ValueError("nothing to evaluate: give --models or --baselines")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0 skips the intervals), got {self.n_boot}")
        if self.reference is not None and self.reference not in (*self.models, *self.baselines):
            raise ValueError(f"--reference {self.reference!r} is neither a model nor a baseline "
                             f"being evaluated: {[*self.models, *self.baselines]}")

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared) if self.prepared is not None else Path(self.run_dir) / "prepare"

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        image_knn = (self.embeddings,) if "image_knn" in self.baselines else ()
        return (self.prepared_dir, *self.models.values(), *self.user_vectors.values(), *image_knn)


def _scorers(cfg: EvaluateRetrievalConfig, queries: EvalQueries, device: str) -> dict[str, Scorer]:
    scorers: dict[str, Scorer] = {
        name: VectorScorer.from_saved(cfg.models[name], cfg.user_vectors[name], device=device)
        for name in cfg.models}
    for name in cfg.baselines:
        if name == "popularity":
            scorers[name] = PopularityScorer.from_queries(queries)
        elif name == "ease":
            scorers[name] = EASEScorer.from_prepared(cfg.prepared_dir, l2=cfg.ease_l2)
        elif name == "ials":
            scorers[name] = IALSScorer.from_prepared(cfg.prepared_dir, config=cfg.ials)
        else:
            scorers[name] = image_knn(read_vectors(cfg.embeddings), device=device)
    return scorers


def run(cfg: EvaluateRetrievalConfig) -> dict[str, Any]:
    """Evaluate, write the report and plots, and return the headline metrics per scorer."""
    device = resolve_device(cfg.device)
    queries = load_queries(cfg.prepared_dir, cfg.split)
    with stage_run(STAGE, cfg, cfg.run_dir) as tracker:
        table = evaluate(queries, _scorers(cfg, queries, device), ks=cfg.ks,
                         head_fraction=cfg.head_fraction, progress=True, n_boot=cfg.n_boot,
                         reference=cfg.reference)
        tracker.log({f"{r.scorer}/{r.slice}/{r.metric}_at_{r.k}": r.value
                     for r in table.itertuples()}, step=0)
        notes = [f"Split `{cfg.split}` of `{cfg.prepared_dir}`: {len(queries):,} users with a "
                 f"target they had not seen ({queries.dropped:,} left out whose every target "
                 "they had seen); training items masked."]
        paths = write_report(table, cfg.out_dir, notes=notes)
        save_config(cfg, cfg.out_dir / "config.json")  # after the work: a failure keeps the old
        for path in paths.values():
            tracker.artifact(path, folder="report")
        k = 20 if 20 in cfg.ks else min(cfg.ks)
        overall = table[(table["slice"] == "all") & (table["k"] == k)]
        headline = {scorer: {f"{m}@{k}": round(float(v), 4)
                             for m, v in zip(part["metric"], part["value"], strict=True)
                             if m in ("recall", "ndcg")}
                    for scorer, part in overall.groupby("scorer", sort=False)}
        return {"users": len(queries), "report": str(paths["report"]), "metrics": headline,
                "run_id": tracker.run_id}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `EvaluateRetrievalConfig` from the command line, run it and print its summary."""
    summary = run(parse_config(EvaluateRetrievalConfig, argv))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":  # one-line errors and --threads, as `twotower evaluate_retrieval`
    import sys

    from pipelines.cli import main as cli

    cli(["evaluate_retrieval", *sys.argv[1:]])
