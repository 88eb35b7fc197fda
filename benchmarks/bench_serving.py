"""Serving speed side by side: the ItemIndex kinds against brute-force numpy.

Index part: at each catalog size N (--sizes, default 10k, 100k and 1M products, d=64), every
kind in --kinds (flat, ivf, hnsw by default, each with its `default_params`) is built on the
same vectors and searched two ways with k=100, beside a brute-force numpy reference:

    numpy    `users @ items.T` in chunks of at most 2^24 scores, `argpartition` for the k
             best, then a sort of those k: the reference of the ratio columns
    flat     exact faiss search (IndexFlat, inner product): the reference for recall
    ivf      inverted lists (nlist ≈ 4·√N, nprobe ≈ √nlist)
    hnsw     an HNSW graph (M=32, ef_construction=80, ef_search=128)

- one query: --single queries searched one at a time (`index.search(q[None], k)`), each timed
  with `time.perf_counter` after --warmup untimed ones; p50 and p99 of those times.
- batch: `index.search(users, k)` on --users queries at once; users/s is the user count over
  the median of --repeats timed searches, after a warm-up search of --warmup users.
- recall@k of the batch's answers against flat's (exact) answers.
- "x numpy" columns: numpy's time over the implementation's (above 1: faster than numpy).

The catalog is benchmarks/bench_index.py's: N/500 Gaussian centres uniform on the unit sphere,
each vector a uniformly drawn centre plus noise of expected norm --noise, normalized; users are
drawn the same way and are not items. Seeded per size from --seed.

--threads N sets torch's and faiss's CPU threads as `twotower --threads N` does
(`pipelines.runtime.set_threads`) and numpy's BLAS threads to the same N (threadpoolctl);
without it every library keeps its default. The header reports all three.

    python benchmarks/bench_serving.py --markdown                  # 10k, 100k and 1M products
    python benchmarks/bench_serving.py --sizes 10000 --single 200  # a quick check
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import twotower` uninstalled

from benchmarks.args import positive
from benchmarks.bench_index import (
    ITEMS_PER_CENTRE,
    clustered_vectors,
    progress,
    recall_at_k,
    unit_centres,
)
from benchmarks.machine import cpu_model
from benchmarks.tables import print_tables
from pipelines.runtime import set_threads
from twotower.index import KINDS, ItemIndex

NUMPY_SCORES = 1 << 24  # numpy reference: at most this many (user, item) scores at once
SERVED_KINDS = ("flat", "ivf", "hnsw")
"""The kinds measured by default: exact, and the two approximate kinds a retriever serves."""

Search = Callable[[np.ndarray], np.ndarray]
"""(Q, d) float32 queries -> (Q, k) item ids, best first."""


@dataclass(frozen=True)
class IndexRow:
    """One implementation measured at one catalog size."""

    size: int
    impl: str  # "numpy" or an ItemIndex kind
    params: str
    build_s: float | None  # None for numpy, which builds nothing
    p50_ms: float
    p99_ms: float
    users_per_s: float
    recall: float  # against flat (numpy: a check that the two exact answers agree)


# ---------------------------------------------------------------------------------------------
# Data and the numpy reference.


def catalog(size: int, users: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(size, d) unit item vectors and (users, d) unit user vectors from the same clusters."""
    centre_rng, item_rng, user_rng = (np.random.default_rng(s) for s in
                                      np.random.SeedSequence([args.seed, size]).spawn(3))
    centres = unit_centres(max(1, size // ITEMS_PER_CENTRE), args.dim, centre_rng)
    return (clustered_vectors(centres, size, args.noise, item_rng),
            clustered_vectors(centres, users, args.noise, user_rng))


def numpy_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) rows of the k largest `queries @ items.T` per query, best first.

    items (N, d), queries (Q, d). Queries go in chunks of at most NUMPY_SCORES scores.
    """
    chunk = max(1, NUMPY_SCORES // len(items))
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ items.T  # (chunk, N)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (chunk, k), unordered
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        out[start:start + chunk] = np.take_along_axis(top, order, 1)
    return out


# ---------------------------------------------------------------------------------------------
# Measurement.


def one_query_ms(search: Search, queries: np.ndarray, warmup: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of `search` on one query at a time, after `warmup` untimed."""
    for query in queries[:warmup]:
        search(query[None])
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99])
    return 1e3 * float(p50), 1e3 * float(p99)


def batch_run(search: Search, users: np.ndarray, warmup: int,
              repeats: int) -> tuple[float, np.ndarray]:
    """(users/s over the median of `repeats` searches of all users, their (Q, k) ids)."""
    search(users[:warmup])
    times, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        found = search(users)
        times.append(time.perf_counter() - start)
    return len(users) / statistics.median(times), found


def measure(size: int, impl: str, params: str, build_s: float | None, search: Search,
            vectors: tuple[np.ndarray, np.ndarray],
            args: argparse.Namespace) -> tuple[IndexRow, np.ndarray]:
    """One row, its recall still unset (NaN), and the batch's (Q, k) answer.

    vectors: (single queries, batch users).
    """
    single, users = vectors
    progress(f"N={size:,} {impl}: {len(single)} single queries, then {len(users):,} users")
    p50, p99 = one_query_ms(search, single, args.warmup)
    rate, found = batch_run(search, users, args.warmup, args.repeats)
    return IndexRow(size, impl, params, build_s, p50, p99, rate, float("nan")), found


def measure_kind(kind: str, items: np.ndarray, vectors: tuple[np.ndarray, np.ndarray],
                 args: argparse.Namespace) -> tuple[IndexRow, np.ndarray]:
    """Build `kind` with its default parameters on CPU, then measure it."""
    progress(f"N={len(items):,}: building {kind}")
    start = time.perf_counter()
    index = ItemIndex.build(items, np.arange(len(items)), kind, device="cpu",
                            progress=sys.stderr.isatty())
    build_s = time.perf_counter() - start
    params = " ".join(f"{k}={v}" for k, v in index.params.items()) or "-"
    return measure(len(items), kind, params, build_s, lambda q: index.search(q, args.k)[1],
                   vectors, args)


def measure_size(size: int, args: argparse.Namespace) -> list[IndexRow]:
    """numpy and every kind at one catalog size, recall against flat (else numpy)."""
    progress(f"N={size:,}: generating {size:,} items, {args.single + args.users:,} users")
    items, users = catalog(size, args.single + args.users, args)
    vectors = (users[:args.single], users[args.single:])
    measured = [measure(size, "numpy", f"chunk {max(1, NUMPY_SCORES // size):,}", None,
                        lambda q: numpy_top_k(items, q, args.k), vectors, args)]
    for kind in (k for k in KINDS if k in args.kinds):
        measured.append(measure_kind(kind, items, vectors, args))
        gc.collect()  # one index in memory at a time
    exact = next((found for row, found in measured if row.impl == "flat"), measured[0][1])
    return [replace(row, recall=recall_at_k(found, exact)) for row, found in measured]


# ---------------------------------------------------------------------------------------------
# The report.


def index_table(rows: list[IndexRow], k: int) -> list[list[str]]:
    """One line per (size, implementation), ratios against numpy at the same size."""
    numpy_rows = {r.size: r for r in rows if r.impl == "numpy"}
    out = [["N", "impl", "params", "build s", "1-query p50 ms", "p99 ms", "p50 x numpy",
            "p99 x numpy", "batch users/s", "batch x numpy", f"recall@{k}"]]
    for r in rows:
        ref = numpy_rows[r.size]
        out.append([f"{r.size:,}", r.impl, r.params,
                    "-" if r.build_s is None else f"{r.build_s:.1f}",
                    f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{ref.p50_ms / r.p50_ms:.2f}",
                    f"{ref.p99_ms / r.p99_ms:.2f}", f"{r.users_per_s:,.0f}",
                    f"{r.users_per_s / ref.users_per_s:.2f}", f"{r.recall:.4f}"])
    return out


def blas_threads() -> str:
    """numpy's BLAS library and its thread count, as threadpoolctl sees them."""
    blas = [f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)"
            for p in threadpool_info() if p["user_api"] == "blas"]
    return ", ".join(blas) or "unknown"


def print_header(args: argparse.Namespace) -> None:
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; --threads "
          f"{args.threads or 'not given (library defaults)'}: torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} OpenMP threads), numpy {np.__version__} "
          f"BLAS {blas_threads()}")


def report_index(args: argparse.Namespace) -> None:
    rows = [row for size in args.sizes for row in measure_size(size, args)]
    print(f"\nItemIndex search(queries, {args.k}) on CPU beside brute-force numpy "
          f"(matmul + argpartition)")
    print(f"data: d={args.dim}, N/{ITEMS_PER_CENTRE} Gaussian centres + noise of norm "
          f"{args.noise:g}, normalized (seed {args.seed}); one query: {args.single:,} queries "
          f"one at a time after {args.warmup} untimed; batch: {args.users:,} users at once, "
          f"median of {args.repeats}; recall@{args.k} against flat")
    print()
    print_tables(index_table(rows, args.k), args.markdown)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive, nargs="+",
                        default=[10_000, 100_000, 1_000_000], help="catalog sizes N")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(SERVED_KINDS),
                        help="ItemIndex kinds (flat, first, is the reference for recall)")
    parser.add_argument("--dim", type=positive, default=64, help="vector dimension d")
    parser.add_argument("--k", type=positive, default=100, help="items per query")
    parser.add_argument("--single", type=positive, default=1000,
                        help="queries timed one at a time (p50, p99)")
    parser.add_argument("--users", type=positive, default=10_000, help="users in the batch")
    parser.add_argument("--warmup", type=positive, default=20,
                        help="untimed single queries, and users in the batch warm-up")
    parser.add_argument("--repeats", type=positive, default=3, help="timed batch searches")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="expected norm of the noise added to a unit centre (default 1.0)")
    parser.add_argument("--threads", type=positive,
                        help="torch, faiss and numpy BLAS threads (default: their own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown too")
    args = parser.parse_args(argv)
    if args.noise < 0:
        parser.error(f"--noise must be >= 0, got {args.noise}")
    if args.k > min(args.sizes):
        parser.error(f"--k {args.k} exceeds the smallest size {min(args.sizes)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        print_header(args)
        report_index(args)


if __name__ == "__main__":
    main()
