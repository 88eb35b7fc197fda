"""LARS against a loop written from You et al. 2017 / SimCLR's reference, and the lr schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from simclr_vision.optim import LARS, param_groups, warmup_cosine


def _naive_lars(weights, grads, velocities, *, lr, momentum, wd, eta, adapt):
    """One step per parameter: g += λw; r = η‖w‖/‖g‖; v = m·v + lr·r·g; w -= v."""
    out_w, out_v = [], []
    for w, g, v in zip(weights, grads, velocities, strict=True):
        if adapt:
            g = g + wd * w
            w_norm = math.sqrt(sum(float(x) ** 2 for x in w.flatten()))
            g_norm = math.sqrt(sum(float(x) ** 2 for x in g.flatten()))
            trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        else:
            trust = 1.0
        v = momentum * v + lr * trust * g
        out_w.append(w - v)
        out_v.append(v)
    return out_w, out_v


def test_lars_matches_the_naive_update_over_three_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3, bias=False))
    model.double()
    with torch.no_grad():
        model[2].weight.zero_()  # an all-zero weight: its trust ratio falls back to 1
    opt = LARS(param_groups(model, weight_decay=1e-2), lr=0.7, momentum=0.9, eta=0.02)
    groups = param_groups(model, weight_decay=1e-2)
    ws = {id(p): p.detach().clone() for p in model.parameters()}
    vs = {id(p): torch.zeros_like(p) for p in model.parameters()}
    x = torch.randn(8, 5, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        for group in groups:
            params = group["params"]
            new_w, new_v = _naive_lars(
                [ws[id(p)] for p in params], [p.grad.detach().clone() for p in params],
                [vs[id(p)] for p in params], lr=0.7, momentum=0.9, wd=group["weight_decay"],
                eta=0.02, adapt=group["lars"],
            )
            for p, w, v in zip(params, new_w, new_v, strict=True):
                ws[id(p)], vs[id(p)] = w, v
        opt.step()
        for p in model.parameters():
            torch.testing.assert_close(p.detach(), ws[id(p)], rtol=1e-12, atol=1e-12)


def test_param_groups_spare_biases_and_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decayed, spared = param_groups(model, weight_decay=1e-6)
    assert {tuple(p.shape) for p in decayed["params"]} == {(4, 3, 3, 3), (2, 4)}
    assert len(spared["params"]) == 4  # conv bias, BN weight and bias, linear bias
    assert decayed["lars"] and decayed["weight_decay"] == 1e-6
    assert not spared["lars"] and spared["weight_decay"] == 0.0


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, warmup_steps=4, total_steps=12) for s in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[8] == pytest.approx(0.5)          # half way through the cosine
    assert factors[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert warmup_cosine(0, warmup_steps=0, total_steps=10) == 1.0


def test_lars_refuses_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        LARS([nn.Parameter(torch.ones(2))], lr=0.1, momentum=1.5)
