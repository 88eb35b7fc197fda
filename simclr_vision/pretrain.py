"""SimCLR pretraining (Chen et al. 2020): two augmented views per image, NT-Xent on z.

`pretrain(images, PretrainConfig(...))` runs the paper's recipe on a uint8 image tensor:
LARS at lr = 0.3·B/256 (B the global batch), linear warmup then cosine decay, the two views of
a batch encoded in one forward pass, `twotower.nt_xent` on the projections. On CUDA it uses
bf16 autocast and channels_last; `torch.compile` is optional. Under `torchrun` each rank takes
its `DistributedSampler` share, `nt_xent` gathers negatives from every rank, gradients are
averaged by DDP (SyncBN optional), and rank 0 writes the checkpoints.

A checkpoint is written atomically after every epoch, and `resume=True` continues from it
exactly: the per-epoch shuffling and augmentation draws are seeded from (seed, epoch, rank), so
a run killed after epoch e and resumed ends with the same weights as one never interrupted.
The loop around the step (seeding, DDP, autocast, the non-finite check, logging, checkpoints)
is `twotower.loop`'s, shared with the two-tower trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from simclr_vision.augment import SimCLRAugment
from simclr_vision.evaluate import knn_accuracy
from simclr_vision.model import SimCLR, build_simclr, encode_images
from simclr_vision.optim import LARS, param_groups, warmup_cosine
from twotower.contrastive import nt_xent
from twotower.distributed import rank, world_size
from twotower.heads import HeadKind
from twotower.loop import (
    Checkpoint,
    ConfigChanged,
    Epoch,
    Log,
    Loop,
    autocast,
    diverged,
    resolve_device,
    seeded,
    wrap,
)

__all__ = ["PretrainConfig", "PretrainResult", "load_simclr", "pretrain"]


RUNTIME_FIELDS = frozenset({"device", "compile", "checkpoint_dir", "resume", "log_every",
                            "knn_every", "knn_bank_size", "knn_query_size", "progress"})
"""The `PretrainConfig` fields a resumed run may change (`twotower.loop.Checkpoint`): how it
executes, not what it computes. Not `epochs`: the cosine schedule is laid out over them."""


@dataclass
class PretrainConfig:
    """SimCLR pretraining; defaults follow the paper's CIFAR-10 setting (Chen et al. 2020, B.9)."""

    arch: str = "resnet18"
    """Encoder: resnet18, resnet34, resnet50 or resnet_narrow (see simclr_vision.encoder)."""
    width: int | None = None
    """Channels of the first stage; None keeps the architecture's own (64, narrow 16)."""
    small_images: bool | None = None
    """3x3 stride-1 stem without max-pool; None chooses it for image_size <= 64."""
    head: HeadKind = "mlp"
    """Projection head g: mlp (the paper's), linear or none."""
    proj_dim: int = 128
    """Dimension of z."""
    image_size: int = 32
    """Side of the square views the encoder sees."""
    epochs: int = 100
    """Passes over the images."""
    batch_size: int = 512
    """Images per step over all ranks (each gives two views, so 2B - 2 negatives per view)."""
    optimizer: Literal["lars", "sgd", "adamw"] = "lars"
    """LARS as in the paper; momentum SGD or AdamW as alternatives."""
    lr: float | None = None
    """Peak learning rate; None means 0.3·B/256 for LARS and SGD, 1e-3·B/256 for AdamW."""
    weight_decay: float = 1e-6
    """L2 on weights (never on biases or BN parameters)."""
    momentum: float = 0.9
    """Momentum of LARS and SGD."""
    warmup_epochs: float | None = None
    """Linear warmup length; None means min(10, epochs / 10)."""
    temperature: float = 0.5
    """τ of NT-Xent."""
    min_crop: float = 0.08
    """Smallest random crop, as a share of the image's area (the paper's 0.08 for ImageNet).
    On 28 px product photos 0.3 keeps the garment's shape in every view: with τ 0.2 and batch
    128, 73.0 / 70.4 / 70.6% category kNN on the demo's three shops against 71.4 / 67.9 / 68.7%
    at 0.08 (benchmarks/README.md, "SimCLR on the demo's photos")."""
    strength: float = 0.5
    """Colour distortion strength s (0.5 for CIFAR-10 in the paper, 1.0 for ImageNet)."""
    blur: bool | None = None
    """Gaussian blur in the augmentation; None turns it on only above 64 px."""
    chunk_size: int | None = None
    """Row blocks for NT-Xent, to cap the (2B, 2B) logits' memory on very large batches."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    sync_bn: bool = False
    """Under DDP, batch-norm statistics over the global batch (the paper's global BN)."""
    knn_every: int = 1
    """Run the kNN monitor every this many epochs (0: never); needs labels."""
    knn_k: int = 200
    """Neighbours of the kNN monitor."""
    knn_bank_size: int = 10_000
    """Labelled training images in the kNN monitor's memory bank."""
    knn_query_size: int = 2_000
    """Labelled images the kNN monitor classifies."""
    log_every: int = 20
    """Steps between loss logs and non-finite checks (each check syncs with the device)."""
    checkpoint_dir: str | None = None
    """Where `last.pt` is written after every epoch; None: no checkpoints."""
    resume: bool = True
    """Continue from `checkpoint_dir/last.pt` when it exists."""
    device: str = "cpu"
    """torch device; "cuda" means the current CUDA device (set it per rank under torchrun)."""
    seed: int = 0
    """Seeds the weights, the shuffling and every augmentation draw."""
    data: str = ""
    """What the images are (the stage sets their source and its stamp): a checkpoint resumes
    only on the images it was trained on."""
    progress: bool = True
    """Show a progress bar (rank 0)."""

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 2 or self.image_size <= 0:
            raise ValueError(
                f"need epochs ≥ 1, batch_size ≥ 2 and image_size ≥ 1; got {self.epochs}, "
                f"{self.batch_size}, {self.image_size}"
            )
        if self.optimizer not in ("lars", "sgd", "adamw"):
            raise ValueError(f"optimizer must be 'lars', 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive or None (scaled from the batch), got {self.lr}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"
            )
        if self.temperature <= 0 or self.strength < 0 or self.log_every <= 0:
            raise ValueError("temperature and log_every must be positive and strength ≥ 0")
        if not 0 < self.min_crop <= 1:
            raise ValueError(f"min_crop must lie in (0, 1], got {self.min_crop}")

    @property
    def peak_lr(self) -> float:
        """The learning rate after warmup: `lr`, or the paper's linear scaling with the batch."""
        if self.lr is not None:
            return self.lr
        base = 1e-3 if self.optimizer == "adamw" else 0.3
        return base * self.batch_size / 256

    def build_model(self, in_channels: int) -> SimCLR:
        """The SimCLR model these settings describe, for images with `in_channels` channels."""
        small = self.image_size <= 64 if self.small_images is None else self.small_images
        return build_simclr(self.arch, in_channels=in_channels, width=self.width,
                            small_images=small, head=self.head, proj_dim=self.proj_dim)

    @property
    def warmup(self) -> float:
        """Warmup in epochs, resolved."""
        return min(10.0, self.epochs / 10) if self.warmup_epochs is None else self.warmup_epochs


@dataclass
class PretrainResult:
    """The trained model and what happened: one dict of metrics per epoch."""

    model: SimCLR
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def pretrain(
    images: Tensor,
    config: PretrainConfig | None = None,
    *,
    labels: Tensor | None = None,
    monitor: tuple[Tensor, Tensor] | None = None,
    log: Log | None = None,
    label: str | None = None,
) -> PretrainResult:
    """Pretrain a SimCLR model on uint8 images (N, C, H, W).

    Args:
        images: the unlabeled training images, uint8 (N, C, H, W), C = 1 or 3.
        config: the run's settings (`PretrainConfig()` if None).
        labels: (N,) class labels, used only by the kNN monitor's memory bank.
        monitor: (images, labels) the kNN monitor classifies; without it, held-out labelled
            training images are used. The monitor needs `labels`.
        log: `log(metrics, step)` callback, `step` the number of steps taken: loss and lr
            every `log_every` steps (on every rank), and per epoch loss, kNN accuracy and
            images/s (on rank 0).
        label: what the progress bar (with the loss and the kNN accuracy), the resume line and
            a Ctrl-C's `Interrupted` call the run (e.g. the pipeline stage; None: "SimCLR").

    Raises FloatingPointError naming the step when the loss stops being finite.
    """
    cfg = config or PretrainConfig()
    _check_images(images, labels)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    ranks, me = world_size(), rank()
    if cfg.batch_size % ranks:
        raise ValueError(f"batch_size {cfg.batch_size} must divide over {ranks} ranks")
    per_rank = cfg.batch_size // ranks
    if images.shape[0] < cfg.batch_size:
        raise ValueError(f"{images.shape[0]} images are fewer than one batch ({cfg.batch_size})")

    with seeded(cfg.seed, device):  # identical initial weights on every rank
        model = cfg.build_model(images.shape[1])
    if cfg.sync_bn and ranks > 1:
        if not cuda:
            raise ValueError("sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)

    sampler = DistributedSampler(range(images.shape[0]), num_replicas=ranks, rank=me,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = _optimizer(cfg, model)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        warmup_cosine, warmup_steps=round(cfg.warmup * steps_per_epoch), total_steps=total_steps,
    ))

    checkpoint = Checkpoint.of(cfg, RUNTIME_FIELDS)
    history: list[dict[str, float]] = []
    start_epoch = 0
    saved = _resume(checkpoint, device) if checkpoint is not None and cfg.resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start_epoch, history = saved["epochs_done"], list(saved["history"])

    net = wrap(model, device)
    if cfg.compile:
        net = torch.compile(net)

    augment = SimCLRAugment(cfg.image_size, strength=cfg.strength, scale=(cfg.min_crop, 1.0),
                            blur=cfg.blur)
    data = images.to(device)
    knn_sets = _knn_sets(images, labels, monitor, cfg) if cfg.knn_every else None
    order = torch.empty(0)  # this epoch's shuffle
    current, started = 0, 0.0  # this epoch's number and start time

    def begin_epoch(epoch: int) -> None:
        nonlocal order, current, started
        sampler.set_epoch(epoch - 1)
        order = torch.tensor(list(sampler), device=device)
        current, started = epoch, time.perf_counter()

    def step(i: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x = data[order[i * per_rank:(i + 1) * per_rank]]                   # (b, C, H, W) uint8
        views = torch.cat([augment(x, generator=generator), augment(x, generator=generator)])
        views = views.contiguous(memory_format=memory_format)            # (2b, C, S, S)
        with autocast(device, cfg.amp):
            _, z = net(views)                                              # (2b, proj_dim)
        z1, z2 = z.float().chunk(2)
        try:
            loss = nt_xent(z1, z2, temperature=cfg.temperature, chunk_size=cfg.chunk_size)
        except ValueError as err:  # the only data-dependent refusal: non-finite z
            raise diverged("SimCLR", str(err), (current - 1) * steps_per_epoch + i,
                           current) from err
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss, {"lr": schedule.get_last_lr()[0]}

    def end_epoch(epoch: Epoch) -> dict[str, float]:
        seconds = time.perf_counter() - started
        record = {
            "epoch": float(epoch.number),
            "epoch_loss": epoch.losses.mean().item(),
            "images_per_s": steps_per_epoch * cfg.batch_size / seconds,
        }
        if knn_sets is not None and (epoch.number % cfg.knn_every == 0
                                     or epoch.number == cfg.epochs):
            record["knn_accuracy"] = _knn_monitor(model, knn_sets, cfg)
        history.append(record)
        if log is not None and me == 0:
            log(record, epoch.number * steps_per_epoch)
        return {"knn": record["knn_accuracy"]} if "knn_accuracy" in record else {}

    def checkpoint_state() -> dict[str, Any]:
        return {"in_channels": model.encoder.in_channels, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "epochs_done": current, "history": history}

    loop = Loop(name="SimCLR", device=device, epochs=cfg.epochs, steps=steps_per_epoch,
                log_every=cfg.log_every, log=log, progress=cfg.progress, checkpoint=checkpoint,
                label=label)
    loop.run(model, step, epoch_seed=lambda epoch: _epoch_seed(cfg.seed, epoch - 1, me),
             begin_epoch=begin_epoch, end_epoch=end_epoch, state=checkpoint_state,
             start=start_epoch)
    return PretrainResult(model=model, history=history,
                          checkpoint=None if checkpoint is None else checkpoint.path)


def load_simclr(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[SimCLR, PretrainConfig]:
    """The SimCLR model saved in a pretraining checkpoint (in eval mode) and its config."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    cfg = PretrainConfig(**state["config"])
    model = cfg.build_model(state["in_channels"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def _optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=cfg.peak_lr, momentum=cfg.momentum)
    for group in groups:
        group.pop("lars")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.peak_lr)


def _epoch_seed(seed: int, epoch: int, me: int) -> int:
    """A distinct, reproducible augmentation seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch) * 4099 + me


def _knn_sets(
    images: Tensor, labels: Tensor | None, monitor: tuple[Tensor, Tensor] | None,
    cfg: PretrainConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """(bank images, bank labels, query images, query labels) for the kNN monitor, or None."""
    if labels is None:
        return None
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(images.shape[0], generator=gen)
    if monitor is None:
        query = order[:min(cfg.knn_query_size, images.shape[0] // 5)]
        bank = order[len(query):len(query) + cfg.knn_bank_size]
        return images[bank], labels[bank], images[query], labels[query]
    bank = order[:cfg.knn_bank_size]
    q_images, q_labels = monitor
    q = torch.randperm(q_images.shape[0], generator=gen)[:cfg.knn_query_size]
    return images[bank], labels[bank], q_images[q], q_labels[q]


def _knn_monitor(model: SimCLR, sets: tuple[Tensor, Tensor, Tensor, Tensor],
                 cfg: PretrainConfig) -> float:
    bank_x, bank_y, query_x, query_y = sets
    bank_h, _ = encode_images(model, bank_x, size=cfg.image_size, device=cfg.device)
    query_h, _ = encode_images(model, query_x, size=cfg.image_size, device=cfg.device)
    return knn_accuracy(bank_h, bank_y, query_h, query_y, k=cfg.knn_k)


def _resume(checkpoint: Checkpoint, device: torch.device) -> dict[str, Any] | None:
    """`checkpoint.load`, with images of another source named as such."""
    try:
        return checkpoint.load(device)
    except ConfigChanged as err:
        if err.field != "data":
            raise
        raise ValueError(
            f"{err.path} was trained on images from {err.saved or 'an unrecorded source'}, "
            f"not {err.now or 'unrecorded ones'}; point checkpoint_dir (the stage's run "
            "folder) elsewhere, or delete the checkpoint to train again"
        ) from err


def _check_images(images: Tensor, labels: Tensor | None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, C, H, W) with C = 1 or 3, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels is not None and labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
