"""SimCLR on Fashion-MNIST: does pretraining beat the same encoder at random initialisation?

Side by side on the 10,000 test images, with the 60,000 training images as the kNN memory and
the probe's training set:

    raw pixels            kNN on the flattened pixels (the baseline the encoder must beat)
    random init           the encoder's h before any training
    SimCLR pretrained     the encoder's h after `--minutes` (CPU) or `--epochs` of pretraining

kNN is Wu et al.'s weighted vote (k=200, τ=0.1, cosine); `--linear-probe` adds logistic
regression on frozen h, `--augmentation-probe` the h-vs-z table (Chen et al. 2020, Table 3).
`--profile-steps N` times augmentation, forward+backward and the loss separately.

    python benchmarks/bench_simclr_fmnist.py --minutes 10                       # CPU, narrow
    python benchmarks/bench_simclr_fmnist.py --device cuda --arch resnet18 \\
        --image-size 32 --epochs 100 --batch-size 512 --linear-probe --augmentation-probe

Needs torch, kornia, numpy, scikit-learn, tqdm (not polars, faiss or mlflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simclr_vision.augment import SimCLRAugment
from simclr_vision.data import FASHION_MNIST_DIRS, find_fashion_mnist, load_idx
from simclr_vision.evaluate import (
    PAPER_TABLE_3,
    augmentation_probe,
    knn_accuracy,
    linear_probe,
)
from simclr_vision.model import SimCLR, encode_images
from simclr_vision.pretrain import PretrainConfig, pretrain
from twotower.contrastive import nt_xent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="Fashion-MNIST idx folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet_narrow")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--optimizer", default="lars")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=None, help="default: fit --minutes")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="CPU budget: epochs are chosen from a measured step time")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--linear-probe", action="store_true")
    parser.add_argument("--augmentation-probe", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    folder = args.data or find_fashion_mnist()
    if folder is None:
        sys.exit(f"Fashion-MNIST not found in {[str(p) for p in FASHION_MNIST_DIRS]}; "
                 "pass --data (Debian: apt-get install dataset-fashion-mnist)")
    train, test = load_idx(folder, "train"), load_idx(folder, "test")
    device = torch.device(args.device)
    cfg = PretrainConfig(
        arch=args.arch, width=args.width, image_size=args.image_size, epochs=1,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        temperature=args.temperature, strength=args.strength, device=args.device,
        compile=args.compile, knn_every=0, checkpoint_dir=args.checkpoint_dir,
    )
    results: dict[str, object] = {"config": {k: v for k, v in vars(args).items()
                                             if k not in ("data", "json")}}

    started = time.perf_counter()
    pixels = knn_accuracy(train.images.flatten(1).float(), train.labels,
                          test.images.flatten(1).float(), test.labels)
    print(f"raw pixels       kNN {pixels:.4f}  ({time.perf_counter() - started:.0f} s)")
    results["raw_pixels"] = {"knn": pixels}

    torch.manual_seed(cfg.seed)
    random_model = cfg.build_model(in_channels=1).to(device)
    results["random_init"] = _score(random_model, train, test, cfg, args, "random init")

    if args.profile_steps:
        results["profile"] = _profile(random_model, train.images, cfg, args.profile_steps)

    epochs = args.epochs or _epochs_for(args.minutes, random_model, train.images, cfg)
    cfg = dataclasses.replace(cfg, epochs=epochs, knn_every=max(1, epochs // 5),
                              knn_bank_size=10_000, knn_query_size=2_000)
    print(f"pretraining {args.arch} for {epochs} epochs of {len(train)} images "
          f"(batch {cfg.batch_size}, lr {cfg.peak_lr:.3g}, {args.device})")
    started = time.perf_counter()
    result = pretrain(train.images, cfg, labels=train.labels, monitor=(test.images, test.labels))
    seconds = time.perf_counter() - started
    images_per_s = epochs * (len(train) // cfg.batch_size) * cfg.batch_size / seconds
    print(f"pretrained in {seconds / 60:.1f} min, {images_per_s:.0f} training images/s "
          f"(two views each)")
    results["pretrain"] = {"epochs": epochs, "minutes": seconds / 60,
                           "images_per_s": images_per_s, "history": result.history}
    results["pretrained"] = _score(result.model, train, test, cfg, args, "SimCLR pretrained")
    gain = results["pretrained"]["knn"] - results["random_init"]["knn"]
    print(f"\nkNN gain of pretraining over random init: {100 * gain:+.2f} points "
          f"(raw pixels {pixels:.4f})")

    if args.augmentation_probe:
        table = augmentation_probe(result.model, test.images, size=cfg.image_size,
                                   device=device)
        results["augmentation_probe"] = table
        print("\naugmentation probe (MLP accuracy)    h       z      paper h  paper z")
        for task, row in table.items():
            paper = PAPER_TABLE_3[task]
            print(f"  {task:<10} (chance {row['chance']:.2f})       {row['h']:.3f}   "
                  f"{row['z']:.3f}   {paper['h']:.3f}    {paper['z']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _score(model: SimCLR, train, test, cfg: PretrainConfig, args, name: str) -> dict:
    started = time.perf_counter()
    train_h, _ = encode_images(model, train.images, size=cfg.image_size, device=cfg.device)
    test_h, _ = encode_images(model, test.images, size=cfg.image_size, device=cfg.device)
    scores = {"knn": knn_accuracy(train_h, train.labels, test_h, test.labels)}
    if args.linear_probe:
        scores["linear_probe"] = linear_probe(train_h, train.labels, test_h, test.labels)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
    print(f"{name:<16} {shown}  ({time.perf_counter() - started:.0f} s)")
    return scores


def _step(model: SimCLR, augment: SimCLRAugment, x: torch.Tensor, cfg: PretrainConfig) -> None:
    views = torch.cat([augment(x), augment(x)])
    _, z = model(views)
    z1, z2 = z.float().chunk(2)
    nt_xent(z1, z2, temperature=cfg.temperature).backward()


def _epochs_for(minutes: float, model: SimCLR, images: torch.Tensor,
                cfg: PretrainConfig) -> int:
    """Epochs that fit in `minutes`, from the time of a few measured steps."""
    augment = SimCLRAugment(cfg.image_size, strength=cfg.strength)
    x = images[:cfg.batch_size].to(cfg.device)
    _step(model, augment, x, cfg)
    started = time.perf_counter()
    for _ in range(3):
        _step(model, augment, x, cfg)
    per_step = (time.perf_counter() - started) / 3
    model.zero_grad(set_to_none=True)
    steps_per_epoch = images.shape[0] // cfg.batch_size
    return max(1, round(minutes * 60 / (per_step * steps_per_epoch)))


def _profile(model: SimCLR, images: torch.Tensor, cfg: PretrainConfig, steps: int) -> dict:
    """Seconds per step in augmentation, forward+backward and the loss, each timed alone."""
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    augment = SimCLRAugment(cfg.image_size, strength=cfg.strength)
    x = images[:cfg.batch_size].to(device)
    memory_format = torch.channels_last if cuda else torch.preserve_format
    model = model.to(memory_format=memory_format)

    def timed(fn) -> float:
        fn()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    views = torch.cat([augment(x), augment(x)]).contiguous(memory_format=memory_format)

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            _, z = model(views)
        z.float().square().mean().backward()

    z = torch.randn(2 * cfg.batch_size, cfg.proj_dim, device=device, requires_grad=True)
    parts = {
        "augment": timed(lambda: (augment(x), augment(x))),
        "forward_backward": timed(forward_backward),
        "loss": timed(lambda: nt_xent(*z.chunk(2), temperature=cfg.temperature).backward()),
    }
    model.zero_grad(set_to_none=True)
    total = sum(parts.values())
    print("time per step: " + ", ".join(f"{k} {1000 * v:.1f} ms ({100 * v / total:.0f}%)"
                                        for k, v in parts.items()))
    return parts


if __name__ == "__main__":
    main()
