"""Side by side: wall time and peak memory of `twotower.data.prepare` against plain pandas.

Both turn the same synthetic interaction log into a temporal split with 5-core filtering:

    ours     prepare(source, out, PrepareConfig(protocol="temporal", max_history=50)):
             polars streaming read, integer codes, numpy steps; it also writes training
             positions, user histories and valid/test target histories (the last 50
             interactions, the cap the figures were measured with), which pandas does not.
    pandas   the steps as a pandas user writes them (written here): read_parquet, ids cast to
             str, drop_duplicates, a groupby-size k-core loop, factorize(sort=True)
             vocabularies, the same temporal cut ranks, item counts, to_parquet.

The log (generated once, streamed in chunks, reused on later runs) lives under
`.data/bench_prepare/rows-N/`: N rows of string user ids ("u00012345", activity skewed),
int item ids with Zipf-like popularity, items released through the year (so some are cold at
the cut), whole-second timestamps and 1% exact duplicates. Generation and each run happen in
fresh subprocesses that report their own `ru_maxrss`, because Linux carries a parent's
high-water mark into its children. Each run gets an address-space cap (`--mem-cap-gib`,
RLIMIT_AS), so a run that needs more fails with MemoryError and is reported as failed instead
of taking the machine down. With --repeats N the implementations alternate N times and the
table shows the median time and the highest peak. Times include imports (torch comes with
`twotower`). The parent imports only the standard library.

    python benchmarks/bench_prepare.py                       # 20M rows, both
    python benchmarks/bench_prepare.py --rows 100000000 --markdown
    python benchmarks/bench_prepare.py --rows 1000000 --skip-pandas --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `import twotower` uninstalled

IMPLS = ("ours", "pandas")
CHUNK_ROWS = 5_000_000
K_CORE = 5
MAX_HISTORY = 50  # valid/test history cap (PrepareConfig's default was 50 when measured)
VALID_FRACTION = TEST_FRACTION = 0.1
USERS_PER_ROW = 1 / 40  # N/40 users: 50 interactions each on average
ITEMS_PER_ROW = 1 / 100
DUPLICATE_SHARE = 0.01
YEAR_SECONDS = 365 * 86_400
START = "2024-01-01T00:00:00"
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024  # ru_maxrss unit
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# The synthetic log, generated in a child process.


def generate(folder: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` interactions as Parquet parts of CHUNK_ROWS rows under `folder`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from twotower.progress import progress

    rng = np.random.default_rng(seed)
    n_users = max(int(rows * USERS_PER_ROW), 1)
    n_items = max(int(rows * ITEMS_PER_ROW), 1)
    start = np.datetime64(START, "s").astype(np.int64)
    release = start + (rng.random(n_items) ** 2 * YEAR_SECONDS).astype(np.int64)  # (I,)
    folder.mkdir(parents=True, exist_ok=True)
    for part, first in enumerate(progress(range(0, rows, CHUNK_ROWS), desc="generate",
                                          unit="part")):
        n = min(CHUNK_ROWS, rows - first)
        user = (n_users * rng.random(n) ** 2).astype(np.int64)  # active users are few
        rank = (n_items * rng.random(n) ** 3).astype(np.int64)  # popularity ∝ rank^(-2/3)
        item = (rank * 2_654_435_761) % n_items  # scatter popular items over the id range
        seen = release[item]
        stamp = seen + (rng.random(n) * (start + YEAR_SECONDS - seen)).astype(np.int64)
        copy = np.flatnonzero(rng.random(n - 1) < DUPLICATE_SHARE) + 1  # row ← row before it
        user[copy], item[copy], stamp[copy] = user[copy - 1], item[copy - 1], stamp[copy - 1]
        digits = pc.utf8_lpad(pc.cast(pa.array(user), pa.string()), 8, "0")
        table = pa.table({
            "user_id": pc.binary_join_element_wise("u", digits, ""),
            "item_id": pa.array(item),
            "timestamp": pa.array(stamp.view("datetime64[s]").astype("datetime64[us]")),
        })
        pq.write_table(table, folder / f"part-{part:04d}.parquet")


# ---------------------------------------------------------------------------------------------
# The two implementations, each run in a child process.


def run_ours(source: Path, out: Path) -> dict:
    from twotower.data import PrepareConfig, prepare

    config = PrepareConfig(
        protocol="temporal", min_user_interactions=K_CORE, min_item_interactions=K_CORE,
        valid_fraction=VALID_FRACTION, test_fraction=TEST_FRACTION, max_history=MAX_HISTORY,
    )
    prepare(source, out, config)
    manifest = json.loads((out / "manifest.json").read_text())
    return {name: manifest["rows"][name] for name in ("read", "dedup", "kcore", "train",
                                                       "valid", "test")}


def run_pandas(source: Path, out: Path) -> dict:
    """The same steps in plain pandas: no histories, positions or per-user tables."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(source, columns=["user_id", "item_id", "timestamp"])
    counts = {"read": len(frame)}
    frame["user_id"] = frame["user_id"].astype(str)
    frame["item_id"] = frame["item_id"].astype(str)
    frame = frame.drop_duplicates()
    counts["dedup"] = len(frame)
    while True:
        user_size = frame.groupby("user_id")["item_id"].transform("size")
        item_size = frame.groupby("item_id")["user_id"].transform("size")
        keep = (user_size >= K_CORE) & (item_size >= K_CORE)
        if keep.all():
            break
        frame = frame[keep]
    counts["kcore"] = len(frame)
    user_index, user_ids = pd.factorize(frame["user_id"], sort=True)
    item_index, item_ids = pd.factorize(frame["item_id"], sort=True)
    frame = pd.DataFrame({
        "user_index": user_index.astype("int32"),
        "item_index": item_index.astype("int32"),
        "timestamp": frame["timestamp"].to_numpy(),
        "weight": np.float32(1.0),
    })
    times = frame["timestamp"].sort_values(ignore_index=True)
    n = len(times)
    t_valid = times[int((1 - VALID_FRACTION - TEST_FRACTION) * n)]
    t_test = times[int((1 - TEST_FRACTION) * n)]
    del times
    parts = {
        "train": frame[frame["timestamp"] < t_valid],
        "valid": frame[(frame["timestamp"] >= t_valid) & (frame["timestamp"] < t_test)],
        "test": frame[frame["timestamp"] >= t_test],
    }
    item_count = parts["train"]["item_index"].value_counts().reindex(
        range(len(item_ids)), fill_value=0
    )
    first_seen = frame.groupby("item_index")["timestamp"].min()
    items = pd.DataFrame({
        "item_id": item_ids,
        "item_index": np.arange(len(item_ids), dtype="int32"),
        "count": item_count.to_numpy(),
        "first_seen": first_seen.to_numpy(),
        "cold": item_count.to_numpy() == 0,
    })
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(out / f"{name}.parquet", index=False)
        counts[name] = len(part)
    items.to_parquet(out / "items.parquet", index=False)
    users = pd.DataFrame({"user_id": user_ids, "user_index": np.arange(len(user_ids))})
    users.to_parquet(out / "users.parquet", index=False)
    return counts


def child(task: str, source: Path, out: Path, cap_gib: float, rows: int) -> None:
    """Run one task under the memory cap; print one JSON line with time and peak RSS."""
    cap = int(cap_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    start = time.perf_counter()
    try:
        if task == "generate":
            generate(source, rows)
            result: dict = {"status": "ok"}
        else:
            shutil.rmtree(out, ignore_errors=True)
            counts = run_ours(source, out) if task == "ours" else run_pandas(source, out)
            result = {"status": "ok", "rows": counts}
    except MemoryError:
        result = {"status": "MemoryError"}
    except Exception as err:  # a row in the table, not a lost run; the traceback goes to stderr
        traceback.print_exc()
        result = {"status": f"failed ({type(err).__name__})"}
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_BYTES / GIB
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: standard library only.


def spawn(task: str, source: Path, out: Path, cap_gib: float, rows: int) -> dict:
    cmd = [sys.executable, __file__, "--child", task, "--source", str(source), "--out", str(out),
           "--mem-cap-gib", str(cap_gib), "--rows", str(rows)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    code = proc.returncode
    how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return {"status": f"failed ({how})"}


def ensure_log(data_dir: Path, rows: int, cap_gib: float) -> Path:
    folder = data_dir / f"rows-{rows}"
    done = data_dir / f"rows-{rows}.done"  # outside the folder: the scans must not see it
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        result = spawn("generate", folder, folder, cap_gib, rows)
        if result["status"] != "ok":
            sys.exit(f"generating {rows} rows failed: {result['status']}")
        print(f"generated {rows:,} rows in {result['seconds']:.1f} s → {folder}")
        done.touch()
    return folder


def report(
    rows: int, results: dict[str, dict], cap_gib: float, markdown: bool, repeats: int
) -> None:
    def cells(result: dict | None) -> tuple[str, str]:
        """(seconds, peak GiB); a failed run shows when it failed and its peak until then."""
        if result is None:
            return "skipped", "skipped"
        if result["status"] == "ok":
            return f"{result['seconds']:.1f}", f"{result['peak_rss_gib']:.2f}"
        if "seconds" not in result:
            return result["status"], "n/a"
        return (f"{result['status']} after {result['seconds']:.0f} s",
                f"{result['peak_rss_gib']:.2f} at failure")

    ours, theirs = results.get("ours"), results.get("pandas")
    both = ours is not None and theirs is not None and ours["status"] == theirs["status"] == "ok"
    speed = f"{theirs['seconds'] / ours['seconds']:.1f}x" if both else "n/a"
    memory = f"{theirs['peak_rss_gib'] / ours['peak_rss_gib']:.1f}x" if both else "n/a"
    (ours_s, ours_gib), (theirs_s, theirs_gib) = cells(ours), cells(theirs)
    header = ["rows", "ours s", "pandas s", "ours peak GiB", "pandas peak GiB",
              "time pandas/ours", "peak pandas/ours"]
    line = [f"{rows:,}", ours_s, theirs_s, ours_gib, theirs_gib, speed, memory]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, address-space cap {cap_gib:g} GiB per run, "
          f"median of {repeats} run(s)")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), len(v)) for h, v in zip(header, line, strict=True)]
        for row in (header, line):
            print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    for name, result in results.items():
        if result.get("rows"):
            print(f"{name} rows: {result['rows']}")
    if both and ours["rows"] != theirs["rows"]:
        print("WARNING: the two implementations disagree on the row counts above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="interactions in the log")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "bench_prepare",
                        help="where the log and the outputs go (git-ignored)")
    parser.add_argument("--skip-pandas", action="store_true", help="time only prepare()")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--mem-cap-gib", type=float, default=20.0,
                        help="address-space cap of each child run (RLIMIT_AS)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per implementation; the table shows the median time")
    parser.add_argument("--child", choices=("generate", *IMPLS), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args.out, args.mem_cap_gib, args.rows)
        return
    source = ensure_log(args.data_dir, args.rows, args.mem_cap_gib)
    impls = [impl for impl in IMPLS if not (impl == "pandas" and args.skip_pandas)]
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for repeat in range(args.repeats):  # alternate, so both see the same background load
        for impl in impls:
            result = spawn(impl, source, args.data_dir / f"out-{impl}", args.mem_cap_gib,
                           args.rows)
            runs[impl].append(result)
            print(f"{impl} run {repeat + 1}: {result}", flush=True)
    report(args.rows, {impl: summarize(r) for impl, r in runs.items()}, args.mem_cap_gib,
           args.markdown, args.repeats)


def summarize(runs: list[dict]) -> dict:
    """Median wall time and highest peak of the runs; the first failure if any failed."""
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        return failed[0]
    return {"status": "ok", "rows": runs[0]["rows"],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs)}

if __name__ == "__main__":
    main()
