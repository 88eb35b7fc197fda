"""Side by side: SimCLR augmentation throughput, batched on a device vs per image in a DataLoader.

Three implementations make two augmented views of every image (Chen et al. 2020, Appendix A:
random resized crop, flip p=0.5, colour jitter p=0.8 at strength s, grayscale p=0.2, and a
Gaussian blur p=0.5 above 64 px), on the same images:

    SimCLRAugment   simclr_vision.augment.SimCLRAugment on batches of --batch uint8 images,
                    on --device (the images are moved there once, before timing).
    kornia modules  the same pipeline as kornia.augmentation modules (RandomResizedCrop in
                    its batched "resample" mode, RandomHorizontalFlip, ColorJitter,
                    RandomGrayscale, RandomGaussianBlur) on the same batches: the obvious way
                    to build it on kornia, which SimCLRAugment replaces with kornia's functional
                    ops and its own colour jitter.
    PIL DataLoader  what SimCLR repositories write (torchvision is not available here, so its
                    transforms are written out below with PIL): a Dataset whose __getitem__ turns
                    one image into two views with a per-image transform, in a
                    torch.utils.data.DataLoader with --workers worker processes. Its batches stay
                    on the CPU (a training loop would still copy them to the GPU).

Throughput is in views per second (two views per image), from the median of --repeats timed
passes over --images images after one untimed pass; the implementations take turns in every
round, so load from other processes on a shared machine falls on all of them alike. CUDA work
is synchronised before the clock stops.

A second table times one view of one batch stage by stage (cumulative: crop, then + flip, ...)
for SimCLRAugment and the kornia modules, to show where kornia's modules spend their time:
RandomResizedCrop's per-image perspective matrices, the whole-batch transform and blend of
every module with p < 1, and ColorJitter's HSV round trip for the hue.

Images: Fashion-MNIST (28 x 28 gray) from ../shared/data/fashion-mnist when present, else random
RGB; --data picks one. Needs torch, numpy, pillow and kornia; the repo need not be installed.

    python benchmarks/bench_augment.py --device cpu --markdown
    python benchmarks/bench_augment.py --device cuda --data random-rgb --size 96
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import simclr_vision` uninstalled

from benchmarks.args import positive
from benchmarks.machine import cpu_model
from benchmarks.tables import markdown_table, plain_table
from simclr_vision.augment import BLUR_AUTO_MAX_SIZE, SimCLRAugment

FASHION_MNIST = (Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
                 / "train-images-idx3-ubyte.gz")
RANDOM_RGB_SIDE = 32
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
BLUR_SIGMA = (0.1, 2.0)
TARGETS = {"cpu": 2.0, "cuda": 20.0}
"""SimCLRAugment views/s over PIL DataLoader views/s that the project aims for, by device."""


# ---------------------------------------------------------------------------------------------
# Images.


def load_images(data: str, count: int) -> tuple[np.ndarray, str]:
    """uint8 (N, H, W) gray or (N, H, W, 3) RGB images, and a description of them."""
    if data == "auto":
        data = "fashion-mnist" if FASHION_MNIST.exists() else "random-rgb"
    if data == "fashion-mnist":
        if not FASHION_MNIST.exists():
            raise SystemExit(f"--data fashion-mnist: {FASHION_MNIST} is missing")
        with gzip.open(FASHION_MNIST, "rb") as f:
            raw = f.read()
        magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
        if magic != 2051:
            raise SystemExit(f"{FASHION_MNIST} is not an idx3 image file (magic {magic})")
        images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)
        images = np.resize(images, (count, rows, cols))  # repeats the set if count > n
        return images, f"Fashion-MNIST train images, {rows}x{cols} gray"
    rng = np.random.default_rng(0)
    side = RANDOM_RGB_SIDE
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    return images, f"random uint8 images, {side}x{side} RGB"


def as_batch_tensor(images: np.ndarray) -> Tensor:
    """(N, H, W[, 3]) uint8 array → (N, C, H, W) uint8 tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# The per-image reference: torchvision's transforms written with PIL.


class PILSimCLRTransform:
    """One random view of a PIL image, as torchvision's SimCLR pipeline makes it.

    RandomResizedCrop (torchvision's get_params: 10 tries, then a centre crop), flip p=0.5,
    ColorJitter p=0.8 (a random order per image; saturation and hue only for RGB, as
    torchvision's are no-ops on gray images), RandomGrayscale p=0.2, GaussianBlur p=0.5 above
    64 px, ToTensor.
    """

    def __init__(self, size: int, strength: float) -> None:
        self.size = size
        self.jitter = 0.8 * strength
        self.hue = 0.2 * strength
        self.blur = size > BLUR_AUTO_MAX_SIZE

    def __call__(self, img: Image.Image) -> Tensor:
        img = img.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(img))
        if random.random() < 0.5:
            img = ImageOps.mirror(img)
        if random.random() < 0.8:
            img = self.color_jitter(img)
        if img.mode == "RGB" and random.random() < 0.2:
            img = ImageOps.grayscale(img).convert("RGB")
        if self.blur and random.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*BLUR_SIGMA)))
        array = np.asarray(img, dtype=np.float32) / 255
        return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))

    @staticmethod
    def crop_box(img: Image.Image) -> tuple[int, int, int, int]:
        width, height = img.size
        for _ in range(10):
            area = width * height * random.uniform(*SCALE)
            aspect = math.exp(random.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                return left, top, left + w, top + h
        w, h = width, height
        if width / height < RATIO[0]:
            h = round(width / RATIO[0])
        elif width / height > RATIO[1]:
            w = round(height * RATIO[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def color_jitter(self, img: Image.Image) -> Image.Image:
        low = max(0.0, 1 - self.jitter)
        steps: list[Callable[[Image.Image], Image.Image]] = [
            lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(low, 1 + self.jitter)),
            lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(low, 1 + self.jitter)),
        ]
        if img.mode == "RGB":
            steps += [
                lambda im: ImageEnhance.Color(im).enhance(random.uniform(low, 1 + self.jitter)),
                lambda im: shift_hue(im, random.uniform(-self.hue, self.hue)),
            ]
        random.shuffle(steps)
        for step in steps:
            img = step(img)
        return img


def shift_hue(img: Image.Image, turns: float) -> Image.Image:
    """torchvision's PIL adjust_hue: add to the H channel of HSV, wrapping around."""
    h, s, v = img.convert("HSV").split()
    shifted = np.asarray(h, dtype=np.uint8) + np.uint8(round(turns * 255) % 256)  # wraps mod 256
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")


class TwoViews(Dataset):
    """SimCLR repositories' Dataset: each item is two random views of one image."""

    def __init__(self, images: np.ndarray, transform: PILSimCLRTransform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = Image.fromarray(self.images[index])
        return self.transform(img), self.transform(img)


# ---------------------------------------------------------------------------------------------
# The batched pipelines.


def kornia_modules(size: int, strength: float, channels: int, stages: int) -> nn.Module:
    """The first `stages` steps of the pipeline as kornia.augmentation modules."""
    b, rgb = 0.8 * strength, channels == 3
    steps: list[nn.Module] = [
        K.RandomResizedCrop((size, size), scale=SCALE, ratio=RATIO, cropping_mode="resample"),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(b, b, b if rgb else 0.0, 0.2 * strength if rgb else 0.0, p=0.8),
    ]
    if rgb:
        steps.append(K.RandomGrayscale(p=0.2))
    if size > BLUR_AUTO_MAX_SIZE:
        kernel = max(3, round(0.1 * size) // 2 * 2 + 1)
        steps.append(K.RandomGaussianBlur((kernel, kernel), BLUR_SIGMA, p=0.5))
    return nn.Sequential(*steps[:stages])


def stage_names(size: int, channels: int) -> list[str]:
    names = ["crop", "+ flip", "+ colour jitter"]
    if channels == 3:
        names.append("+ grayscale")
    if size > BLUR_AUTO_MAX_SIZE:
        names.append("+ blur")
    return names


def simclr_augment(size: int, strength: float, channels: int, stages: int) -> SimCLRAugment:
    """SimCLRAugment with only its first `stages` steps on (all of them: the default)."""
    names = stage_names(size, channels)
    on = set(names[:stages])
    return SimCLRAugment(
        size, strength=strength,
        flip=0.5 if "+ flip" in on else 0.0,
        jitter=0.8 if "+ colour jitter" in on else 0.0,
        grayscale=0.2 if "+ grayscale" in on else 0.0,
        blur=0.5 if "+ blur" in on else 0.0,
    )


def batched(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """uint8 batch → float views, for a module that takes float images in [0, 1] or uint8."""
    if isinstance(module, SimCLRAugment):
        return module
    return lambda x: module(x.to(torch.float32).div_(255))


# ---------------------------------------------------------------------------------------------
# Timing.


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(steps: dict[Any, Callable[[], object]], device: str,
                        repeats: int) -> dict[Any, float]:
    """Median wall time of each step over `repeats` rounds, after one untimed call of each.

    Each round times every step once, in turn, so that load from other processes on a shared
    machine falls on all of them alike rather than on whichever ran at the wrong moment.
    """
    times: dict[Any, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def batched_pass(augment: Callable[[Tensor], Tensor], data: Tensor,
                 batch: int) -> Callable[[], None]:
    """One shuffled pass over `data` (N, C, H, W) uint8 on its device, two views per image."""
    def one_pass() -> None:
        order = torch.randperm(data.shape[0], device=data.device)
        for start in range(0, data.shape[0], batch):
            x = data[order[start:start + batch]]
            augment(x), augment(x)

    return one_pass


def loader_pass(images: np.ndarray, size: int, strength: float, batch: int,
                workers: int) -> Callable[[], None]:
    """One pass of the PIL DataLoader over `images`, two views per image."""
    loader = DataLoader(TwoViews(images, PILSimCLRTransform(size, strength)), batch_size=batch,
                        shuffle=True, num_workers=workers, persistent_workers=workers > 0)

    def one_pass() -> None:
        for _views in loader:
            pass

    return one_pass


@dataclass(frozen=True)
class Row:
    impl: str
    where: str
    seconds: float


def describe_device(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


# ---------------------------------------------------------------------------------------------
# Report.


def throughput_rows(results: list[Row], images: int, batch: int) -> list[list[str]]:
    views = 2 * images
    reference = next(r.seconds for r in results if r.impl == "PIL DataLoader")
    rows = [["impl", "runs on", "views/s", "ms per batch (2 views)", "vs PIL DataLoader"]]
    for r in results:
        rows.append([r.impl, r.where, f"{views / r.seconds:,.0f}",
                     f"{1e3 * r.seconds * batch / images:.1f}", f"{reference / r.seconds:.2f}x"])
    return rows


def stage_rows(names: Sequence[str], ours: Sequence[float], theirs: Sequence[float]
               ) -> list[list[str]]:
    rows = [["stages (cumulative)", "SimCLRAugment ms", "kornia modules ms", "kornia / ours"]]
    for name, a, b in zip(names, ours, theirs, strict=True):
        rows.append([name, f"{1e3 * a:.1f}", f"{1e3 * b:.1f}", f"{b / a:.2f}x"])
    return rows


def report(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    images, description = load_images(args.data, args.images)
    data = as_batch_tensor(images).to(args.device)  # (N, C, H, W) uint8
    channels = data.shape[1]
    print(f"SimCLR views: {description}, {args.images} images -> 2 views of {args.size}x"
          f"{args.size}, strength {args.strength}, batch {args.batch}")
    print(f"device {args.device}: {describe_device(args.device)}, {torch.get_num_threads()} torch "
          f"threads; PIL DataLoader: {args.workers} workers on the CPU; torch {torch.__version__}")
    print(f"time: median of {args.repeats} timed passes after one untimed pass, the "
          "implementations taking turns")

    names = stage_names(args.size, channels)
    full = len(names)
    passes = {
        "SimCLRAugment": batched_pass(simclr_augment(args.size, args.strength, channels, full),
                                      data, args.batch),
        "kornia modules": batched_pass(
            batched(kornia_modules(args.size, args.strength, channels, full)), data, args.batch),
        "PIL DataLoader": loader_pass(images, args.size, args.strength, args.batch,
                                      args.workers),
    }
    seconds = interleaved_medians(passes, args.device, args.repeats)
    where = {"PIL DataLoader": f"cpu, {args.workers} workers"}
    results = [Row(name, where.get(name, args.device), t) for name, t in seconds.items()]

    one_batch = data[: args.batch]
    stage_steps = {}
    for stages, name in enumerate(names, start=1):
        for impl, module in (
            ("ours", simclr_augment(args.size, args.strength, channels, stages)),
            ("kornia", kornia_modules(args.size, args.strength, channels, stages)),
        ):
            augment = batched(module)
            stage_steps[name, impl] = lambda a=augment: a(one_batch)
    stage_repeats = max(args.repeats, 5)
    stage_seconds = interleaved_medians(stage_steps, args.device, stage_repeats)
    ours = [stage_seconds[name, "ours"] for name in names]
    theirs = [stage_seconds[name, "kornia"] for name in names]

    throughput = throughput_rows(results, args.images, args.batch)
    stages = stage_rows(names, ours, theirs)
    print("\n" + plain_table(throughput))
    print(f"\none view of one batch of {one_batch.shape[0]}, stage by stage "
          f"(median of {stage_repeats}):")
    print(plain_table(stages))
    ratio = seconds["PIL DataLoader"] / seconds["SimCLRAugment"]
    target = TARGETS[args.device]
    print(f"\ntarget ({args.device}) SimCLRAugment >= {target:g}x PIL DataLoader views/s: "
          f"{ratio:.2f}x -> {'HOLDS' if ratio >= target else 'FAILS'}")
    if args.markdown:
        print("\n" + markdown_table(throughput) + "\n\n" + markdown_table(stages))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=positive, default=512)
    parser.add_argument("--size", type=positive, default=32, help="output side in pixels")
    parser.add_argument("--images", type=positive, default=10240, help="images per pass")
    parser.add_argument("--data", choices=("auto", "fashion-mnist", "random-rgb"), default="auto",
                        help="auto: Fashion-MNIST when ../shared/data has it, else random RGB")
    parser.add_argument("--strength", type=float, default=0.5,
                        help="colour strength s (the paper's CIFAR-10 setting: 0.5)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--repeats", type=positive, default=3, help="timed passes per pipeline")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    report(parse_args(argv))


if __name__ == "__main__":
    main()
