"""kNN vote against a loop from Wu et al. 2018, the linear probe, and the h-vs-z probe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simclr_vision.evaluate import (
    augmentation_probe,
    cross_knn_accuracy,
    cross_knn_votes,
    knn_accuracy,
    knn_predict,
    linear_probe,
)
from simclr_vision.model import SimCLR
from twotower.heads import ProjectionHead


def _naive_knn(train_h, train_y, test_h, k, temperature):
    preds = []
    for q in test_h:
        sims = []
        for x, y in zip(train_h, train_y, strict=True):
            cos = float(q @ x) / (float(q.norm()) * float(x.norm()))
            sims.append((cos, int(y)))
        sims.sort(key=lambda t: -t[0])
        votes: dict[int, float] = {}
        for cos, y in sims[:k]:
            votes[y] = votes.get(y, 0.0) + math.exp(cos / temperature)
        preds.append(max(votes, key=votes.get))
    return preds


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (5, 0.07), (20, 1.0), (500, 0.5)])
def test_knn_matches_the_naive_weighted_vote(k, temperature):
    g = torch.Generator().manual_seed(k)
    train_h, test_h = torch.randn(60, 6, generator=g), torch.randn(25, 6, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    pred = knn_predict(train_h, train_y, test_h, k=k, temperature=temperature, chunk_size=7)
    assert pred.tolist() == _naive_knn(train_h, train_y, test_h, min(k, 60), temperature)


def test_knn_accuracy_on_clusters_and_a_hand_case():
    # Two tight clusters on the unit circle: every query is classified by its own cluster.
    train_h = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0], [-0.05, 1.0]])
    train_y = torch.tensor([0, 0, 1, 1])
    test_h, test_y = torch.tensor([[2.0, 0.1], [0.1, 3.0]]), torch.tensor([0, 1])
    assert knn_accuracy(train_h, train_y, test_h, test_y, k=3) == 1.0
    assert knn_accuracy(train_h, train_y, test_h, 1 - test_y, k=3) == 0.0


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (7, 0.2), (100, 1.0)])
def test_leave_one_out_knn_matches_the_naive_vote_without_the_row_itself(k, temperature):
    g = torch.Generator().manual_seed(k)
    h, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    naive = [_naive_knn(torch.cat([h[:i], h[i + 1:]]), torch.cat([y[:i], y[i + 1:]]), h[i:i + 1],
                        min(k, 39), temperature)[0] for i in range(40)]
    expected = sum(int(p == t) for p, t in zip(naive, y.tolist(), strict=True)) / 40
    assert cross_knn_accuracy(h, y, k=k, temperature=temperature, chunk_size=6) == \
        pytest.approx(expected)
    one = cross_knn_votes(h, y, k=1, temperature=temperature)
    assert one.shape == (40, 3) and ((one > 0).sum(dim=1) == 1).all()  # one neighbour, one class
    duplicated = torch.cat([h, h])  # each row's twin is its nearest other row
    assert cross_knn_accuracy(duplicated, torch.cat([y, y]), k=1) == 1.0
    with pytest.raises(ValueError, match="need h"):
        cross_knn_accuracy(h, y[:-1])


def test_knn_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="need train_h"):
        knn_predict(torch.randn(5, 3), torch.zeros(5), torch.randn(2, 4))
    with pytest.raises(ValueError, match="train_y must have shape"):
        knn_predict(torch.randn(5, 3), torch.zeros(4), torch.randn(2, 3))


def test_linear_probe_separates_what_is_linearly_separable():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    h = torch.randn(300, 8, generator=g) * 0.3
    h[torch.arange(300), y] += 3.0
    assert linear_probe(h[:200], y[:200], h[200:], y[200:]) > 0.95
    shuffled = y[torch.randperm(300, generator=g)]
    assert linear_probe(h[:200], shuffled[:200], h[200:], shuffled[200:]) < 0.6


class _Pixels(nn.Module):
    """h = the pixels themselves; the probe then sees exactly the transformation."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.feature_dim = channels * size * size
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.flat(x) * self.scale


class _ColourBlind(nn.Module):
    """z = a per-image colour-and-orientation-free summary: the mean intensity."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.kind = in_dim, 1, "custom"

    def forward(self, h):
        return h.mean(dim=1, keepdim=True).round(decimals=1)


def test_augmentation_probe_tells_what_h_keeps_and_z_drops():
    g = torch.Generator().manual_seed(0)
    # Smooth, asymmetric, coloured images: rotation, noise and colour are all visible in pixels.
    base = torch.linspace(0, 1, 8).view(1, 1, 1, 8) * torch.linspace(0.2, 1, 8).view(1, 1, 8, 1)
    tint = torch.rand(400, 3, 1, 1, generator=g)
    images = (base * tint * 255).to(torch.uint8)
    model = SimCLR(_Pixels(3, 8), _ColourBlind(3 * 8 * 8))
    table = augmentation_probe(model, images, size=8, hidden=32, seed=0)
    assert set(table) == {"colour", "rotation", "noise"}
    for task, row in table.items():
        assert set(row) == {"h", "z", "chance"}
        assert row["h"] > 0.9, (task, row)          # the pixels show every transformation
        assert row["z"] < row["h"] - 0.2, (task, row)
    assert table["rotation"]["chance"] < 0.35


def test_augmentation_probe_skips_colour_for_one_channel_images():
    model = SimCLR(_Pixels(1, 8), ProjectionHead(64, 4, kind="linear"))
    images = (torch.rand(80, 1, 8, 8) * 255).to(torch.uint8)
    assert set(augmentation_probe(model, images, size=8, hidden=8)) == {"rotation", "noise"}
