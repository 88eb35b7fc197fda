"""Where a training stage runs: the device, and the process group under `torchrun`.

Packages take a concrete `device`; only pipeline entry points resolve "auto". Under `torchrun`
(WORLD_SIZE > 1 in the environment) each process joins the group (NCCL on CUDA, gloo on CPU)
and takes the GPU of its LOCAL_RANK; rank 0 alone writes files and talks to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from pipelines.config import resolve_device

__all__ = ["distributed_device", "is_main", "set_threads"]


@contextmanager
def distributed_device(name: str) -> Iterator[str]:
    """Resolve `name` ("auto", "cpu", "cuda", ...) and, under torchrun, join the process group."""
    device = resolve_device(name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield device
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = "cuda"
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def set_threads(n: int) -> None:
    """Use `n` CPU threads in torch and, when it is installed, FAISS.

    The default, one per core, oversubscribes a machine whose cores other jobs are using.
    """
    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:  # the stages that need FAISS say so themselves
        return
    faiss.omp_set_num_threads(n)
