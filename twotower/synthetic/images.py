"""Procedural product images: a category's silhouette filled with a pattern in a colour.

The synthetic shop's products need pictures from which an image encoder can learn what
shoppers choose by (category and pattern) while colour, position, scale, tilt and background
vary as nuisances. Drawn in numpy, all images at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["CATEGORY_NAMES", "COLOUR_NAMES", "PATTERN_NAMES", "render_images"]

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A shape or pattern: object coordinates u (right), v (down), both (n, S, S) → bool mask."""


def _radius(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v)


def _shirt(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sleeves = (v > -0.42) & (v < -0.16) & (np.abs(u) < 0.48)
    return sleeves | ((np.abs(u) < 0.22) & (v > -0.42) & (v < 0.46))


def _trousers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    band = (v > -0.46) & (v < -0.28) & (np.abs(u) < 0.3)
    legs = (v >= -0.28) & (v < 0.46) & (np.abs(u) < 0.3) & (np.abs(u) > 0.06)
    return band | legs


def _dress(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v > -0.45) & (v < 0.45) & (np.abs(u) < 0.06 + 0.4 * (v + 0.45))


def _shoe(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sole = (v > 0.08) & (v < 0.34) & (np.abs(u) < 0.46)
    return sole | ((u > -0.46) & (u < -0.04) & (v > -0.4) & (v <= 0.08))


def _bag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    handle = (v < -0.08) & (np.abs(_radius(u, v + 0.08) - 0.22) < 0.05)
    return handle | ((np.abs(u) < 0.4) & (v >= -0.08) & (v < 0.42))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(_radius(u, v) - 0.34) < 0.1


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    angle = np.arctan2(v, u)
    return _radius(u, v) < 0.2 + 0.27 * (0.5 + 0.5 * np.cos(5 * angle + np.pi / 2)) ** 2


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) < 0.12) & (np.abs(v) < 0.46)) | ((np.abs(v) < 0.12) & (np.abs(u) < 0.46))


_PERIOD = 0.22
"""Pattern period in object units (about 4 to 6 pixels on a 32-pixel image)."""


def _frac(x: np.ndarray) -> np.ndarray:
    return x / _PERIOD - np.floor(x / _PERIOD)


def _solid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.ones(u.shape, dtype=bool)


def _stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(v) < 0.5


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _radius(_frac(u) - 0.5, _frac(v) - 0.5) < 0.3


def _checks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u) < 0.5) ^ (_frac(v) < 0.5)


def _diagonal(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac((u + v) / math.sqrt(2)) < 0.5


def _grid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u) < 0.3) | (_frac(v) < 0.3)


_SHAPES: tuple[Mask, ...] = (_shirt, _trousers, _dress, _shoe, _bag, _ring, _star, _cross)
_PATTERNS: tuple[Mask, ...] = (_solid, _stripes, _dots, _checks, _diagonal, _grid)
CATEGORY_NAMES = ("shirt", "trousers", "dress", "shoe", "bag", "ring", "star", "cross")
"""Procedural category c is the silhouette CATEGORY_NAMES[c]."""
PATTERN_NAMES = ("solid", "stripes", "dots", "checks", "diagonal", "grid")
"""Procedural pattern p is the fill PATTERN_NAMES[p]."""
COLOUR_NAMES = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown",
                "white")
"""Colour k is COLOUR_NAMES[k], RGB `_PALETTE[k]` with a little jitter per image."""
_PALETTE = np.array([
    (220, 40, 40), (240, 140, 20), (235, 215, 40), (50, 170, 60), (30, 165, 165),
    (40, 90, 225), (140, 60, 200), (240, 110, 180), (150, 95, 50), (240, 240, 240),
], dtype=np.float64)


def render_images(
    category: np.ndarray,
    pattern: np.ndarray,
    colour: np.ndarray,
    *,
    size: int = 32,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw products: (n,) category, pattern, colour indices → (n, 3, size, size) uint8.

    The silhouette of CATEGORY_NAMES[c], filled with PATTERN_NAMES[p] (the pattern's "on"
    pixels in the colour, the rest in a darker shade of it), tilted by up to ±20°, scaled to
    60–90 % of the image and centred within ±12 % of the middle, over a background of smooth
    grey-ish noise plus pixel noise. All images are drawn at once in numpy.
    """
    n = len(category)
    for name, values, count in (("category", category, len(_SHAPES)),
                                ("pattern", pattern, len(_PATTERNS)),
                                ("colour", colour, len(_PALETTE))):
        values = np.asarray(values)
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be ({n},) integers like category, got {values.shape}")
        if n and (values.min() < 0 or values.max() >= count):
            raise ValueError(f"{name} indices must lie in [0, {count}), "
                             f"got {values.min()} to {values.max()}")
    centre = rng.uniform(0.38, 0.62, size=(n, 2)) * size  # (n, 2) x, y in pixels
    scale = rng.uniform(0.6, 0.9, size=n) * size  # pixels per object unit
    tilt = rng.uniform(-0.35, 0.35, size=n)
    shade = np.clip(_PALETTE[colour] + rng.normal(0.0, 12.0, size=(n, 3)), 0, 255)  # (n, 3)
    background = _background(n, size, rng)  # (n, 3, S, S)

    # float32 from here: the (n, 3, S, S) arrays are the cost, and halving them halves it.
    pixel = np.arange(size, dtype=np.float32) + 0.5
    dx = pixel[None, None, :] - centre[:, 0, None, None].astype(np.float32)  # (n, 1, S)
    dy = pixel[None, :, None] - centre[:, 1, None, None].astype(np.float32)  # (n, S, 1)
    cos = (np.cos(tilt) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(tilt) / scale).astype(np.float32)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (n, S, S) object coordinates
    inside, on = np.zeros(u.shape, dtype=bool), np.zeros(u.shape, dtype=bool)
    for k in np.unique(category):
        rows = category == k
        inside[rows] = _SHAPES[k](u[rows], v[rows])
    for k in np.unique(pattern):
        rows = pattern == k
        on[rows] = _PATTERNS[k](u[rows], v[rows])

    brightness = np.where(on, np.float32(1.0), np.float32(0.45))[:, None]  # (n, 1, S, S)
    fill = shade.astype(np.float32)[:, :, None, None] * brightness  # (n, 3, S, S)
    picture = np.where(inside[:, None], fill, background)
    picture += 6.0 * rng.standard_normal(picture.shape, dtype=np.float32)  # pixel noise
    return np.clip(np.rint(picture, out=picture), 0, 255, out=picture).astype(np.uint8)


def _background(n: int, size: int, rng: np.random.Generator, coarse: int = 4) -> np.ndarray:
    """(n, 3, S, S) float32: a grey level and tint per image plus smooth colour noise.

    The noise is a (coarse × coarse) grid per channel, upsampled bilinearly to S × S.
    """
    level = rng.uniform(70.0, 190.0, size=(n, 1, 1, 1)) + rng.normal(0.0, 8.0, size=(n, 3, 1, 1))
    grid = rng.normal(0.0, 22.0, size=(n, 3, coarse, coarse)).astype(np.float32)
    position = np.linspace(0.0, coarse - 1.0, size)  # bilinear interpolation matrix (S, coarse)
    up = np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(coarse)[None, :]))
    up = up.astype(np.float32)
    return (up @ grid @ up.T) + level.astype(np.float32)
