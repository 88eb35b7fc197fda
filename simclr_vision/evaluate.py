"""How good is a frozen representation: kNN, a linear probe, and what h keeps that z drops.

- `knn_accuracy`: weighted k-nearest-neighbour vote on cosine similarity (Wu et al. 2018, §3.4:
  each of the k neighbours votes for its class with weight exp(sim/τ)); needs no training, so
  it is also the monitor during pretraining. `cross_knn_accuracy` scores one labelled set
  against itself, leaving each row out of its own vote: what h knows of a catalog.
- `linear_probe`: multinomial logistic regression on frozen features (Chen et al. 2020, §B.6),
  fitted by scikit-learn.
- `augmentation_probe`: the paper's Table 3. A small MLP predicts which transformation was
  applied to an image — colour vs grayscale, rotation by 0/90/180/270°, original vs Gaussian
  noise — once from h and once from z = g(h). The projection head learns to be invariant to
  what the augmentations vary, so z should know less about rotation and noise than h does.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from simclr_vision.model import SimCLR, encode_images

__all__ = ["PAPER_TABLE_3", "augmentation_probe", "cross_knn_accuracy", "cross_knn_votes",
           "knn_accuracy", "knn_predict", "linear_probe"]

PAPER_TABLE_3 = {
    "colour": {"h": 0.993, "z": 0.974},
    "rotation": {"h": 0.676, "z": 0.256},
    "noise": {"h": 0.995, "z": 0.596},
}
"""Chen et al. 2020, Table 3 (ResNet-50 on ImageNet): MLP accuracy from h and from g(h)."""


def knn_predict(
    train_h: Tensor,
    train_y: Tensor,
    test_h: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Class predictions (Q,) for `test_h` (Q, d) by a vote of its k most cosine-similar rows
    of `train_h` (N, d) with labels `train_y` (N,), each weighted by exp(sim / temperature)."""
    if train_h.ndim != 2 or test_h.ndim != 2 or train_h.shape[1] != test_h.shape[1]:
        raise ValueError(
            f"need train_h (N, d) and test_h (Q, d), got {tuple(train_h.shape)} and "
            f"{tuple(test_h.shape)}"
        )
    if train_y.shape != (train_h.shape[0],):
        raise ValueError(
            f"train_y must have shape ({train_h.shape[0]},), got {tuple(train_y.shape)}"
        )
    if k <= 0 or temperature <= 0:
        raise ValueError(f"k and temperature must be positive, got {k} and {temperature}")
    k = min(k, train_h.shape[0])
    classes = int(train_y.max()) + 1 if num_classes is None else num_classes
    train = F.normalize(train_h.float(), dim=1)
    labels = train_y.to(train.device).long()
    preds = []
    for start in range(0, test_h.shape[0], chunk_size):
        query = F.normalize(test_h[start:start + chunk_size].float().to(train.device), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)                    # (q, k)
        votes = torch.zeros(query.shape[0], classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())  # (q, classes)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_h: Tensor,
    train_y: Tensor,
    test_h: Tensor,
    test_y: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Fraction of `test_h` whose weighted kNN vote (see `knn_predict`) equals `test_y`."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_h, train_y, test_h, k=k, temperature=temperature,
                       num_classes=classes)
    return (pred.cpu() == test_y.cpu().long()).float().mean().item()


def cross_knn_votes(
    h: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """(N, classes) leave-one-out votes of one labelled set h (N, d), y (N,): row i sums
    exp(sim / τ) of its k most cosine-similar other rows per class (as `knn_predict`)."""
    h = F.normalize(torch.tensor(_numpy(h), dtype=torch.float32), dim=1)
    y = torch.tensor(_numpy(y)).long()
    if h.ndim != 2 or y.shape != (h.shape[0],) or h.shape[0] < 2:
        raise ValueError(f"need h (N, d) with N >= 2 and y (N,), got {tuple(h.shape)} and "
                         f"{tuple(y.shape)}")
    if k <= 0 or temperature <= 0:
        raise ValueError(f"k and temperature must be positive, got {k} and {temperature}")
    k = min(k, h.shape[0] - 1)
    votes = torch.zeros(h.shape[0], int(y.max()) + 1)
    for start in range(0, h.shape[0], chunk_size):
        rows = torch.arange(start, min(start + chunk_size, h.shape[0]))
        sim = h[rows] @ h.T
        sim[torch.arange(len(rows)), rows] = -math.inf  # never its own neighbour
        top, idx = sim.topk(k, dim=1)
        votes[rows] = votes[rows].scatter_add_(1, y[idx], (top / temperature).exp())
    return votes


def cross_knn_accuracy(
    h: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Leave-one-out kNN accuracy of one labelled set h (N, d), y (N,): each row is classified
    by the weighted vote (`cross_knn_votes`) of its k most cosine-similar other rows."""
    votes = cross_knn_votes(h, y, k=k, temperature=temperature, chunk_size=chunk_size)
    return (votes.argmax(dim=1) == torch.tensor(_numpy(y)).long()).float().mean().item()


def linear_probe(
    train_h: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_h: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    *,
    max_iter: int = 1000,
    c: float = 1.0,
) -> float:
    """Test accuracy of logistic regression fitted on standardized frozen features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=c))
    clf.fit(_numpy(train_h), _numpy(train_y))
    return float(clf.score(_numpy(test_h), _numpy(test_y)))


def augmentation_probe(
    model: SimCLR,
    images: Tensor,
    *,
    size: int,
    noise_std: float = 0.1,
    hidden: int = 256,
    test_fraction: float = 0.3,
    batch_size: int = 512,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy of an MLP predicting each transformation from h and from z.

    Each image (uint8 (N, C, H, W)) gets one random transformation per task, uniformly among
    its classes: colour vs grayscale (only for 3-channel images), rotation by k·90°, and
    original vs additive Gaussian noise of std `noise_std` (on the [0, 1] scale). Returns
    ``{task: {"h": acc, "z": acc, "chance": majority-class rate}}`` on a held-out split.
    """
    gen = torch.Generator().manual_seed(seed)
    tasks = {"rotation": _rotate, "noise": lambda x, y, g: _add_noise(x, y, noise_std, g)}
    if images.shape[1] == 3:
        tasks = {"colour": _grayscale, **tasks}
    classes = {"colour": 2, "rotation": 4, "noise": 2}
    out = {}
    for task, transform in tasks.items():
        y = torch.randint(classes[task], (images.shape[0],), generator=gen)
        h, z = encode_images(model, images, size=size, batch_size=batch_size, device=device,
                             transform=lambda x, idx, t=transform, y=y: t(x, y[idx], gen))
        result = {"chance": float(torch.bincount(y).max()) / len(y)}
        for name, feats in (("h", h), ("z", z)):
            x_tr, x_te, y_tr, y_te = train_test_split(
                _numpy(feats), y.numpy(), test_size=test_fraction, random_state=seed, stratify=y
            )
            mlp = make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=300, random_state=seed),
            )
            with warnings.catch_warnings():
                # A probe reports what it reaches in its budget; unconverged is not an error.
                warnings.simplefilter("ignore", ConvergenceWarning)
                mlp.fit(x_tr, y_tr)
            result[name] = float(mlp.score(x_te, y_te))
        out[task] = result
    return out


def _grayscale(x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
    """Rows with y = 1 become grayscale (ITU-R 601 luma in all three channels)."""
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
    return torch.where(y.to(x.device).bool().view(-1, 1, 1, 1), luma, x)


def _rotate(x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
    """Row i rotated by y_i · 90° (square images)."""
    out = x.clone()
    y = y.to(x.device)
    for quarter in range(1, 4):
        rows = y == quarter
        out[rows] = torch.rot90(x[rows], quarter, dims=(2, 3))
    return out


def _add_noise(x: Tensor, y: Tensor, std: float, gen: torch.Generator) -> Tensor:
    """Rows with y = 1 get N(0, std²) pixel noise, clipped back to [0, 1]."""
    noise = torch.randn(x.shape, generator=gen).to(x.device) * std
    return torch.where(y.to(x.device).bool().view(-1, 1, 1, 1), (x + noise).clamp(0, 1), x)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
