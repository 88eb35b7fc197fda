"""The ResNet encoder f: an image (B, C, H, W) → its representation h (B, feature_dim).

Our own compact implementation of He et al. 2016 ("Deep Residual Learning", Table 1), since
torchvision cannot be installed beside the CPU torch build here. With the ImageNet stem and a
1000-way classifier on top, ResNet-18/34/50 have exactly the published parameter counts
(11,689,512 / 21,797,672 / 25,557,032); the encoder itself stops at the global average pool,
because SimCLR keeps h and discards everything after it.

`small_images=True` swaps the 7×7 stride-2 stem and max-pool for a 3×3 stride-1 convolution,
as SimCLR does for CIFAR-10 (Chen et al. 2020, Appendix B.9): a 32 px image would otherwise be
8 px after the stem. `width` scales every stage's channels (64 → 128 → 256 → 512 at width 64);
`resnet_narrow` is ResNet-18 at width 16, ~16× fewer multiply-adds, which trains on two CPU
cores in minutes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ENCODERS", "ResNet", "build_encoder", "resnet18", "resnet34", "resnet50", "resnet_narrow",
]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as in torchvision's "ResNet v1.5"), 1×1 expand."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


def _shortcut(in_ch: int, out: int, stride: int) -> nn.Module:
    """Identity, or a strided 1×1 projection where the shape changes (He et al. option B)."""
    if stride == 1 and in_ch == out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    """Stem → four residual stages → global average pool; `forward` returns h (B, feature_dim)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        in_channels: int = 3,
        width: int = 64,
        small_images: bool = False,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or width <= 0:
            raise ValueError(f"in_channels and width must be positive, got {in_channels}, {width}")
        if small_images:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)]
        stem += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if not small_images:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)

        stages = []
        in_ch = width
        for i, blocks in enumerate(layers):
            ch = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(block(in_ch, ch, stride if j == 0 else 1))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.in_channels = in_channels
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convolutions; the last BN of each block starts at zero so every residual
        # block begins as the identity (Goyal et al. 2017, §5.1), which steadies large batches.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → the last stage's feature map (B, feature_dim, H', W')."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → h (B, feature_dim)."""
        return torch.flatten(self.pool(self.forward_features(x)), 1)


def resnet18(*, in_channels: int = 3, width: int = 64, small_images: bool = False) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); h has 8·width dimensions (512)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels=in_channels, width=width,
                  small_images=small_images)


def resnet34(*, in_channels: int = 3, width: int = 64, small_images: bool = False) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); h has 8·width dimensions (512)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels=in_channels, width=width,
                  small_images=small_images)


def resnet50(*, in_channels: int = 3, width: int = 64, small_images: bool = False) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); h has 32·width dimensions (2048)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels=in_channels, width=width,
                  small_images=small_images)


def resnet_narrow(*, in_channels: int = 3, width: int = 16, small_images: bool = True) -> ResNet:
    """ResNet-18 at a quarter of the width (h has 128 dimensions): SimCLR on a CPU in minutes."""
    return resnet18(in_channels=in_channels, width=width, small_images=small_images)


ENCODERS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet_narrow": resnet_narrow,
}


def build_encoder(
    arch: str,
    *,
    in_channels: int = 3,
    width: int | None = None,
    small_images: bool | None = None,
) -> ResNet:
    """An encoder by name; `width` and `small_images` default to the architecture's own."""
    if arch not in ENCODERS:
        raise ValueError(f"unknown encoder {arch!r}; choose one of {sorted(ENCODERS)}")
    kwargs: dict[str, object] = {"in_channels": in_channels}
    if width is not None:
        kwargs["width"] = width
    if small_images is not None:
        kwargs["small_images"] = small_images
    return ENCODERS[arch](**kwargs)
