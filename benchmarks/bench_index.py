"""Side by side: build time, queries/s and recall@100 of the ItemIndex kinds on one catalog.

One run builds every index kind of `twotower.index.ItemIndex` on the same synthetic catalog
and searches the same queries with `index.search(queries, 100)`:

    flat     exact search on CPU (faiss IndexFlat, inner product): the reference. Its top-100
             is what recall is measured against, and its queries/s is the 1.00x of the ratio
             column.
    ivf      inverted lists, default nlist ≈ 4·√N, swept over nprobe.
    ivfpq    the same lists with product-quantized codes (default m = d/4, 8 bits), swept over
             nprobe.
    hnsw     an HNSW graph (default M=32, ef_construction=80), swept over ef_search.
    flat on the GPU, when torch sees CUDA (--device auto or cuda): `ItemIndex.build(...,
             device="cuda")`, i.e. torch chunked matmul + top-k (or faiss-gpu if installed),
             with its achieved TFLOP/s, 2·N·Q·d / time, against the GPU's float32 matmul peak.

Catalog and queries: --centres Gaussian cluster centres (default N/500, so 2,000 for 1M
items), uniform on the unit sphere; each vector is a uniformly chosen centre plus isotropic
Gaussian noise of expected norm --noise (default 1, as long as the centre), then L2-normalized.
Queries are drawn the same way but are not items. Everything is seeded (--seed).

Each kind is built once (build time: the whole `ItemIndex.build` call, normalizing copy,
k-means training and adding); the search-time parameter is then changed in place for each
setting (`ItemIndex.set_search_params`). queries/s is Q divided by
the median of --repeats searches of all Q queries, after a warm-up search of a few. recall@100
is the mean over queries of |found ∩ exact| / 100. The last lines say whether a setting
reaches the target: recall@100 >= 0.95 at >= 10x the exact CPU queries/s.

    python benchmarks/bench_index.py --markdown                   # 1M items, 10k queries
    python benchmarks/bench_index.py --items 20000 --queries 500  # a quick check
    python benchmarks/bench_index.py --kinds ivf hnsw --nprobe 8 16 --ef-search 256 512
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import twotower` uninstalled

from benchmarks.args import positive
from benchmarks.machine import cpu_model, gpu_peak_tflops
from benchmarks.tables import markdown_table, plain_table
from twotower.index import KINDS, ItemIndex, default_params

SWEPT = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}
"""The search-time parameter swept for each approximate kind."""
WARMUP_QUERIES = 100
BLOCK = 1 << 16  # vectors generated at a time
ITEMS_PER_CENTRE = 500  # default --centres: the same cluster sizes at every --items
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0


@dataclass(frozen=True)
class Row:
    """One measured (kind, device, setting)."""

    kind: str
    device: str  # e.g. "cpu (faiss)", "cuda (torch)"
    params: str  # build-time parameters
    search: str  # the search-time parameter, "-" for flat
    build_s: float
    qps: float
    recall: float
    tflops: float | None = None  # achieved 2·N·Q·d / time, GPU rows only


# ---------------------------------------------------------------------------------------------
# Data and measurement.


def clustered_vectors(centres: np.ndarray, count: int, noise: float,
                      rng: np.random.Generator) -> np.ndarray:
    """(count, d) float32 unit rows: a uniformly drawn centre + noise of expected norm `noise`.

    centres (C, d) unit rows. Generated in blocks so float32 is all that is ever held.
    """
    dim = centres.shape[1]
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, BLOCK):
        stop = min(count, start + BLOCK)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= noise / np.sqrt(dim)
        block += centres[rng.integers(0, len(centres), stop - start)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def unit_centres(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(count, d) float32 points uniform on the unit sphere."""
    centres = rng.standard_normal((count, dim), dtype=np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_q ∩ exact_q| / k.

    found, exact: (Q, k) non-negative integer ids, unique within a row.
    """
    q, k = exact.shape
    span = int(max(found.max(), exact.max())) + 1
    offset = np.arange(q, dtype=np.int64)[:, None] * span  # one key range per query
    hits = np.isin(found.astype(np.int64) + offset, exact.astype(np.int64) + offset)
    return float(hits.sum()) / (q * k)


def timed_search(index: ItemIndex, queries: np.ndarray, k: int,
                 repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds to search all queries, (Q, k) ids found), after a warm-up search."""
    index.search(queries[:WARMUP_QUERIES], k)
    times, ids = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        times.append(time.perf_counter() - start)
    return statistics.median(times), ids


def timed_build(vectors: np.ndarray, ids: np.ndarray, kind: str, device: str,
                **params: int) -> tuple[float, ItemIndex]:
    start = time.perf_counter()
    index = ItemIndex.build(vectors, ids, kind, device=device, progress=sys.stderr.isatty(),
                            **params)
    return time.perf_counter() - start, index


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe(index: ItemIndex) -> str:
    """Where an index searches: "cpu (faiss)", "cuda (torch)", "cuda (faiss-gpu)"."""
    where = "cpu" if index.engine == "faiss" else "cuda"
    return f"{where} ({index.engine})"


def build_params(index: ItemIndex) -> str:
    swept = SWEPT.get(index.kind)
    return " ".join(f"{k}={v}" for k, v in index.params.items() if k != swept) or "-"


# ---------------------------------------------------------------------------------------------
# The kinds.


def measure_reference(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                      args: argparse.Namespace) -> tuple[Row, np.ndarray]:
    """Exact CPU search: its row and its (Q, k) ids, the reference for recall."""
    progress("building flat (cpu)")
    build_s, index = timed_build(vectors, ids, "flat", "cpu")
    progress(f"searching flat (cpu): {len(queries)} queries x {args.repeats}")
    seconds, exact = timed_search(index, queries, args.k, args.repeats)
    row = Row("flat", describe(index), "-", "-", build_s, len(queries) / seconds, 1.0)
    return row, exact


def measure_swept(kind: str, values: Sequence[int], vectors: np.ndarray, ids: np.ndarray,
                  queries: np.ndarray, exact: np.ndarray, args: argparse.Namespace) -> list[Row]:
    """Build `kind` once on CPU, then one row per value of its search-time parameter."""
    params = {"ivf": {"nlist": args.nlist}, "ivfpq": {"nlist": args.nlist},
              "hnsw": {"M": args.hnsw_m, "ef_construction": args.ef_construction}}[kind]
    params = {k: v for k, v in params.items() if v is not None}
    name = SWEPT[kind]
    if name == "nprobe":  # build with a valid nprobe; each setting below replaces it
        nlist = params.get("nlist", default_params(kind, len(vectors), vectors.shape[1])["nlist"])
        if any(v > nlist for v in values):
            progress(f"{kind}: skipping nprobe above nlist={nlist}")
        values = [v for v in values if v <= nlist] or [nlist]
        params["nprobe"] = min(values)
    progress(f"building {kind} (cpu) {params}")
    build_s, index = timed_build(vectors, ids, kind, "cpu", **params)
    progress(f"built {kind} in {build_s:.1f} s: {index.params}")
    rows = []
    for value in values:
        index.set_search_params(**{name: value})
        progress(f"searching {kind} {name}={value}: {len(queries)} queries x {args.repeats}")
        seconds, found = timed_search(index, queries, args.k, args.repeats)
        rows.append(Row(kind, describe(index), build_params(index), f"{name}={value}", build_s,
                        len(queries) / seconds, recall_at_k(found, exact)))
    return rows


def measure_gpu(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, exact: np.ndarray,
                args: argparse.Namespace) -> tuple[Row, str]:
    """Exact search on the GPU, ItemIndex.build(..., "flat", device="cuda"): (row, engine)."""
    progress("building flat (cuda)")
    build_s, index = timed_build(vectors, ids, "flat", "cuda")
    torch.cuda.synchronize()
    progress(f"searching flat ({describe(index)}): {len(queries)} queries x {args.repeats}")
    seconds, found = timed_search(index, queries, args.k, args.repeats)
    flops = 2 * len(vectors) * len(queries) * vectors.shape[1]  # the (Q, d) x (d, N) scores
    row = Row("flat", describe(index), "-", "-", build_s, len(queries) / seconds,
              recall_at_k(found, exact), tflops=flops / seconds / 1e12)
    engine = index.engine
    del index
    torch.cuda.empty_cache()
    return row, engine


def gpu_peak(engine: str, device_name: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, what it is) for a float32 flat search on the GPU."""
    dtype = "float32"
    if engine == "torch" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"
    if override is not None:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    peak = gpu_peak_tflops(device_name, dtype)
    if peak is None:
        return None, f"n/a: {device_name} not in benchmarks/machine.py (pass --peak-tflops)"
    return peak, f"{peak:g} TFLOP/s {dtype} dense ({device_name})"


# ---------------------------------------------------------------------------------------------
# The report.


def table(rows: list[Row], exact_qps: float, k: int, peak: float | None) -> list[list[str]]:
    gpu = any(r.tflops is not None for r in rows)
    header = ["kind", "device", "build params", "search", "build s", "queries/s",
              "x exact cpu", f"recall@{k}"]
    if gpu:
        header += ["TFLOP/s", "% peak"]
    out = [header]
    for r in rows:
        line = [r.kind, r.device, r.params, r.search, f"{r.build_s:.1f}", f"{r.qps:,.0f}",
                f"{r.qps / exact_qps:.2f}", f"{r.recall:.4f}"]
        if gpu:
            if r.tflops is None:
                line += ["-", "-"]
            else:
                percent = "n/a" if peak is None else f"{100 * r.tflops / peak:.3g}"
                line += [f"{r.tflops:.3g}", percent]
        out.append(line)
    return out


def verdict(rows: list[Row], exact_qps: float, k: int) -> str:
    """Whether a CPU setting has recall@k >= TARGET_RECALL at >= TARGET_SPEEDUP x exact CPU."""
    prefix = (f"target (cpu): recall@{k} >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:g}x exact "
              "cpu queries/s")
    approximate = [r for r in rows if r.kind != "flat" and r.device.startswith("cpu")]
    meeting = [r for r in approximate
               if r.recall >= TARGET_RECALL and r.qps >= TARGET_SPEEDUP * exact_qps]
    if meeting:
        best = max(meeting, key=lambda r: r.qps)
        return (f"{prefix}: {len(meeting)} setting(s); fastest {best.kind} {best.params} "
                f"{best.search}: recall {best.recall:.4f} at {best.qps / exact_qps:.1f}x -> HOLDS")
    if not approximate:
        return f"{prefix}: not measured (no approximate kind in --kinds)"
    accurate = [r for r in approximate if r.recall >= TARGET_RECALL]
    if not accurate:
        return f"{prefix}: no setting reached recall {TARGET_RECALL} -> FAILS"
    best = max(accurate, key=lambda r: r.qps)
    return (f"{prefix}: fastest with the recall is {best.kind} {best.params} {best.search} at "
            f"{best.qps / exact_qps:.1f}x -> FAILS")


def resolve_gpu(requested: str) -> bool:
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return requested != "cpu" and cuda


def report(args: argparse.Namespace) -> None:
    if args.k > args.items:
        raise SystemExit(f"--k {args.k} exceeds --items {args.items}")
    gpu = resolve_gpu(args.device)
    centre_rng, item_rng, query_rng = (np.random.default_rng(s)
                                       for s in np.random.SeedSequence(args.seed).spawn(3))
    progress(f"generating {args.items:,} items and {args.queries:,} queries, d={args.dim}")
    centres = unit_centres(args.centres, args.dim, centre_rng)
    vectors = clustered_vectors(centres, args.items, args.noise, item_rng)
    queries = clustered_vectors(centres, args.queries, args.noise, query_rng)
    ids = np.arange(args.items, dtype=np.int64)

    reference, exact = measure_reference(vectors, ids, queries, args)
    rows = [reference]
    gc.collect()
    sweeps = {"ivf": args.nprobe, "ivfpq": args.nprobe, "hnsw": args.ef_search}
    for kind in (k for k in KINDS if k in args.kinds and k != "flat"):
        rows += measure_swept(kind, sweeps[kind], vectors, ids, queries, exact, args)
        gc.collect()  # one index in memory at a time
    peak, peak_text = None, ""
    if gpu:
        row, engine = measure_gpu(vectors, ids, queries, exact, args)
        rows.append(row)
        peak, peak_text = gpu_peak(engine, torch.cuda.get_device_name(), args.peak_tflops)

    print(f"ItemIndex build time, queries/s of search(queries, {args.k}) and recall@{args.k} "
          "against exact search")
    print(f"data: {args.items:,} items and {args.queries:,} queries, d={args.dim}: "
          f"{args.centres:,} Gaussian centres on the unit sphere + noise of norm {args.noise:g}, "
          f"normalized (seed {args.seed})")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} OpenMP threads); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print("gpu: " + (torch.cuda.get_device_name() if gpu else
                     f"not run (--device {args.device}; torch.cuda.is_available() is "
                     f"{torch.cuda.is_available()})"))
    print(f"time: median of {args.repeats} searches of all queries after a warm-up on "
          f"{WARMUP_QUERIES}; each kind built once, its search parameter then set in place")
    rows_text = table(rows, reference.qps, args.k, peak)
    print("\n" + plain_table(rows_text))
    if gpu:
        print(f"TFLOP/s: 2*N*Q*d / search time (the score matmul only; the time also holds "
              f"top-k and host copies); % peak against {peak_text}")
    print("\n" + verdict(rows, reference.qps, args.k))
    if args.markdown:
        print("\n" + markdown_table(rows_text))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=positive, default=1_000_000, help="catalog size N")
    parser.add_argument("--queries", type=positive, default=10_000, help="query count Q")
    parser.add_argument("--dim", type=positive, default=128, help="vector dimension d")
    parser.add_argument("--k", type=positive, default=100, help="top-k searched and scored")
    parser.add_argument("--centres", type=positive,
                        help=f"Gaussian cluster centres (default N/{ITEMS_PER_CENTRE}, at least 1)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="expected norm of the noise added to a unit centre (default 1.0)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="index kinds (flat on CPU always runs: it is the reference)")
    parser.add_argument("--nlist", type=positive, help="ivf/ivfpq lists (default ≈ 4·√N)")
    parser.add_argument("--nprobe", type=positive, nargs="+", default=[2, 4, 8, 16, 32, 64, 128],
                        help="ivf/ivfpq nprobe settings")
    parser.add_argument("--hnsw-m", type=positive, help="hnsw M (default 32)")
    parser.add_argument("--ef-construction", type=positive, help="hnsw ef_construction (80)")
    parser.add_argument("--ef-search", type=positive, nargs="+", default=[128, 256, 512, 1024],
                        help="hnsw ef_search settings")
    parser.add_argument("--repeats", type=positive, default=3, help="timed searches per setting")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto/cuda: also exact search on the GPU; cpu: CPU rows only")
    parser.add_argument("--peak-tflops", type=float,
                        help="GPU float32 matmul peak (default: from benchmarks/machine.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    args = parser.parse_args(argv)
    if args.noise < 0:
        parser.error(f"--noise must be >= 0, got {args.noise}")
    if args.centres is None:
        args.centres = max(1, args.items // ITEMS_PER_CENTRE)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    report(parse_args(argv))


if __name__ == "__main__":
    main()
