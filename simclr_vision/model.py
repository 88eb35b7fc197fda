"""SimCLR = encoder f + projection head g (Chen et al. 2020, §2.1): x → h = f(x) → z = g(h).

The loss sees z; downstream work keeps h, because g learns to discard what the augmentations
vary (colour, orientation, noise) and h still carries it (the paper's Table 3, reproduced by
`simclr_vision.evaluate.augmentation_probe`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from simclr_vision.augment import resize_view
from simclr_vision.encoder import ResNet, build_encoder
from twotower.heads import HeadKind, ProjectionHead
from twotower.progress import progress as show_progress

__all__ = ["SimCLR", "build_simclr", "encode_images"]


class SimCLR(nn.Module):
    """An encoder and a projection head; `forward(x)` returns `(h, z)`."""

    def __init__(self, encoder: ResNet, head: ProjectionHead) -> None:
        super().__init__()
        if head.in_dim != encoder.feature_dim:
            raise ValueError(
                f"head.in_dim {head.in_dim} must equal the encoder's feature_dim "
                f"{encoder.feature_dim}"
            )
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → h (B, feature_dim), z (B, head.out_dim)."""
        h = self.encoder(x)
        return h, self.head(h)


def build_simclr(
    arch: str,
    *,
    in_channels: int = 3,
    width: int | None = None,
    small_images: bool | None = None,
    head: HeadKind = "mlp",
    proj_dim: int = 128,
) -> SimCLR:
    """The paper's model: hidden layer of g = feature dim, z has `proj_dim` (128) dimensions."""
    encoder = build_encoder(arch, in_channels=in_channels, width=width, small_images=small_images)
    return SimCLR(encoder, ProjectionHead(encoder.feature_dim, proj_dim, kind=head))


@torch.no_grad()
def encode_images(
    model: SimCLR,
    images: Tensor,
    *,
    size: int,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """h (N, feature_dim) and z (N, out_dim), float32 on the CPU, of uint8 images (N, C, H, W).

    Each batch is resized to `size` without augmentation (`resize_view`), optionally passed
    through `transform(batch, row_indices)`, and encoded in eval mode (BN running statistics);
    the model's train/eval mode is restored afterwards. `device` defaults to the model's.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    hs, zs = [], []
    try:
        starts = range(0, images.shape[0], batch_size)
        for start in show_progress(starts, desc="encode", enabled=progress, leave=False):
            idx = torch.arange(start, min(start + batch_size, images.shape[0]))
            x = resize_view(images[idx].to(device, non_blocking=True), size)
            if transform is not None:
                x = transform(x, idx)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                h, z = model(x)
            hs.append(h.float().cpu())
            zs.append(z.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(hs), torch.cat(zs)
