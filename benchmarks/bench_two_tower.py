"""The two-tower model, default and tuned, against popularity, EASE and iALS, with 95% intervals.

Per data set, every scorer ranks the full catalog for the test users with their seen items
masked (`twotower.evaluate`), and every figure comes with its 95% bootstrap interval over the
test users; "vs EASE" is the paired difference on the same users with its own interval, and a
difference whose interval holds 0 is printed as a tie.

    ml-temporal      MovieLens latest-small (../shared/data), one global time cut; recall@20
    ml-holdout       MovieLens latest-small, held-out users (Liang et al. 2018; each held-out
                     user's earliest 80% is the fold-in); recall@20 and recall_capped@50
    photo-shop       the synthetic shop whose products are Fashion-MNIST photos; recall@50 on
                     all, warm and cold items
    procedural-shop  the synthetic shop of procedural drawings (the demo's); the same columns

Rows:
    popularity             training counts
    EASE                   Steck 2019; λ picked on the validation users from a grid
    iALS                   Hu et al. 2008 through `implicit`; regularization and alpha picked
                           on the validation users from a grid (Rendle et al. 2022 tune both)
    two-tower previous     the defaults before issue 14 (in-batch sampled softmax with logQ,
                           d 64, hidden 128, id 32, τ 0.2, batch 1024, 20 history items, the
                           user-id embedding on), which its table of the gap to EASE measured
    two-tower sampled      today's defaults but the in-batch sampled softmax: the full
                           softmax's share of the gain
    two-tower default      `TrainConfig()` as shipped (val_k set to the data set's k)
    two-tower tuned        the settings in benchmarks/tuned/<data>.toml, found by `twotower
                           tune` on the validation users (`--tune MINUTES` searches again)
    oracle P(i|u)          shops only: the shop's true choice probabilities over the test
                           window, the best any model can do
On the shops both two-tower models read the frozen SimCLR h of every product beside its id
(the narrow ResNet, 15 epochs on the shop's images, as the demo).

    python benchmarks/bench_two_tower.py                              # all four, CPU
    python benchmarks/bench_two_tower.py --data ml-holdout --seed 1
    python benchmarks/bench_two_tower.py --data ml-temporal --tune 30 # search, then measure

Needs the installed project; MovieLens and Fashion-MNIST from ../shared/data (a data set
whose files are absent is skipped, saying which file).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tomli_w
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model
from benchmarks.shop import prepared_shop, test_window
from benchmarks.tables import print_tables
from pipelines.cli import stage_argv
from pipelines.config import parse_config
from pipelines.train_two_tower import TrainTwoTowerConfig
from pipelines.tune import TuneConfig
from pipelines.tune import run as tune
from twotower.data import PrepareConfig, prepare
from twotower.evaluate import (
    EASEScorer,
    EvalQueries,
    IALSConfig,
    IALSScorer,
    PopularityScorer,
    Scorer,
    VectorScorer,
    evaluate,
    load_queries,
)
from twotower.export import user_vectors_for
from twotower.index import ItemIndex
from twotower.synthetic import Shop, ShopConfig, ShopOracle
from twotower.towers import TowerConfig
from twotower.train import TrainConfig, fit
from twotower.vectors import read_vectors, write_vectors

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TUNED = Path(__file__).resolve().parent / "tuned"
EASE_L2 = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
IALS_GRID = [IALSConfig(factors=f, regularization=r, alpha=a)
             for f in (64, 128) for r in (1.0, 10.0, 100.0) for a in (1.0, 10.0, 40.0)]
PREVIOUS = TrainConfig(batch_size=1024, temperature=0.2, max_history=20, softmax="sampled",
                       use_weights=False,
                       tower=TowerConfig(dim=64, hidden_dim=128, id_dim=32, user_id=True))
"""The training defaults before issue 14 (commit d3bf5ab, which read no `weight`)."""


@dataclass
class Dataset:
    """One benchmark data set: how to prepare it and what to report."""

    name: str
    metrics: list[tuple[str, str, int]]
    """(metric, slice, k) columns of its table."""
    needs: Path
    """A file that must exist (else the data set is skipped)."""
    make: Callable[[Path, argparse.Namespace], Prepared]


@dataclass
class Prepared:
    folder: Path
    embeddings: Path | None = None
    shop: Shop | None = None
    notes: list[str] = field(default_factory=list)


def _movielens(protocol: str) -> Callable[[Path, argparse.Namespace], Prepared]:
    def make(root: Path, args: argparse.Namespace) -> Prepared:
        folder = prepare(SHARED / "ml-latest-small" / "ratings.csv", root / "prepare",
                         PrepareConfig(protocol=protocol, seed=args.seed,
                                       columns={"userId": "user_id", "movieId": "item_id"}))
        return Prepared(folder)

    return make


def _shop(images: str) -> Callable[[Path, argparse.Namespace], Prepared]:
    def make(root: Path, args: argparse.Namespace) -> Prepared:
        made = prepared_shop(root, images, str(SHARED / "fashion-mnist"),
                             ShopConfig(seed=args.seed), 15, args.device, args.seed)
        ids = made.shop.catalog["item_id"].to_numpy().astype(str)
        embeddings = write_vectors(ids, made.h.numpy(), root / "embeddings.parquet",
                                   {"model": "simclr"})
        return Prepared(made.folder, embeddings, made.shop, [
            f"SimCLR h: 15 epochs on {len(ids):,} images in {made.simclr_seconds:.0f} s"])

    return make


DATASETS = {
    "ml-temporal": Dataset("ml-temporal", [("recall", "all", 20), ("ndcg", "all", 20)],
                           SHARED / "ml-latest-small" / "ratings.csv", _movielens("temporal")),
    "ml-holdout": Dataset("ml-holdout", [("recall", "all", 20), ("recall_capped", "all", 50)],
                          SHARED / "ml-latest-small" / "ratings.csv",
                          _movielens("holdout_users")),
    "photo-shop": Dataset("photo-shop", [("recall", "all", 50), ("recall", "warm", 50),
                                         ("recall", "cold", 50)],
                          SHARED / "fashion-mnist" / "t10k-images-idx3-ubyte.gz",
                          _shop("fashion-mnist")),
    "procedural-shop": Dataset("procedural-shop", [("recall", "all", 50), ("recall", "warm", 50),
                                                   ("recall", "cold", 50)],
                               Path(__file__), _shop("procedural")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the split or shop, SimCLR and every model")
    parser.add_argument("--tune", type=float, default=None, metavar="MINUTES",
                        help="search the two-tower settings this long first (twotower tune) "
                             "and write benchmarks/tuned/<data>.toml")
    parser.add_argument("--trials", type=int, default=60, help="most trials of --tune")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"seed {args.seed}", flush=True)
    for name in args.data:
        data = DATASETS[name]
        if not data.needs.is_file():
            print(f"\n{name}: skipped, {data.needs} is absent")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _bench(data, Path(tmp), args)


def _bench(data: Dataset, root: Path, args: argparse.Namespace) -> None:
    prepared = data.make(root, args)
    k = max(k for _, _, k in data.metrics)
    base = TrainTwoTowerConfig(
        run_dir=str(root / "runs"), name=data.name.replace("-", "_"),
        prepared=str(prepared.folder),
        embeddings=None if prepared.embeddings is None else str(prepared.embeddings),
        new_products=False, device=args.device,
        train=TrainConfig(val_k=k, seed=args.seed, device=args.device))
    tuned_file = TUNED / f"{data.name}.toml"
    if args.tune is not None:
        _search(base, tuned_file, args)
    valid, test = (load_queries(prepared.folder, split) for split in ("valid", "test"))
    scorers: dict[str, Scorer] = {"popularity": PopularityScorer.from_queries(test)}
    l2 = _pick(EASE_L2, lambda lam: EASEScorer.from_prepared(prepared.folder, l2=lam), valid, k)
    scorers["EASE"] = EASEScorer.from_prepared(prepared.folder, l2=l2)
    ials = _pick(IALS_GRID, lambda c: IALSScorer.from_prepared(prepared.folder, config=c),
                 valid, k)
    scorers["iALS"] = IALSScorer.from_prepared(prepared.folder, config=ials)
    notes = [*prepared.notes, f"EASE λ = {l2:g}; iALS factors {ials.factors}, regularization "
             f"{ials.regularization:g}, alpha {ials.alpha:g} (picked on {len(valid)} validation "
             f"users by recall@{k})"]
    models = {
        "two-tower previous": dataclasses.replace(PREVIOUS, val_k=k, seed=args.seed,
                                                  device=args.device),
        "two-tower sampled": dataclasses.replace(base.train, softmax="sampled"),
        "two-tower default": base.train,
    }
    if tuned_file.is_file():
        models["two-tower tuned"] = dataclasses.replace(
            _tuned(tuned_file), val_k=k, seed=args.seed, device=args.device)
    else:
        notes.append(f"no {tuned_file.relative_to(TUNED.parents[1])}: run with --tune")
    embeddings = read_vectors(prepared.embeddings) if prepared.embeddings else None
    for label, train in models.items():
        start = time.perf_counter()
        result = fit(prepared.folder, train, embeddings=embeddings, progress=False)
        notes.append(f"{label}: {len(result.history)} epochs in "
                     f"{time.perf_counter() - start:.0f} s, best epoch {result.best_epoch}")
        vectors = result.model.item_vectors().float().numpy()[:len(test.item_ids)]
        scorers[label] = VectorScorer(
            index=ItemIndex.build(vectors, test.item_ids, "flat", device="cpu"),
            user_vectors=user_vectors_for(result.model, train.max_history))
    if prepared.shop is not None:
        scorers["oracle P(i|u)"] = ShopOracle(prepared.shop, test_window(prepared.folder))
    table = evaluate(test, scorers, ks=sorted({k for _, _, k in data.metrics}),
                     n_boot=args.n_boot, seed=args.seed, reference="EASE")
    _report(data, table, test, notes, args.markdown)


def _pick(grid, make, valid: EvalQueries, k: int):
    """The grid point whose scorer has the best validation recall@k."""
    def recall(point) -> float:
        table = evaluate(valid, {"x": make(point)}, ks=(k,), n_boot=0)
        return float(table.query("slice == 'all' and metric == 'recall'")["value"].iloc[0])

    return max(grid, key=recall)


def _search(base: TrainTwoTowerConfig, out: Path, args: argparse.Namespace) -> None:
    """`twotower tune` on the validation users; the best settings → `out` (the train table
    of a train_two_tower config file, which `twotower train_two_tower --config` reads)."""
    start = time.perf_counter()
    summary = tune(TuneConfig(base=base, n_trials=args.trials, timeout_minutes=args.tune,
                              seed=args.seed))
    best = tomllib.loads(Path(summary["files"]["best"]).read_text())
    train = best["train_two_tower"]["train"]
    for key in ("seed", "val_k"):  # the benchmark sets these per run
        train.pop(key, None)
    head = (f"# benchmarks/bench_two_tower.py --data {out.stem} --tune {args.tune:g}: "
            f"{summary['trials']} in {(time.perf_counter() - start) / 60:.0f} min; best "
            f"validation recall@{base.train.val_k} {summary['best_value']:.4f}\n")
    out.parent.mkdir(exist_ok=True)
    out.write_text(head + tomli_w.dumps({"train_two_tower": {"train": train}}))
    print(f"tuned settings → {out}", flush=True)


def _tuned(path: Path) -> TrainConfig:
    """The TrainConfig of a train_two_tower config file."""
    return parse_config(TrainTwoTowerConfig,
                        stage_argv("train_two_tower", TrainTwoTowerConfig, path)).train


def _report(data: Dataset, table: pd.DataFrame, test: EvalQueries, notes: list[str],
            markdown: bool) -> None:
    def row_of(scorer: str, metric: str, slice_name: str, k: int) -> pd.Series | None:
        rows = table[(table["scorer"] == scorer) & (table["metric"] == metric)
                     & (table["slice"] == slice_name) & (table["k"] == k)]
        return rows.iloc[0] if len(rows) else None

    header = ["scorer"]
    for metric, slice_name, k in data.metrics:
        name = f"{metric}@{k}" if slice_name == "all" else f"{slice_name} {metric}@{k}"
        header += [name, "vs EASE"]
    rows = [header]
    for scorer in pd.unique(table["scorer"]):
        cells = [scorer]
        for metric, slice_name, k in data.metrics:
            row = row_of(scorer, metric, slice_name, k)
            if row is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{row['value']:.4f} [{row['low']:.4f}, {row['high']:.4f}]")
            cells.append("-" if scorer == "EASE" else _versus(row))
        rows.append(cells)
    users = {s: int(table[table["slice"] == s]["users"].max())
             for s in ("all", "warm", "cold") if (table["slice"] == s).any()}
    print(f"\n{data.name}: {len(test):,} test users {users}, {len(test.item_ids):,} items")
    for note in notes:
        print(f"  {note}")
    print_tables(rows, markdown)


def _versus(row: pd.Series) -> str:
    """The paired difference to EASE with its interval, and what it says."""
    verdict = ("tie" if row["diff_low"] <= 0 <= row["diff_high"]
               else "better" if row["diff_low"] > 0 else "worse")
    return f"{row['diff']:+.4f} [{row['diff_low']:+.4f}, {row['diff_high']:+.4f}] {verdict}"


if __name__ == "__main__":
    main()
