"""Projection heads g(·) placed between an encoder's representation and a contrastive loss."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ProjectionHead"]

HeadKind = Literal["mlp", "linear", "none"]


class ProjectionHead(nn.Module):
    """Maps a representation h (B, in_dim) to the vector z (B, out_dim) the loss sees.

    SimCLR (Chen et al. 2020, §2.1 and Fig. 8) computes the loss on z = g(h) and keeps h for
    downstream use; its nonlinear g beats a linear one, which beats none:
      - ``"mlp"``: Linear(in, hidden) → BatchNorm → ReLU → Linear(hidden, out); hidden
        defaults to ``in_dim`` as in the paper.
      - ``"linear"``: Linear(in, out).
      - ``"none"``: identity, so ``out_dim`` is ``in_dim``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 128,
        *,
        kind: HeadKind = "mlp",
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim} and {out_dim}")
        if kind == "mlp":
            hidden = in_dim if hidden_dim is None else hidden_dim
            if hidden <= 0:
                raise ValueError(f"hidden_dim must be positive, got {hidden}")
            # No bias before BatchNorm: its shift would be subtracted again.
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, out_dim),
            )
        elif kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "none":
            self.net = nn.Identity()
            out_dim = in_dim
        else:
            raise ValueError(f"kind must be 'mlp', 'linear' or 'none', got {kind!r}")
        self.kind = kind
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, out_dim)."""
        return self.net(h)
