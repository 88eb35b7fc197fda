"""Two gloo processes on CPU give the same losses and gradients as one process on the joined
batch: negatives are gathered from every rank, with gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twotower.contrastive import info_nce, nt_xent
from twotower.distributed import gather_with_grad, rank, world_size

WORLD = 2
ROWS = 5  # per rank
DIM = 4
EXTRA = 3  # extra negatives per rank


def _joined_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, m = WORLD * ROWS, WORLD * EXTRA
    return {
        "queries": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "candidates": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "log_q": torch.rand(n, generator=g, dtype=torch.float64).log(),
        "candidate_ids": torch.randint(0, 4, (n,), generator=g),
        "extra_candidates": torch.randn(m, DIM, generator=g, dtype=torch.float64),
        "extra_log_q": torch.rand(m, generator=g, dtype=torch.float64).log(),
        "extra_candidate_ids": torch.randint(0, 4, (m,), generator=g),
    }


def _losses_and_grads(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every variant's loss and its gradients with respect to the (local) float inputs."""
    out = {}
    for chunk in (None, 3):
        leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in batch.items()}
        loss = info_nce(**leaves, temperature=0.2, chunk_size=chunk)
        loss.backward()
        out[f"info_nce/{chunk}/loss"] = loss.detach()
        for name in ("queries", "candidates", "extra_candidates", "log_q"):
            out[f"info_nce/{chunk}/{name}"] = leaves[name].grad

        z1 = batch["queries"].clone().requires_grad_(True)
        z2 = batch["candidates"].clone().requires_grad_(True)
        loss = nt_xent(z1, z2, temperature=0.5, chunk_size=chunk)
        loss.backward()
        out[f"nt_xent/{chunk}/loss"] = loss.detach()
        out[f"nt_xent/{chunk}/queries"] = z1.grad
        out[f"nt_xent/{chunk}/candidates"] = z2.grad
    return out


def _local(batch: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    def part(x: torch.Tensor, size: int) -> torch.Tensor:
        return x[r * size : (r + 1) * size]
    return {k: part(v, EXTRA if k.startswith("extra") else ROWS) for k, v in batch.items()}


def _worker(r: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD)
    try:
        result = _losses_and_grads(_local(_joined_batch(), r))
        result["rank"], result["world_size"] = torch.tensor(rank()), torch.tensor(world_size())
        result["gathered"] = gather_with_grad(torch.full((2,), float(r)))
        torch.save(result, Path(out_dir) / f"{r}.pt")
    finally:
        dist.destroy_process_group()


def test_without_process_group_nothing_changes():
    x = torch.randn(3, 2)
    assert rank() == 0
    assert world_size() == 1
    assert gather_with_grad(x) is x


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_joined_batch(tmp_path):
    if not dist.is_available():
        pytest.skip("torch was built without torch.distributed")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    joined = _losses_and_grads(_joined_batch())

    for r, result in enumerate(ranks):
        assert result["rank"].item() == r
        assert result["world_size"].item() == WORLD
        torch.testing.assert_close(result["gathered"], torch.tensor([0.0, 0.0, 1.0, 1.0]))

    for key, value in joined.items():
        if key.endswith("/loss"):
            # Each rank averages its own rows; with equal batches their mean is the joined mean.
            torch.testing.assert_close(sum(r[key] for r in ranks) / WORLD, value)
            continue
        # Rank r's gradient is that of its local mean loss (summed over ranks for shared
        # candidates): the joined batch's gradient times WORLD, as DDP's averaging undoes.
        rows = EXTRA if "extra" in key else ROWS
        for r, result in enumerate(ranks):
            expected = value[r * rows : (r + 1) * rows] * WORLD
            torch.testing.assert_close(result[key], expected, msg=f"{key} on rank {r}")
