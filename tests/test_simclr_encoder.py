"""The ResNet encoders and the SimCLR model: published sizes, shapes, gradients, the stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclr_vision.encoder import build_encoder, resnet18, resnet_narrow
from simclr_vision.model import SimCLR, build_simclr
from twotower.heads import ProjectionHead

# He et al. 2016 as published (torchvision's counts): ImageNet stem, 1000-way classifier.
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_count_equals_the_published_one(arch):
    encoder = build_encoder(arch)
    classifier = nn.Linear(encoder.feature_dim, 1000)
    total = sum(p.numel() for m in (encoder, classifier) for p in m.parameters())
    assert total == PUBLISHED[arch]


@pytest.mark.parametrize(
    ("arch", "width", "channels", "size", "feature_dim"),
    [
        ("resnet18", 8, 3, 32, 64),
        ("resnet34", 8, 1, 28, 64),
        ("resnet50", 4, 3, 32, 128),
        ("resnet_narrow", None, 1, 28, 128),
    ],
)
@pytest.mark.parametrize("kind", ["mlp", "linear", "none"])
def test_simclr_shapes_finite_and_every_parameter_gets_a_gradient(
    arch, width, channels, size, feature_dim, kind
):
    torch.manual_seed(0)
    model = build_simclr(arch, in_channels=channels, width=width, small_images=True, head=kind,
                         proj_dim=16)
    # Residual branches start muted (last BN γ = 0, see the next test), which stops gradient
    # into their convolutions until γ moves; give γ its value after a step of training.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    x = torch.rand(4, channels, size, size)
    h, z = model(x)
    assert h.shape == (4, feature_dim)
    assert z.shape == (4, feature_dim if kind == "none" else 16)
    assert torch.isfinite(h).all() and torch.isfinite(z).all()
    (z.square().sum() + h.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_paper_head_has_hidden_equal_to_feature_dim_and_128_out():
    model = build_simclr("resnet_narrow")
    assert model.head.kind == "mlp"
    assert model.head.net[0].out_features == model.encoder.feature_dim
    assert model.head.out_dim == 128


def test_small_image_stem_keeps_resolution_and_imagenet_stem_divides_by_four():
    small, large = resnet18(width=8, small_images=True), resnet18(width=8)
    x = torch.rand(2, 3, 32, 32)
    assert small.stem(x).shape[-1] == 32  # 3×3 stride 1, no max-pool
    assert large.stem(x).shape[-1] == 8   # 7×7 stride 2, then max-pool
    assert small.forward_features(x).shape[-1] == 4
    assert large.forward_features(x).shape[-1] == 1


def test_residual_blocks_start_as_identity():
    encoder = resnet_narrow()
    last_bns = [block.bn2 for stage in encoder.stages for block in stage]
    assert all(torch.count_nonzero(bn.weight) == 0 for bn in last_bns)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown encoder 'resnet101'"):
        build_encoder("resnet101")
    with pytest.raises(ValueError, match="in_channels and width must be positive"):
        build_encoder("resnet18", width=0)
    with pytest.raises(ValueError, match="must equal the encoder's feature_dim"):
        SimCLR(resnet_narrow(), ProjectionHead(64))
