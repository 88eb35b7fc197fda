"""SimCLR's optimisation: LARS, parameter groups that spare biases and BN, warmup + cosine.

SimCLR trains with LARS (You et al. 2017) at lr = 0.3·B/256 with weight decay 1e-6, a linear
warmup over the first 10 epochs and a cosine decay without restarts (Chen et al. 2020, §B.1),
and leaves biases and batch-norm parameters out of both weight decay and LARS adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["LARS", "param_groups", "warmup_cosine"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/BN (neither); 1-D means the latter."""
    weights, others = [], []
    for p in model.parameters():
        if p.requires_grad:
            (weights if p.ndim > 1 else others).append(p)
    return [
        {"params": weights, "weight_decay": weight_decay, "lars": True},
        {"params": others, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling, in the form of SimCLR's reference implementation.

    For each parameter w with gradient g in a group with ``lars=True``:
        g ← g + λ·w;   r = η·‖w‖ / ‖g‖ (1 when either norm is 0);   v ← m·v + lr·r·g;   w ← w − v
    and in a group with ``lars=False`` the same without λ and with r = 1 (plain momentum SGD).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        *,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 1e-3,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"need lr ≥ 0, 0 ≤ momentum < 1, weight_decay ≥ 0, eta > 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if group["lars"]:
                    if group["weight_decay"]:
                        g = g.add(w, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    # No host sync: the ratio stays on the device.
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0
                    )
                    g = g.mul(trust)
                state = self.state[w]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(w)
                v = state["momentum"]
                v.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                w.sub_(v)
        return loss


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The lr factor at `step` (0-based): linear warmup to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
