"""SimCLRAugment: per-image randomness, seeding, the output contract, each step in isolation
(with naive per-image twins from kornia for the colour jitter), and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)

from simclr_vision.augment import (
    BLUR_AUTO_MAX_SIZE,
    SimCLRAugment,
    _color_jitter,
    _draw_crops,
    _shift_hue,
    resize_view,
)

SIZE = 16
OFF = {"flip": 0.0, "jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0}
"""Every random step off; with FULL the crop is the whole (square) image."""
FULL = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}


def images(batch: int = 6, channels: int = 3, height: int = 12, width: int = 12,
           seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), generator=gen,
                         dtype=torch.uint8)


def seeded(aug: SimCLRAugment, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return aug(x, generator=torch.Generator(x.device).manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Randomness and seeding.


def test_identical_images_get_different_parameters():
    x = images(batch=8)[:1].expand(8, -1, -1, -1).contiguous()
    out = seeded(SimCLRAugment(SIZE), x).flatten(1)
    distinct = torch.cdist(out, out) > 1e-3  # (8, 8)
    assert distinct.sum() == 8 * 7, "two views of one image came out identical"


def test_same_seed_same_output_different_seed_different_output():
    aug, x = SimCLRAugment(SIZE, blur=0.5, solarize=0.5), images()
    assert torch.equal(seeded(aug, x, 0), seeded(aug, x, 0))
    assert not torch.allclose(seeded(aug, x, 0), seeded(aug, x, 1))


def test_seeded_call_leaves_global_rng_untouched():
    aug, x = SimCLRAugment(SIZE), images()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    seeded(aug, x)
    assert torch.equal(torch.get_rng_state(), before)


def test_unseeded_call_follows_global_rng():
    aug, x = SimCLRAugment(SIZE), images()
    torch.manual_seed(5)
    first = aug(x)
    torch.manual_seed(5)
    assert torch.equal(aug(x), first)
    assert not torch.equal(aug(x), first)


def test_one_generator_advances_between_calls():
    aug, x = SimCLRAugment(SIZE), images()
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(aug(x, generator=gen), aug(x, generator=gen))


# ---------------------------------------------------------------------------------------------
# Output contract.


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height, width", [(9, 9), (10, 30), (40, 40)])
def test_output_shape_dtype_range(channels, height, width):
    x = images(channels=channels, height=height, width=width)
    for aug in (SimCLRAugment(SIZE, blur=1.0, solarize=0.5), SimCLRAugment(SIZE, strength=2.5)):
        out = seeded(aug, x)
        assert out.shape == (6, channels, SIZE, SIZE)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_input_is_not_modified():
    x = images()
    copy = x.clone()
    seeded(SimCLRAugment(SIZE, blur=1.0, solarize=1.0), x)
    assert torch.equal(x, copy)


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_view(channels):
    x = images(channels=channels, height=10, width=30)
    out = resize_view(x, SIZE)
    assert out.shape == (6, channels, SIZE, SIZE) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(resize_view(x, SIZE), out)
    # A same-size resize is the identity up to the uint8 → [0, 1] scaling.
    same = images(channels=channels, height=SIZE, width=SIZE)
    torch.testing.assert_close(resize_view(same, SIZE), same.float() / 255)


# ---------------------------------------------------------------------------------------------
# Each step isolated.


@pytest.mark.parametrize("side", [12, 24])
def test_everything_off_equals_resize_view(side):
    x = images(height=side, width=side)
    out = seeded(SimCLRAugment(SIZE, **FULL, **OFF), x)
    # The crop does not antialias; resize_view does when it shrinks (side 24 → 16).
    torch.testing.assert_close(out, resize_view(x, SIZE, antialias=False), atol=1e-5, rtol=0)


def test_flip():
    x = images()
    out = seeded(SimCLRAugment(SIZE, **FULL, **{**OFF, "flip": 1.0}), x)
    torch.testing.assert_close(out, resize_view(x, SIZE).flip(-1), atol=1e-5, rtol=0)


def test_crop_takes_a_random_square_of_the_requested_area():
    # Channel 0 holds each pixel's column, channel 1 its row, in steps of 4 grey levels.
    ramp = torch.arange(64, dtype=torch.uint8) * 4
    x = torch.zeros(16, 3, 64, 64, dtype=torch.uint8)
    x[:, 0], x[:, 1] = ramp[None, :], ramp[:, None]
    aug = SimCLRAugment(32, scale=(0.25, 0.25), ratio=(1.0, 1.0), **OFF)
    out = seeded(aug, x) * 255 / 4  # the input coordinates each output pixel sampled
    # A quarter of the area with width = height is 32 x 32 pixels, sampled one to one.
    columns, rows = out[:, 0], out[:, 1]  # (16, 32, 32)
    left, top = columns[:, :1, :1], rows[:, :1, :1]
    steps = torch.arange(32.0)
    torch.testing.assert_close(columns - left, steps.expand(16, 32, 32), atol=1e-3, rtol=0)
    torch.testing.assert_close(rows - top, steps[:, None].expand(16, 32, 32), atol=1e-3, rtol=0)
    assert left.unique().numel() > 4 and top.unique().numel() > 4  # placed at random


def test_crop_boxes_follow_torchvision():
    torch.manual_seed(0)
    boxes = _draw_crops(4000, 30, 40, (0.08, 1.0), (3 / 4, 4 / 3))
    left, top, w, h = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= 40).all() and (top + h <= 30).all() and (w >= 1).all() and (h >= 1).all()
    area = w * h / 1200
    assert area.min() < 0.1 and area.max() > 0.9
    assert (w / h).min() > 0.6 and (w / h).max() < 1.5  # 3/4 .. 4/3 up to rounding
    # No candidate of a (1, 1) area fits a 10 x 30 image with ratio (1, 1): centred 10 x 10.
    fallback = _draw_crops(3, 10, 30, (1.0, 1.0), (1.0, 1.0))
    torch.testing.assert_close(fallback, torch.tensor([[10.0, 0.0, 10.0, 10.0]]).expand(3, 4))


def test_grayscale_makes_channels_equal():
    x = images()
    out = seeded(SimCLRAugment(SIZE, **FULL, **{**OFF, "grayscale": 1.0}), x)
    torch.testing.assert_close(out, rgb_to_grayscale(resize_view(x, SIZE)).expand(-1, 3, -1, -1))


def test_solarize_inverts_pixels_at_or_above_half():
    x = images()
    view = resize_view(x, SIZE)
    out = seeded(SimCLRAugment(SIZE, **FULL, **{**OFF, "solarize": 1.0}), x)
    torch.testing.assert_close(out, torch.where(view >= 0.5, 1 - view, view), atol=1e-5, rtol=0)


def test_blur_auto_off_up_to_64_px_and_smooths_above():
    assert SimCLRAugment(BLUR_AUTO_MAX_SIZE).p["blur"] == 0.0
    assert SimCLRAugment(BLUR_AUTO_MAX_SIZE + 1).p["blur"] == 0.5
    assert SimCLRAugment(16, blur=0.3).p["blur"] == 0.3
    aug = SimCLRAugment(96)
    assert aug.blur_kernel == 11  # 10% of 96 px, rounded to an odd size
    x = images(height=96, width=96)
    out = seeded(SimCLRAugment(96, **FULL, **{**OFF, "blur": 1.0}), x)
    view = resize_view(x, 96)

    def roughness(v: torch.Tensor) -> torch.Tensor:  # (B,) mean absolute horizontal gradient
        return (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3))

    assert (roughness(out) < roughness(view)).all()


def test_jitter_with_strength_zero_is_identity():
    x = images()
    out = seeded(SimCLRAugment(SIZE, strength=0.0, **FULL, **{**OFF, "jitter": 1.0}), x)
    torch.testing.assert_close(out, resize_view(x, SIZE), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_changes_images_and_keeps_channels(channels):
    x = images(channels=channels)
    out = seeded(SimCLRAugment(SIZE, **FULL, **{**OFF, "jitter": 1.0}), x)
    view = resize_view(x, SIZE)
    assert out.shape == view.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert ((out - view).abs().flatten(1).amax(1) > 1e-3).all()


def test_jitter_draws():
    aug = SimCLRAugment(SIZE, strength=0.5)
    torch.manual_seed(0)
    rows, factors, order = aug._draw_jitter(4000, 3)
    assert 0.77 < rows.shape[0] / 4000 < 0.83  # p = 0.8
    low = torch.tensor([0.6, 0.6, 0.6, -0.1])  # 1 - 0.8·s, ..., -0.2·s
    high = torch.tensor([1.4, 1.4, 1.4, 0.1])
    assert ((factors >= low) & (factors <= high)).all()
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand_as(order))
    assert order.unique(dim=0).shape[0] == 24  # every order occurs: one per image
    _, _, gray_order = aug._draw_jitter(100, 1)
    assert gray_order.shape[1] == 2 and set(gray_order.flatten().tolist()) == {0, 1}


def naive_jitter(x: torch.Tensor, rows, factors, order) -> torch.Tensor:
    """torchvision's ColorJitter one image at a time with kornia's functional ops."""
    steps = (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_saturation_with_gray_subtraction,
        lambda v, f: adjust_hue(v, f * 2 * math.pi),
    )
    out = x.clone()
    for i, row in enumerate(rows.tolist()):
        image = out[row : row + 1]
        for step in order[i].tolist():
            image = steps[step](image, factors[i, step : step + 1])
        out[row] = image[0]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_jitter_equals_per_image_loop(channels):
    x = torch.rand(40, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    params = SimCLRAugment(SIZE, strength=1.5)._draw_jitter(40, channels)
    expected = naive_jitter(x, *params)
    _color_jitter(x, *params)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_shift_hue_equals_kornia_adjust_hue():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=gen)
    x[:4] = x[:4, :1]  # gray images
    x[4:8, :, :4] = x[4:8, :, :4].round()  # saturated primaries and secondaries
    x[8:12, 1] = x[8:12, 0]  # ties between the largest channels
    turns = torch.cat([torch.tensor([0.0, 0.5, -0.5, 0.25]), torch.rand(60, generator=gen) - 0.5])
    expected = adjust_hue(x, turns * 2 * math.pi)
    torch.testing.assert_close(_shift_hue(x, turns), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Argument checks.


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 3, 8, 8), "uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), r"\(B, C, H, W\)"),
        (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "1 .* or 3 .* channels"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "channels"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "non-empty"),
        ([[0]], "torch.Tensor"),
    ],
)
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        SimCLRAugment(SIZE)(bad)
    with pytest.raises(ValueError, match=match):
        resize_view(bad, SIZE)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 1}, "size"),
        ({"size": 32.0}, "size"),
        ({"size": True}, "size"),
        ({"strength": -0.1}, "strength"),
        ({"strength": 3.0}, "strength"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"ratio": (4 / 3, 3 / 4)}, "ratio"),
        ({"flip": 1.5}, "flip"),
        ({"jitter": -0.1}, "jitter"),
        ({"blur": 2.0}, "blur"),
        ({"solarize": -1.0}, "solarize"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimCLRAugment(**{"size": SIZE, **kwargs})


def test_bad_resize_size_and_generator():
    with pytest.raises(ValueError, match="size"):
        resize_view(images(), 0)
    with pytest.raises(TypeError, match="generator"):
        SimCLRAugment(SIZE)(images(), generator=0)


# ---------------------------------------------------------------------------------------------
# CUDA.


@pytest.mark.gpu
def test_cuda_device_shape_reproducibility():
    aug = SimCLRAugment(SIZE, blur=0.5, solarize=0.5)
    x = images(batch=32).cuda()
    before = torch.cuda.get_rng_state(), torch.get_rng_state()
    out = seeded(aug, x)
    assert out.device == x.device and out.shape == (32, 3, SIZE, SIZE)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert torch.equal(seeded(aug, x), out)
    assert torch.equal(torch.cuda.get_rng_state(), before[0])
    assert torch.equal(torch.get_rng_state(), before[1])
    # Parameters are drawn on the CPU, so one CPU generator seed gives the same views on both.
    on_cuda = aug(x, generator=torch.Generator().manual_seed(0))
    on_cpu = aug(x.cpu(), generator=torch.Generator().manual_seed(0))
    assert on_cuda.device == x.device
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-3, rtol=0)
    assert aug(x).device == x.device
    assert resize_view(x, SIZE).device == x.device
