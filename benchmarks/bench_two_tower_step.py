"""Two-tower training throughput: examples/s of `fit` at one batch size, and the loss's share.

Side by side on the same device and batch:

    training step   `twotower.train.fit` for one epoch on a large synthetic shop (id-only
                    towers, logQ from counts, hits masked): the wall time between consecutive
                    steps, as its `log` callback sees them (each step ends in a host sync for
                    the loss value), median over the epoch after --warmup steps
    loss alone      `info_nce` forward + backward on random (B, d) user and item vectors with
                    the same options (log q, candidate ids, temperature, chunk size), median of
                    --repeats

and prints examples/s = B / step time and the loss's share of the step. On CUDA the step runs
in bf16 autocast (the loss in float32, as in `fit`).

    python benchmarks/bench_two_tower_step.py                          # CPU, batch 8192
    python benchmarks/bench_two_tower_step.py --device cuda --batch-size 8192 --rows 2000000

Needs the installed project (polars for `prepare`, faiss for the validation index).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.args import positive
from benchmarks.machine import cpu_model
from benchmarks.tables import print_tables
from twotower.contrastive import info_nce
from twotower.data import PrepareConfig, prepare
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig, fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(prepared: Path, cfg: TrainConfig, warmup: int) -> tuple[float, int]:
    """Median seconds between consecutive training steps of one epoch, and the steps timed."""
    stamps: list[float] = []

    def log(metrics: dict, step: int) -> None:
        if "loss" in metrics:  # step metrics; the loss value was synced to the host
            stamps.append(time.perf_counter())

    fit(prepared, cfg, log=log, progress=False)
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]
    if not gaps:
        sys.exit(f"only {len(stamps)} steps: give more --rows or a smaller --batch-size")
    return statistics.median(gaps), len(gaps)


def loss_seconds(cfg: TrainConfig, n_items: int, repeats: int) -> float:
    """Median seconds of info_nce forward + backward on (B, d) vectors like fit's."""
    device = torch.device(cfg.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    b, d = cfg.batch_size, cfg.tower.dim
    users = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    items = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    users, items = users.to(device).requires_grad_(), items.to(device).requires_grad_()
    ids = torch.randint(0, n_items, (b,), generator=g).to(device)
    log_q = torch.rand(b, generator=g).log().to(device)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync(device)
        start = time.perf_counter()
        loss = info_nce(users, items, temperature=cfg.temperature, log_q=log_q,
                        candidate_ids=ids, normalize=False, chunk_size=cfg.chunk_size)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        users.grad = items.grad = None
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=positive, default=8192)
    parser.add_argument("--rows", type=positive, default=300_000, help="shop interactions")
    parser.add_argument("--items", type=positive, default=20_000)
    parser.add_argument("--users", type=positive, default=20_000)
    parser.add_argument("--dim", type=positive, default=64)
    parser.add_argument("--chunk-size", type=positive, default=None)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--repeats", type=positive, default=10, help="timed loss calls")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        shop = make_shop(ShopConfig(num_items=args.items, num_users=args.users,
                                    num_interactions=args.rows, image_size=8))
        shop.interactions.to_parquet(Path(tmp) / "log.parquet")
        prepared = prepare(Path(tmp) / "log.parquet", Path(tmp) / "prepare",
                           PrepareConfig(min_user_interactions=2, min_item_interactions=2))
        # The in-batch (sampled) softmax whose loss `loss_seconds` times, with the towers
        # this benchmark was first measured with (benchmarks/README.md).
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device,
                          chunk_size=args.chunk_size, max_val_users=200, softmax="sampled",
                          max_history=20,
                          tower=TowerConfig(dim=args.dim, hidden_dim=128, id_dim=32))
        step, steps = step_seconds(prepared, cfg, args.warmup)
        loss = loss_seconds(cfg, args.items, args.repeats)
    rows = [["batch", "device", "step ms", "examples/s", "loss fwd+bwd ms", "loss share"],
            [f"{args.batch_size:,}", args.device, f"{1e3 * step:.1f}",
             f"{args.batch_size / step:,.0f}", f"{1e3 * loss:.1f}", f"{loss / step:.0%}"]]
    print(f"\n{steps} steps timed (median), id-only towers, d={args.dim}, logQ counts")
    print_tables(rows, args.markdown)


if __name__ == "__main__":
    main()
