"""One code path for one device or many: rank, world size, a gather that keeps gradients and
a mean over ranks.

Without an initialised process group `rank()` is 0, `world_size()` is 1, and
`gather_with_grad` and `mean_over_ranks` return their input unchanged, so the losses and the
training loop never branch on DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "mean_over_ranks", "rank", "world_size"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without a process group."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if _initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice.

    Each rank's loss reads every rank's rows, so the gradient of a local row is the sum of the
    gradients all ranks computed for it: an all_reduce, which gloo and NCCL both support.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (n, ...) from every rank in rank order → (world_size · n, ...).

    Gradients flow back to every rank's rows. Every rank must pass the same shape (use
    `drop_last=True` batches). Integer tensors (ids) are gathered the same way, without grad.
    """
    if world_size() == 1:
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(x)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` averaged elementwise over every rank (no gradient): the same tensor on every rank."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    x /= world_size()
    return x
