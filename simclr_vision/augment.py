"""SimCLR's augmentation family on a whole batch, on the batch's device (Chen et al. 2020, App. A).

Every image of a batch gets its own random parameters, drawn as tensors, with no Python loop
over images. The operations, in the paper's order (Appendix A and its torchvision listing):

    random resized crop   area fraction U(0.08, 1), aspect ratio log-uniform in (3/4, 4/3),
                          bilinear resize to size × size
    horizontal flip       p = 0.5
    colour jitter         p = 0.8: brightness, contrast, saturation 0.8·s, hue 0.2·s, the four
                          steps in a random order per image (torchvision's ColorJitter)
    random grayscale      p = 0.2
    Gaussian blur         p = 0.5, kernel ≈ 10% of size (odd), σ ~ U(0.1, 2.0); off by default
                          at size ≤ 64, the paper's CIFAR-10 setting
    solarize              optional, p = 0 by default (Grill et al. 2020): x ≥ 0.5 → 1 − x

s is the colour strength: 1.0 in the paper's ImageNet setting; its CIFAR-10 runs use 0.5. The
colour jitter is torchvision's: brightness multiplies, contrast blends with the mean gray level,
saturation blends with the grayscale image, hue rotates the HSV hue; each factor is drawn from
[max(0, 1 − x), 1 + x] (hue from [−x, x], in turns). One-channel images get the steps that
apply to them: brightness and contrast, and no grayscale.

Built on kornia's functional ops (`kornia.geometry.transform.remap` samples the crops;
`kornia.color.rgb_to_grayscale`, `kornia.filters.gaussian_blur2d`, `kornia.enhance.solarize`,
`kornia.geometry.transform.resize`) rather than on `kornia.augmentation`'s modules, which take
two to three times as long on CPU (benchmarks/bench_augment.py times both, stage by stage):
RandomResizedCrop builds its sampling grid from per-image perspective matrices, each module
with p < 1 transforms the whole batch and then blends it with the untouched one, and
ColorJitter's hue is a full HSV round trip (it also draws one step order per batch where
torchvision draws one per image). Here each step runs only on the rows its per-image gate
selects, the flip is folded into the crop's separable sampling grid, and the colour jitter is
in-place tensor arithmetic with torchvision's formulas, checked against kornia.enhance in the
tests.

Random parameters are drawn on the CPU from torch's global RNG, as kornia draws them. With a
`torch.Generator`, one seed is drawn from it and the pipeline runs inside
`torch.random.fork_rng` seeded with it: the result is reproducible, on CPU and CUDA, and the
caller's global RNG state is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import solarize
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import remap, resize
from torch import Tensor, nn

__all__ = ["BLUR_AUTO_MAX_SIZE", "SimCLRAugment", "resize_view"]

BLUR_AUTO_MAX_SIZE = 64
"""With `blur=None` the Gaussian blur is off up to this output size and p = 0.5 above it."""

BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


class SimCLRAugment(nn.Module):
    """SimCLR's random augmentation of a uint8 batch (Chen et al. 2020, Appendix A).

    Args:
        size: output height and width in pixels, at least 2.
        strength: colour strength s in [0, 2.5]: brightness, contrast and saturation factors
            within 1 ± 0.8·s, hue shift within ±0.2·s turns (at most half a turn).
        scale: range of the crop's area as a fraction of the image's, 0 < low <= high <= 1.
        ratio: range of the crop's width / height, 0 < low <= high.
        flip: probability of a horizontal flip.
        jitter: probability of the colour jitter.
        grayscale: probability of turning an RGB image gray (it keeps 3 channels).
        blur: probability of a Gaussian blur; None: 0.5 above `BLUR_AUTO_MAX_SIZE` px, else 0.
        solarize: probability of inverting the pixels at or above 0.5.

    `forward(images, generator=None)`: uint8 (B, C, H, W) with C in {1, 3}, on any device →
    float32 (B, C, size, size) in [0, 1] on the same device. The module has no parameters.
    """

    def __init__(
        self,
        size: int,
        *,
        strength: float = 1.0,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        jitter: float = 0.8,
        grayscale: float = 0.2,
        blur: float | None = None,
        solarize: float = 0.0,
    ) -> None:
        super().__init__()
        _check_size(size)
        if not 0.0 <= strength <= 2.5:
            raise ValueError(
                "strength must be in [0, 2.5] (the hue shift 0.2·strength is at most half a "
                f"turn), got {strength}"
            )
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        if blur is None:
            blur = 0.5 if size > BLUR_AUTO_MAX_SIZE else 0.0
        probabilities = {"flip": flip, "jitter": jitter, "grayscale": grayscale, "blur": blur,
                         "solarize": solarize}
        for name, p in probabilities.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {p}")
        self.size, self.strength, self.p = size, strength, probabilities
        self.scale, self.ratio = scale, ratio
        self.blur_kernel = max(3, round(0.1 * size) // 2 * 2 + 1)  # ≈ 10% of the side, odd
        # Factor ranges of brightness, contrast, saturation (multipliers) and hue (turns).
        b = 0.8 * strength
        self._low = torch.tensor([max(0.0, 1.0 - b)] * 3 + [-0.2 * strength])
        self._high = torch.tensor([1.0 + b] * 3 + [0.2 * strength])

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 (B, C, H, W) → float32 (B, C, size, size) in [0, 1], one random draw per image."""
        _check_images(images)
        if generator is None:
            return self._augment(images)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        cuda = [images.device.index] if images.device.type == "cuda" else []
        # fork_rng restores the CPU RNG and the listed CUDA device's RNG on exit; only those are
        # seeded (torch.manual_seed would reseed every CUDA device, restored or not).
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(images.device):
                    torch.cuda.manual_seed(seed)
            return self._augment(images)

    def _augment(self, images: Tensor) -> Tensor:
        batch, channels, height, width = images.shape
        boxes = _draw_crops(batch, height, width, self.scale, self.ratio)
        flipped = torch.rand(batch) < self.p["flip"]
        x = _crop(images.to(torch.float32).div_(255), boxes, flipped, self.size)
        # From here every step writes its rows back into x, this pipeline's own tensor.
        rgb = channels == 3
        _color_jitter(x, *self._draw_jitter(batch, channels))
        if rgb:
            _apply_to(x, _gate(batch, self.p["grayscale"]),
                      lambda v: rgb_to_grayscale(v).expand(-1, 3, -1, -1))
        if self.p["blur"] > 0:
            rows = _gate(batch, self.p["blur"])
            low, high = BLUR_SIGMA
            sigma = (low + (high - low) * torch.rand(rows.shape[0], 1)).expand(-1, 2)  # (n, 2)
            _apply_to(x, rows, gaussian_blur2d, (self.blur_kernel, self.blur_kernel), sigma,
                      border_type="reflect")
        if self.p["solarize"] > 0:
            _apply_to(x, _gate(batch, self.p["solarize"]), solarize, SOLARIZE_THRESHOLD)
        # Every step keeps [0, 1] up to rounding (the blur's weights sum to 1 ± ε).
        return x.clamp_(0.0, 1.0)

    def _draw_jitter(self, batch: int, channels: int) -> tuple[Tensor, Tensor, Tensor]:
        """Colour-jitter parameters, on the CPU: rows (n,) the images it applies to (each with
        probability `jitter`), factors (n, 4) and order (n, S): a random permutation per row of
        the S steps that apply (all four for RGB; brightness and contrast for one channel)."""
        rows = _gate(batch, self.p["jitter"])
        n = rows.shape[0]
        factors = self._low + (self._high - self._low) * torch.rand(n, 4)
        steps = ([0, 1, 2, 3] if channels == 3 else [0, 1]) if self.strength > 0 else []
        order = torch.tensor(steps, dtype=torch.long)[torch.rand(n, len(steps)).argsort(dim=1)]
        return rows, factors, order

    def extra_repr(self) -> str:
        probabilities = ", ".join(f"{name}={p}" for name, p in self.p.items())
        return f"size={self.size}, strength={self.strength}, {probabilities}"


def resize_view(images: Tensor, size: int, *, antialias: bool = True) -> Tensor:
    """uint8 (B, C, H, W) → float32 (B, C, size, size) in [0, 1], with no augmentation.

    The deterministic view for evaluation and embedding: the whole image, resized bilinearly
    (stretched if it is not square) on the crop's sampling grid (pixel centres to pixel
    centres), so it equals `SimCLRAugment`'s output with a full-image crop and every random
    step off. When it shrinks the image it is antialiased by default (a Gaussian pre-filter,
    kornia's `resize`); the training crops are not (as in kornia's RandomResizedCrop).
    """
    _check_size(size)
    _check_images(images)
    x = images.to(torch.float32).div_(255)
    x = resize(x, (size, size), interpolation="bilinear", align_corners=False, antialias=antialias)
    return x.clamp_(0.0, 1.0)


def _draw_crops(batch: int, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> Tensor:
    """Random crop boxes (B, 4) as (left, top, width, height) in pixels, drawn on the CPU.

    torchvision's RandomResizedCrop.get_params for a batch: ten candidates per image with area
    fraction U(scale) and log aspect ratio U(log ratio); the first that fits is placed
    uniformly at random; an image with none that fits gets the centred crop of the largest box
    whose aspect ratio is within `ratio`.
    """
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(batch, 10))
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * torch.rand(batch, 10))
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()  # (B, 10) each
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first candidate that fits
    found = fits.any(dim=1)
    fallback_w, fallback_h = float(width), float(height)
    if width / height < ratio[0]:
        fallback_h = float(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fallback_w = float(round(height * ratio[1]))
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    u = torch.rand(batch, 2)
    left = torch.where(found, (u[:, 0] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    top = torch.where(found, (u[:, 1] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    return torch.stack([left, top, w, h], dim=1)


def _crop(x: Tensor, boxes: Tensor, flipped: Tensor, size: int) -> Tensor:
    """Crop boxes (B, 4) out of x (B, C, H, W) and resize them to (size, size) bilinearly;
    mirror the images where `flipped` (B,). One batched `kornia.geometry.remap` call.

    Output pixel j samples the crop at left + (j + 0.5)·w/size − 0.5 (pixel centres map to
    pixel centres, like PIL and F.interpolate with align_corners=False), clamped to the image.
    The grid is separable, so it is built from (B, size) vectors; a flip reverses the columns.
    """
    batch, _, height, width = x.shape
    left, top, w, h = boxes.unbind(1)
    steps = torch.arange(size) + 0.5
    xs = left[:, None] + steps * (w / size)[:, None] - 0.5  # (B, size) source columns
    ys = top[:, None] + steps * (h / size)[:, None] - 0.5  # (B, size) source rows
    xs = torch.where(flipped[:, None], xs.flip(1), xs)
    # Normalized coordinates in grid_sample's align_corners=True convention: pixel p ↦ 2p/(n−1) − 1.
    gx = (xs * (2 / max(width - 1, 1)) - 1).to(x.device, non_blocking=True)
    gy = (ys * (2 / max(height - 1, 1)) - 1).to(x.device, non_blocking=True)
    return remap(x, gx[:, None, :].expand(batch, size, size),
                 gy[:, :, None].expand(batch, size, size),
                 padding_mode="border", align_corners=True, normalized_coordinates=True)


def _gate(batch: int, p: float) -> Tensor:
    """Indices (n,) of the images a step with probability p applies to; drawn on the CPU."""
    return (torch.rand(batch) < p).nonzero().squeeze(1)


def _apply_to(x: Tensor, rows: Tensor, step: Callable[..., Tensor], *args, **kwargs) -> None:
    """x[rows] = step(x[rows], *args, **kwargs), in place; tensor args are per-row, on the CPU.

    Only the selected rows are transformed: kornia's modules transform the whole batch and
    blend it with the input under the gate, which costs a full pass per step.
    """
    if rows.numel() == 0:
        return
    index = rows.to(x.device, non_blocking=True)
    args = tuple(a.to(x.device, non_blocking=True) if isinstance(a, Tensor) else a for a in args)
    x.index_copy_(0, index, step(x.index_select(0, index), *args, **kwargs))


def _color_jitter(x: Tensor, rows: Tensor, factors: Tensor, order: Tensor) -> None:
    """torchvision's ColorJitter on x[rows] (B, C, H, W), in place, each row in its own order.

    factors (n, 4): brightness, contrast, saturation, hue of each row; order (n, S): step ids.
    At each position of the order, each step runs on the rows that put it there.
    """
    for position in range(order.shape[1]):
        for step in order[:, position].unique().tolist():
            chosen = order[:, position] == step  # (n,)
            _apply_to(x, rows[chosen], _JITTER_STEPS[step], factors[chosen, step])


def _shift_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB images x (B, 3, H, W) in [0, 1] by `turns` (B,).

    torchvision's adjust_hue (RGB → HSV, shift, HSV → RGB) without building HSV. The value
    M = max and chroma c = max − min are kept; with h the shifted hue in sixths of a turn,
    in [0, 6), channel n ∈ (0, 1, 2) = (R, G, B) of the result is
        M − c · clamp(2 − ||h − 2n| − 3|, 0, 1),
    the HSV → RGB trapezoid. Only arithmetic, min and max: torch.where and comparisons cost
    several times more on CPU. Agrees with kornia.enhance.adjust_hue to ~1e-6.
    """
    r, g, b = x.unbind(1)  # (B, H, W) each
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # 1.0 where a channel is the largest, else 0.0 (value − channel is in [0, 1]); on ties
    # R wins over G over B, as in torchvision.
    is_r = 1 - torch.ceil(value - r)
    is_g = (1 - torch.ceil(value - g)).mul_(1 - is_r)
    # Hue in sixths, times the chroma: the largest channel's sector start (0, 2, 4) plus the
    # other two's difference. A gray pixel (chroma 0) gets hue 0; its result is `value`.
    from_b = (r - g).add_(chroma, alpha=4)
    hue = from_b + is_r * (g - b - from_b) + is_g * ((b - r).add_(chroma, alpha=2) - from_b)
    hue.div_(chroma.clamp_min(1e-12)).add_(6 * turns.to(x.dtype)[:, None, None])
    hue.sub_(torch.floor(hue / 6).mul_(6))  # now in [0, 6)
    offsets = torch.tensor([0.0, -2.0, -4.0], device=x.device)[:, None, None]  # −2n
    ramp = (hue[:, None] + offsets).abs_().sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
    return ramp.mul_(-chroma[:, None]).add_(value[:, None])  # (B, 3, H, W)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(f·x): torchvision's adjust_brightness, in place on x (B, C, H, W), factor (B,)."""
    return x.mul_(factor[:, None, None, None]).clamp_(0.0, 1.0)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(f·x + (1 − f)·mean gray level): torchvision's adjust_contrast, in place."""
    gray = rgb_to_grayscale(x) if x.shape[1] == 3 else x
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return x.lerp_(mean, 1 - factor[:, None, None, None]).clamp_(0.0, 1.0)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(f·x + (1 − f)·gray(x)): torchvision's adjust_saturation, in place on RGB x."""
    return x.lerp_(rgb_to_grayscale(x), 1 - factor[:, None, None, None]).clamp_(0.0, 1.0)


_JITTER_STEPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _brightness, _contrast, _saturation, _shift_hue,
)
"""The colour jitter's steps, in the order of the factor columns. Written as in-place tensor
arithmetic: kornia.enhance's equivalents allocate several temporaries per call and took about
three times as long on CPU; the tests check these against them."""


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer >= 2 (output side in pixels), got {size!r}")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 in [0, 255], got {images.dtype}; convert float images in "
            "[0, 1] with (x * 255).round().to(torch.uint8)"
        )
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (B, C, H, W), got {images.ndim} dimensions "
            f"{tuple(images.shape)}; add a batch dimension with images[None]"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have 1 (gray) or 3 (RGB) channels in dimension 1, got shape "
            f"{tuple(images.shape)}; channels-last input needs images.permute(0, 3, 1, 2)"
        )
    if images.numel() == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
