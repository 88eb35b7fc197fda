"""Serving speed side by side: ItemIndex against numpy, Retriever against exact search,
HTTP against in-process, on CPU. Three parts (--parts, default all):

index: at each catalog size N (--sizes, default 10k, 100k and 1M products, d=64), every kind
in --kinds (flat, ivf, hnsw, each with its `default_params`) is built on the same vectors and
searched with k=100 beside a brute-force numpy reference:

    numpy    `users @ items.T` in chunks of at most 2^24 scores, `argpartition` for the k
             best, then a sort of those k: the reference of the "x numpy" columns
    flat     exact faiss search (IndexFlat, inner product): the reference for recall
    ivf      inverted lists (nlist ≈ 4·√N, nprobe ≈ √nlist)
    hnsw     an HNSW graph (M=32, ef_construction=80, ef_search=128)

  The catalog is benchmarks/bench_index.py's: N/500 Gaussian centres uniform on the unit
  sphere, each vector a uniformly drawn centre plus noise of expected norm --noise,
  normalized; users are drawn the same way and are not items. Seeded per size from --seed.

retriever: `Retriever.recommend(user_ids=..., k=100)` of a trained image model serving
--retriever-size products (default 100k) from flat (the reference), ivf and hnsw. The model is
a small demo run's (`pipelines.demo` at SMALL_DEMO's size, default model settings; or
--run-dir), its catalog grown with `add_items(embeddings=h)` of new products whose h are
existing ones plus noise, then saved, and re-indexed for each kind with that kind's
`default_params` for the grown size. Users are the run's known users, cycled: each call is the
user tower's forward on the user id and training history, the index search and the exclusion
of the training items. A second pass times those phases apart. Then the `recommend` stage
(`pipelines.recommend.run`, writing Parquet) serves --memory-users users (1M) and a tenth of
them in fresh subprocesses: their peak RSS shows whether memory is bounded.

http: the same retriever logged as an MLflow model (`pipelines.retriever.log_retriever`) and
served by `mlflow models serve` on localhost; one user per POST to /invocations, sequential,
beside `Retriever.recommend` and the pyfunc's `predict` in this process on the same users.

Timing, in every part: one query (or user) at a time, --single of them, each timed with
`time.perf_counter` after --warmup untimed ones: p50 and p99. Batch: --users queries in one
call, users/s over the median of --repeats calls after a warm-up call on --warmup. Ratios are
"x reference": the reference's time over this one's (above 1: faster), except the HTTP table's,
which are this one's over in-process recommend's (the overhead).

--threads N sets torch's and faiss's CPU threads as `twotower --threads N` does
(`pipelines.runtime.set_threads`, in the stage's subprocesses too), numpy's BLAS threads to
the same N (threadpoolctl), and the server's OMP_NUM_THREADS; without it every library keeps
its default. The header reports them.

    python benchmarks/bench_serving.py --markdown                      # everything, ~25 min
    python benchmarks/bench_serving.py --parts index --sizes 10000 --single 200  # quick
    python benchmarks/bench_serving.py --parts retriever http --retriever-size 20000 \\
        --memory-users 50000 --single 200                                # quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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
from pipelines import recommend
from pipelines.retriever import log_retriever
from pipelines.runtime import set_threads
from twotower import retriever as retriever_module
from twotower.index import KINDS, ItemIndex
from twotower.inputs import load_training
from twotower.retriever import Retriever

NUMPY_SCORES = 1 << 24  # numpy reference: at most this many (user, item) scores at once
SERVED_KINDS = ("flat", "ivf", "hnsw")
"""The kinds measured by default: exact, and the two approximate kinds a retriever serves."""

Search = Callable[[np.ndarray], np.ndarray]
"""(Q, d) float32 queries, or (Q,) user ids -> (Q, k) item ids, best first."""
PARTS = ("index", "retriever", "http")
SMALL_DEMO = ["--shop.num-items", "1000", "--shop.num-users", "500",
              "--shop.num-interactions", "20000", "--pretrain.epochs", "1",
              "--train.epochs", "1", "--device", "cpu"]
"""The demo run served when no --run-dir is given: a small shop, the default model settings
(what serving costs depends on the towers' shapes, not on how well they learned)."""
NEW_H_NOISE = 0.5  # a new product's h: an existing one's plus noise of this times h's spread
TARGET_P99_MS = 5.0
TARGET_USERS_PER_S = 5_000
TARGET_MEMORY_RATIO = 1.1  # peak RSS for --memory-users at most this times that for a tenth
SERVER_START_S = 180  # the longest `mlflow models serve` may take to answer /ping
ROOT = Path(__file__).resolve().parents[1]


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


def one_query_ms(search: Callable[[np.ndarray], object], queries: np.ndarray,
                 warmup: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of `search` on one query at a time, after `warmup` untimed."""
    for row in range(min(warmup, len(queries))):
        search(queries[row:row + 1])
    times = []
    for row in range(len(queries)):
        start = time.perf_counter()
        search(queries[row:row + 1])
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
# Retriever part: a small demo's image model serving a catalog grown to --retriever-size.


@dataclass(frozen=True)
class ServeRow:
    """`Retriever.recommend` served from one index kind."""

    kind: str
    params: str
    p50_ms: float
    p99_ms: float
    users_per_s: float
    recall: float  # of the batch's recommendations against flat's
    single: dict[str, float]  # mean ms per one-user call: "tower", "search", "rest"
    batch: dict[str, float]  # the same per call of the whole batch


def small_demo(folder: Path) -> Path:
    """A demo run at SMALL_DEMO's size in `folder`, in a subprocess (its MLflow state and
    memory stay there); its image model is what is served."""
    progress(f"making a small demo run in {folder} (give --run-dir to serve a finished one)")
    subprocess.run([sys.executable, "-m", "pipelines.demo", "--run-dir", str(folder),
                    *SMALL_DEMO], stdout=sys.stderr, check=True, cwd=ROOT)
    return folder


def grown(run: Path, size: int, folder: Path, seed: int) -> Path:
    """The run's image model saved as a retriever of `size` products in `folder`.

    The products beyond the run's are new ones, `add_items(embeddings=h)`: each h is an
    existing product's plus Gaussian noise of NEW_H_NOISE times h's per-coordinate spread, so
    the catalog keeps the clusters of the real one; attributes, if the tower reads any, unknown.
    """
    retriever = Retriever.load(run, name="image")
    extra = size - len(retriever)
    if extra < 0:
        raise SystemExit(f"--retriever-size {size} is below the run's {len(retriever)} products")
    h = retriever.model.item_tower.images.cpu().numpy()  # (I, D) every product's h
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((extra, h.shape[1]), dtype=np.float32)
    new = h[rng.integers(0, len(h), extra)] + NEW_H_NOISE * h.std(axis=0) * noise
    names = retriever.model.item_tower.attribute_names
    progress(f"adding {extra:,} products to the run's {len(retriever):,}")
    retriever.add_items([f"bench-{i}" for i in range(extra)], embeddings=new,
                        attributes={name: [""] * extra for name in names})
    return retriever.save(folder)


def with_index(saved: Path, kind: str) -> Retriever:
    """The saved retriever serving from a `kind` index with `default_params` for its size.

    `add_items` rebuilds the index with the parameters it had (the small run's), so the index
    is built here over the model's item vectors and saved over the folder's (`save` puts it in
    `<folder>/index`). Returns the reloaded retriever.
    """
    if not (saved / "index" / "meta.json").is_file():
        raise SystemExit(f"{saved} has no index/ folder: Retriever.save's layout changed")
    retriever = Retriever.load(saved)
    rows = pd.Index(retriever.model.item_ids).get_indexer(retriever.item_ids)
    vectors = retriever.model.item_vectors().float().numpy()[rows]
    ItemIndex.build(vectors, retriever.item_ids, kind, device="cpu",
                    source=retriever.index.source,  # how load_retriever finds the encoder
                    progress=sys.stderr.isatty()).save(saved / "index")
    return Retriever.load(saved)


def warm_users(run: Path) -> np.ndarray:
    """The user ids of the run's prepared split with training rows: served as "user"."""
    prepared = run / "prepare"
    users = pd.read_parquet(prepared / "users.parquet", columns=["user_id", "user_index"])
    ids = users.sort_values("user_index")["user_id"].astype(str).to_numpy()
    return ids[load_training(prepared).users_warm]


def cycled(ids: np.ndarray, start: int, count: int) -> np.ndarray:
    """`count` ids from position `start` of `ids` repeated end to end."""
    return ids[np.arange(start, start + count) % len(ids)]


@contextlib.contextmanager
def phase_seconds(retriever: Retriever) -> Iterator[dict[str, float]]:
    """Seconds `recommend` spends in the user tower and in the index search, while open.

    Times `twotower.retriever.encode_users` (the user tower forward, "tower") and the
    retriever's `index.search` (search plus exclusion, "search") with wrappers.
    """
    totals = {"tower": 0.0, "search": 0.0}

    def timed(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[phase] += time.perf_counter() - start
        return wrapper

    encode = retriever_module.encode_users
    retriever_module.encode_users = timed(encode, "tower")
    retriever.index.search = timed(retriever.index.search, "search")
    try:
        yield totals
    finally:
        retriever_module.encode_users = encode
        del retriever.index.search  # the class's method again


def breakdown(retriever: Retriever, calls: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Mean milliseconds per `recommend(user_ids=call)` in the tower, the search and the rest."""
    with phase_seconds(retriever) as phases:
        start = time.perf_counter()
        for users in calls:
            retriever.recommend(user_ids=users, k=k)
        total = time.perf_counter() - start
    out = {phase: 1e3 * seconds / len(calls) for phase, seconds in phases.items()}
    return {**out, "rest": 1e3 * total / len(calls) - out["tower"] - out["search"]}


def measure_retriever(retriever: Retriever, kind: str, users: np.ndarray,
                      exact: np.ndarray | None, args: argparse.Namespace) -> tuple[ServeRow,
                                                                                   np.ndarray]:
    """One-user latency, batch throughput and their breakdowns; the batch's answer as (Q, k)
    codes of the sorted product ids.

    exact: flat's answer in those codes, None when this is flat.
    """
    single, batch = cycled(users, 0, args.single), cycled(users, args.single, args.users)
    progress(f"recommend from {kind}: {len(single)} single users, then {len(batch):,} at once")

    def serve(ids: np.ndarray) -> np.ndarray:
        return retriever.recommend(user_ids=ids, k=args.k).item_ids

    p50, p99 = one_query_ms(serve, single, args.warmup)
    rate, found = batch_run(serve, batch, args.warmup, args.repeats)
    vocabulary = pd.Index(np.sort(retriever.item_ids))  # the same codes for every kind
    rows = vocabulary.get_indexer(found.ravel()).reshape(found.shape)
    params = " ".join(f"{k}={v}" for k, v in retriever.index.params.items()) or "-"
    row = ServeRow(kind, params, p50, p99, rate,
                   1.0 if exact is None else recall_at_k(rows, exact),
                   breakdown(retriever, [single[i:i + 1] for i in range(len(single))], args.k),
                   breakdown(retriever, [batch], args.k))
    return row, rows


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: /proc's VmHWM.

    Not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's peak, VmHWM at zero.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def histories_file(users: np.ndarray, count: int, path: Path) -> Path:
    """A users Parquet for the recommend stage: `count` known user ids, no histories given."""
    ids = cycled(users, 0, count)
    pq.write_table(pa.table({"user_id": pa.array(ids, pa.string()),
                             "history": pa.nulls(count, pa.list_(pa.string()))}), path)
    return path


def stage_child(saved: Path, users: Path, args: argparse.Namespace) -> None:
    """In a fresh process: the recommend stage on a saved retriever; print JSON."""
    out = users.with_name(f"{users.stem}_recommendations.parquet")
    start = time.perf_counter()
    summary = recommend.run(recommend.RecommendConfig(
        run_dir=str(saved), users=str(users), k=args.k, chunk_size=args.chunk, device="cpu",
        out=str(out)))
    seconds = time.perf_counter() - start
    print(json.dumps({"users": summary["users"], "seconds": seconds,
                      "peak_mib": peak_rss_mib(), "file_mib": out.stat().st_size / 2**20}))
    out.unlink()


def stage_run(saved: Path, users: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`stage_child` in a subprocess with this run's --threads, --k and --chunk."""
    progress(f"recommend stage on {users.name} in a subprocess, {args.chunk:,} users a chunk")
    command = [sys.executable, __file__, "--child-stage", str(saved), str(users),
               "--k", str(args.k), "--chunk", str(args.chunk)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# HTTP part: the retriever as an MLflow model behind `mlflow models serve`.


@dataclass(frozen=True)
class HttpRow:
    """One-user latency of one way of asking the same retriever."""

    kind: str
    path: str
    p50_ms: float
    p99_ms: float


def logged_model(saved: Path, store: Path) -> str:
    """The saved retriever logged as an MLflow model (`log_retriever`) to a SQLite store in
    `store`, which becomes the tracking URI; the model's runs:/ URI."""
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("bench_serving")
    with mlflow.start_run():
        return log_retriever(saved)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(uri: str, log: Path, threads: int | None) -> Iterator[str]:
    """`mlflow models serve -m uri --env-manager local` on a free localhost port, until /ping
    answers; yields its URL. Its torch and faiss threads: --threads, via OMP_NUM_THREADS."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PYTHONPATH": str(ROOT),  # the model's class is pipelines.retriever.RetrieverModel
           # the CLI starts `uvicorn` by name: it must find this interpreter's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, server, log)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
            server.wait(timeout=60)


def wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    """Return once GET /ping answers 200; exit with the server's log if it dies or stalls."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow models serve exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow models serve did not answer in {SERVER_START_S} s:\n"
                     f"{log.read_text()}")


def post_user(url: str, user: str, k: int) -> list[dict[str, Any]]:
    """POST one user to /invocations; its k recommendation rows."""
    body = json.dumps({"dataframe_records": [{"user_id": user}], "params": {"k": k}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["predictions"]


def measure_http(saved: Path, kind: str, users: np.ndarray, tmp: Path,
                 args: argparse.Namespace) -> list[HttpRow]:
    """One user at a time, the same users three ways: `Retriever.recommend` in this process,
    the logged MLflow model's `predict` in this process, and HTTP to `mlflow models serve`."""
    single = cycled(users, 0, args.single)
    retriever = Retriever.load(saved)
    uri = logged_model(saved, tmp)
    model = mlflow.pyfunc.load_model(uri)
    ways: list[tuple[str, Callable[[np.ndarray], object]]] = [
        ("Retriever.recommend", lambda u: retriever.recommend(user_ids=u, k=args.k).item_ids),
        ("pyfunc predict", lambda u: model.predict(pd.DataFrame({"user_id": u}),
                                                   params={"k": args.k})),
    ]
    rows = []
    for path, call in ways:
        progress(f"{kind}: {path}, {len(single)} users one at a time")
        rows.append(HttpRow(kind, path, *one_query_ms(call, single, args.warmup)))
    with served(uri, tmp / f"server_{kind}.log", args.threads) as url:
        progress(f"{kind}: HTTP POST /invocations, {len(single)} users one at a time")
        rows.append(HttpRow(kind, "HTTP /invocations", *one_query_ms(
            lambda u: post_user(url, str(u[0]), args.k), single, args.warmup)))
    return rows


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


def retriever_tables(rows: list[ServeRow], k: int) -> tuple[list[list[str]], list[list[str]]]:
    """(speed per kind with ratios against flat, where each call's time goes)."""
    flat = rows[0]
    speed = [["kind", "params", f"recall@{k}", "1-user p50 ms", "p99 ms", "p99 x flat",
              "batch users/s", "batch x flat"]]
    phases = [["kind", "call", "ms per call", "user tower ms", "index search ms", "rest ms",
               "tower %", "search %", "rest %"]]
    for r in rows:
        speed.append([r.kind, r.params, f"{r.recall:.4f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{flat.p99_ms / r.p99_ms:.2f}", f"{r.users_per_s:,.0f}",
                      f"{r.users_per_s / flat.users_per_s:.2f}"])
        for call, times in (("1 user", r.single), ("batch", r.batch)):
            total = sum(times.values())
            phases.append([r.kind, call, f"{total:.2f}",
                           *(f"{times[p]:.2f}" for p in ("tower", "search", "rest")),
                           *(f"{100 * times[p] / total:.0f}" for p in ("tower", "search", "rest"))])
    return speed, phases


def memory_table(memory: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """The recommend stage for few and many users: time, peak RSS, the file written."""
    out = [["kind", "users", "seconds", "users/s", "peak RSS MiB", "peak x fewer users",
            "file MiB"]]
    for kind, (few, many) in memory.items():
        for run in (few, many):
            out.append([kind, f"{run['users']:,}", f"{run['seconds']:.1f}",
                        f"{run['users'] / run['seconds']:,.0f}", f"{run['peak_mib']:,.0f}",
                        f"{run['peak_mib'] / few['peak_mib']:.2f}", f"{run['file_mib']:,.0f}"])
    return out


def retriever_verdicts(rows: list[ServeRow], memory: dict[str, list[dict[str, Any]]],
                       size: int) -> list[str]:
    """The targets: one-user p99, batch users/s (with ivf or hnsw), memory bounded in users."""
    served = [r for r in rows if r.kind != "flat"]
    out = []
    for name, value, holds in (
            (f"one-user recommend p99 <= {TARGET_P99_MS:g} ms", lambda r: f"{r.p99_ms:.2f} ms",
             lambda r: r.p99_ms <= TARGET_P99_MS),
            (f"batch recommend >= {TARGET_USERS_PER_S:,} users/s",
             lambda r: f"{r.users_per_s:,.0f} users/s",
             lambda r: r.users_per_s >= TARGET_USERS_PER_S)):
        values = ", ".join(f"{r.kind} {value(r)}" for r in served)
        verdict = "HOLDS" if any(holds(r) for r in served) else "FAILS"
        out.append(f"target (cpu, {size:,} products) {name} with ivf or hnsw: {values} "
                   f"-> {verdict}")
    for kind, (few, many) in memory.items():
        ratio = many["peak_mib"] / few["peak_mib"]
        verdict = "HOLDS" if ratio <= TARGET_MEMORY_RATIO else "FAILS"
        out.append(f"target (cpu, {kind}) memory bounded: peak RSS for {many['users']:,} users "
                   f"<= {TARGET_MEMORY_RATIO:g}x that for {few['users']:,}: {ratio:.2f}x "
                   f"-> {verdict}")
    return out


def http_table(rows: list[HttpRow]) -> list[list[str]]:
    """One-user latency per way of asking, ratios against in-process recommend."""
    inprocess = {r.kind: r for r in rows if r.path == "Retriever.recommend"}
    out = [["kind", "path", "p50 ms", "p99 ms", "p50 x recommend", "p99 x recommend"]]
    for r in rows:
        ref = inprocess[r.kind]
        out.append([r.kind, r.path, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                    f"{r.p50_ms / ref.p50_ms:.2f}", f"{r.p99_ms / ref.p99_ms:.2f}"])
    return out


def report_serving(args: argparse.Namespace) -> None:
    """The retriever and HTTP parts: one grown retriever, re-indexed for each kind."""
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as folder:
        tmp = Path(folder)
        run = Path(args.run_dir) if args.run_dir else small_demo(tmp / "run")
        saved = grown(run, args.retriever_size, tmp / "retriever", args.seed)
        users = warm_users(run)
        files = [histories_file(users, count, tmp / f"users_{count}.parquet")
                 for count in (args.memory_users // 10, args.memory_users)]
        rows, http, exact, memory, about = [], [], None, {}, ""
        kinds = ("flat", *args.retriever_kinds) if "retriever" in args.parts \
            else args.retriever_kinds
        for kind in kinds:
            progress(f"building {kind} over {args.retriever_size:,} products")
            retriever = with_index(saved, kind)
            about = describe_retriever(retriever, run, len(users))
            if "retriever" in args.parts:
                row, found = measure_retriever(retriever, kind, users, exact, args)
                rows.append(row)
                exact = found if kind == "flat" else exact
            del retriever
            gc.collect()
            if kind == "flat":
                continue
            if "retriever" in args.parts:
                memory[kind] = [stage_run(saved, file, args) for file in files]
            if "http" in args.parts:
                http += measure_http(saved, kind, users, tmp, args)
    print(f"\nServing {args.retriever_size:,} products on CPU, k={args.k}")
    print(about)
    if rows:
        print_retriever(rows, memory, args)
    if http:
        print(f"\none user at a time over HTTP: `mlflow models serve` (uvicorn, 1 worker, "
              f"mlflow {mlflow.__version__}) of log_retriever's model, localhost, "
              f"{args.single:,} sequential POSTs of {{\"user_id\"}} after {args.warmup} untimed; "
              "beside recommend and the pyfunc's predict in this process")
        print()
        print_tables(http_table(http), args.markdown)


def print_retriever(rows: list[ServeRow], memory: dict[str, list[dict[str, Any]]],
                    args: argparse.Namespace) -> None:
    speed, phases = retriever_tables(rows, args.k)
    print(f"\nRetriever.recommend(user_ids=...) in this process, flat the reference; one user: "
          f"{args.single:,} users one at a time after {args.warmup} untimed; batch: "
          f"{args.users:,} users in one call, median of {args.repeats}; recall@{args.k} of the "
          "batch against flat's")
    print()
    print_tables(speed, args.markdown)
    print("\nwhere the time goes (mean per call, a second pass with timers on "
          "twotower.retriever.encode_users and index.search; rest: id lookups, exclusion lists)")
    print()
    print_tables(phases, args.markdown)
    if memory:
        print(f"\nthe recommend stage (pipelines.recommend.run: load, serve, write Parquet) on "
              f"the saved retriever in a fresh subprocess, chunk_size {args.chunk:,}; peak RSS: "
              "the process's VmHWM")
        print()
        print_tables(memory_table(memory), args.markdown)
    print()
    print("\n".join(retriever_verdicts(rows, memory, args.retriever_size)))


def describe_retriever(retriever: Retriever, run: Path, users: int) -> str:
    """What is served: the model's shapes, the catalog, the users."""
    tower = retriever.model.config
    width = retriever.model.item_tower.images.shape[1]
    return (f"model: the image model of {run} (TowerConfig dim={tower.dim} "
            f"hidden={tower.hidden_dim} id={tower.id_dim} image={tower.image_dim}, h width "
            f"{width}, max_history {retriever.max_history}); {len(retriever):,} products "
            f"(the run's + new ones from add_items(embeddings=h)); {users:,} known users, "
            "cycled")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all)")
    parser.add_argument("--sizes", type=positive, nargs="+",
                        default=[10_000, 100_000, 1_000_000], help="index part: catalog sizes N")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(SERVED_KINDS),
                        help="index part: ItemIndex kinds (flat is the reference for recall)")
    parser.add_argument("--dim", type=positive, default=64, help="index part: dimension d")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="index part: expected norm of the noise added to a unit centre")
    parser.add_argument("--run-dir",
                        help="retriever part: a finished pipeline run with an image model "
                             "(default: a small demo made in a temporary folder)")
    parser.add_argument("--retriever-size", type=positive, default=100_000,
                        help="retriever part: products served")
    parser.add_argument("--retriever-kinds", nargs="+", choices=KINDS[1:],
                        default=["ivf", "hnsw"], help="retriever part: kinds beside flat")
    parser.add_argument("--memory-users", type=positive, default=1_000_000,
                        help="retriever part: users of the memory run (and a tenth of them)")
    parser.add_argument("--chunk", type=positive, default=10_000,
                        help="retriever part: chunk_size of the recommend stage's memory run")
    parser.add_argument("--k", type=positive, default=100, help="items per query")
    parser.add_argument("--single", type=positive, default=1000,
                        help="queries timed one at a time (p50, p99)")
    parser.add_argument("--users", type=positive, default=10_000, help="users in the batch")
    parser.add_argument("--warmup", type=positive, default=20,
                        help="untimed single queries, and users in the batch warm-up")
    parser.add_argument("--repeats", type=positive, default=3, help="timed batch searches")
    parser.add_argument("--threads", type=positive,
                        help="torch, faiss and numpy BLAS threads (default: their own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown too")
    parser.add_argument("--child-stage", nargs=2, metavar=("SAVED", "USERS"),
                        help=argparse.SUPPRESS)  # internal: what stage_run's subprocess runs
    args = parser.parse_args(argv)
    if args.noise < 0:
        parser.error(f"--noise must be >= 0, got {args.noise}")
    if "retriever" in args.parts and args.memory_users // 10 < 2 * args.chunk:
        parser.error(f"--memory-users {args.memory_users} / 10 gives fewer than two chunks of "
                     f"--chunk {args.chunk}: the memory runs would not compare; lower --chunk")
    if "index" in args.parts and args.k > min(args.sizes):
        parser.error(f"--k {args.k} exceeds the smallest size {min(args.sizes)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        if args.child_stage:
            stage_child(*map(Path, args.child_stage), args)
            return
        print_header(args)
        if "index" in args.parts:
            report_index(args)
        if {"retriever", "http"} & set(args.parts):
            report_serving(args)


if __name__ == "__main__":
    main()
