"""ProjectionHead: the paper's three choices of g, their shapes and their gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twotower.heads import ProjectionHead


@pytest.mark.parametrize(("kind", "out"), [("mlp", 8), ("linear", 8), ("none", 16)])
def test_shape_finite_and_every_parameter_gets_a_gradient(kind, out):
    torch.manual_seed(0)
    head = ProjectionHead(16, 8, kind=kind)
    h = torch.randn(5, 16, requires_grad=True)
    z = head(h)
    assert z.shape == (5, out)
    assert head.out_dim == out
    assert torch.isfinite(z).all()
    z.square().sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mlp_is_linear_bn_relu_linear_with_hidden_equal_to_input():
    head = ProjectionHead(32, 128)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert layers[0].in_features == 32 and layers[0].out_features == 32
    assert layers[3].out_features == 128
    assert ProjectionHead(32, 128, hidden_dim=64).net[0].out_features == 64


def test_none_is_identity():
    h = torch.randn(3, 7)
    assert torch.equal(ProjectionHead(7, kind="none")(h), h)
    assert sum(p.numel() for p in ProjectionHead(7, kind="none").parameters()) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_dim": 4, "kind": "deep"}, "kind must be"),
        ({"in_dim": 0}, "positive"),
        ({"in_dim": 4, "out_dim": -1}, "positive"),
        ({"in_dim": 4, "hidden_dim": 0}, "hidden_dim"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProjectionHead(**kwargs)
