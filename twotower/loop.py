"""The training loop both trainers share: `twotower.train.fit` and `simclr_vision.pretrain`.

A trainer supplies its step (one batch: forward, loss, backward, optimizer) and what it does
when an epoch begins and ends (its shuffle; its validation or monitor, its history); `Loop`
does the rest, the same way for both:

- seeding without global writes: `seeded(seed, device)` forks torch's global RNG around the
  model's initialisation, so it is reproducible and the caller's RNG is left as it was; the
  random draws of a step (id dropout, augmentations) come from a `torch.Generator` the loop
  seeds for each epoch from the trainer's (seed, epoch, rank) and hands to the step, so an
  epoch draws the same numbers whether or not the run was interrupted before it;
- `wrap(model, device)`: DistributedDataParallel under a process group (gradients averaged
  over ranks), the model itself in one process; `autocast(device, enabled)`: bf16 on CUDA;
- every `log_every` steps and at the end of every epoch, one host sync: the recent losses,
  averaged over ranks, are checked (a non-finite one stops training on every rank, naming the
  step) and passed with the step's other metrics to `log(metrics, step)`, where `step` counts
  the optimizer steps taken;
- checkpoints: after every epoch rank 0 writes the trainer's state, the epoch and the config
  to `last.pt` atomically; `Checkpoint.load` reads it back with `weights_only=True` and
  refuses it when the config differs in any field but the trainer's runtime fields, the ones
  that change how a run executes, not what it computes (`data`, the inputs, is never one of
  them);
- the console (rank 0, `twotower.progress`): a bar per epoch named after the run
  (`train_two_tower/image epoch 3/30`) with the loss and what the trainer's epoch end shows
  (its validation recall), "resuming <run> from epoch N" when it starts from a checkpoint, and
  Ctrl-C, with a checkpoint, turned into `Interrupted`, which names the run and the last
  epoch saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from twotower.distributed import mean_over_ranks, rank, world_size
from twotower.files import atomic_path
from twotower.progress import Bar, Interrupted, note, progress

__all__ = ["CHECKPOINT", "Checkpoint", "ConfigChanged", "Epoch", "Log", "Loop", "autocast",
           "changed_fields", "diverged", "resolve_device", "seeded", "wrap"]

Log = Callable[[Mapping[str, float], int], None]
Step = Callable[[int, torch.Generator], tuple[Tensor, Mapping[str, Tensor | float]]]
"""`step(i, generator) -> (loss, metrics)`: train on the epoch's i-th batch, drawing any
randomness from `generator`; the loss (a 0-d tensor) and other metrics to log (0-d tensors or
floats)."""
CHECKPOINT = "last.pt"


def resolve_device(name: str) -> torch.device:
    """The device `name` names; "cuda" alone is the current CUDA device, which torchrun sets per
    rank."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Within the block torch's CPU RNG and `device`'s (on CUDA) start from `seed`; after it
    they are as they were. Every rank initialises the same weights."""
    cuda = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel under a process group, `model` itself otherwise."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on CUDA when `enabled`; does nothing on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")


def diverged(name: str, what: str, step: int, epoch: int) -> FloatingPointError:
    """The error that stops a run whose loss stopped being finite at (0-based) `step`."""
    return FloatingPointError(f"{name} training diverged at step {step} (epoch {epoch}): "
                              f"{what}; lower the learning rate or check the inputs")


@dataclass(frozen=True)
class Epoch:
    """What the loop hands a trainer at the end of an epoch."""

    number: int
    """1-based."""
    losses: Tensor
    """(steps,) this rank's loss at every step of the epoch, on the device."""
    logged: list[float]
    """The loss logged at each sync: the mean over ranks of the last `log_every` steps (every
    step's own with log_every 1)."""


@dataclass(frozen=True)
class Loop:
    """How the shared loop runs a trainer's epochs."""

    name: str
    """What is trained, for messages ("two-tower", "SimCLR")."""
    device: torch.device
    epochs: int
    """The last epoch (1-based) a run may reach."""
    steps: int
    """Steps per epoch, the same on every rank (full batches only)."""
    log_every: int = 1
    """Steps between syncs: loss logs and non-finite checks (each waits for the device)."""
    log: Log | None = None
    """Called with the loss and the step's metrics at every sync, on every rank."""
    progress: bool = True
    """Show a progress bar per epoch and the resume line (rank 0)."""
    checkpoint: Checkpoint | None = None
    """Written after every epoch."""
    label: str | None = None
    """What the bar, the resume line and `Interrupted` call this run (a pipeline stage,
    "train_two_tower/image"); None: `name`."""

    def run(
        self,
        model: nn.Module,
        step: Step,
        *,
        epoch_seed: Callable[[int], int],
        end_epoch: Callable[[Epoch], Mapping[str, float] | None],
        state: Callable[[], dict[str, Any]],
        begin_epoch: Callable[[int], None] = lambda epoch: None,
        start: int = 0,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Epochs start + 1 .. `epochs` (`start` epochs are done), until `stop()` says so.

        Each: begin_epoch(epoch), `model` in training mode, `steps` steps with a generator
        seeded by epoch_seed(epoch), end_epoch(...) (what it returns is shown on the epoch's
        bar beside the loss), and `state()` (the trainer's part of the checkpoint) saved.
        Ctrl-C raises `Interrupted` naming the last epoch saved (with a checkpoint).
        """
        label = self.label or self.name
        shown = self.progress and rank() == 0
        if start and shown:
            note(f"resuming {label} from epoch {start}")
        epoch = start
        try:
            while epoch < self.epochs and not stop():
                epoch += 1
                begin_epoch(epoch)
                model.train()
                generator = torch.Generator(self.device).manual_seed(epoch_seed(epoch))
                with progress(total=self.steps, desc=f"{label} epoch {epoch}/{self.epochs}",
                              unit="step", enabled=shown) as bar:
                    finished = self._epoch(epoch, step, generator, bar)
                    extra = end_epoch(finished) or {}
                    bar.set_postfix(loss=f"{finished.logged[-1]:.4f}",
                                    **{name: f"{value:.4f}" for name, value in extra.items()})
                if self.checkpoint is not None:
                    self.checkpoint.save({**state(), "epoch": epoch})
        except KeyboardInterrupt as err:
            if self.checkpoint is None:
                raise
            raise Interrupted(label, self.checkpoint.epoch(start)) from err

    def _epoch(self, epoch: int, step: Step, generator: torch.Generator, bar: Bar) -> Epoch:
        losses: list[Tensor] = []
        logged: list[float] = []
        first = (epoch - 1) * self.steps  # steps taken before this epoch
        for i in range(self.steps):
            loss, metrics = step(i, generator)
            losses.append(loss.detach().float())
            bar.update()
            done = first + i + 1
            if done % self.log_every == 0 or i == self.steps - 1:
                values = self._sync(losses[-self.log_every:], metrics, done, epoch)
                logged.append(values["loss"])
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.log is not None:
                    self.log(values, done)
        return Epoch(number=epoch, losses=torch.stack(losses), logged=logged)

    def _sync(self, window: list[Tensor], metrics: Mapping[str, Tensor | float], done: int,
              epoch: int) -> dict[str, float]:
        """The window's mean loss and the metrics on the host, over ranks, in one transfer;
        raises on the first step of the window whose loss is not finite."""
        tensors = [name for name, value in metrics.items() if isinstance(value, Tensor)]
        values = mean_over_ranks(torch.stack([*window, *(metrics[name].detach().float()
                                                         for name in tensors)]))
        k = len(window)
        host = torch.cat([values, values[:k].mean().reshape(1)]).tolist()
        for j, loss in enumerate(host[:k]):
            if not math.isfinite(loss):
                raise diverged(self.name, f"the loss is {loss}", done - k + j, epoch)
        synced = dict(zip(tensors, host[k:-1], strict=True))
        return {"loss": host[-1], **{name: synced.get(name, value)
                                     for name, value in metrics.items()}}


# -------------------------------------------------------------------- checkpoints
class ConfigChanged(ValueError):
    """A checkpoint was written under a config that differs in a field a resume may not change."""

    def __init__(self, path: Path, field: str, saved: Any, now: Any) -> None:
        super().__init__(f"{path} was trained with {field}={saved!r}, not {now!r}; resume with "
                         "the same config or remove the checkpoint")
        self.path, self.field, self.saved, self.now = path, field, saved, now


def changed_fields(saved: Mapping[str, Any], now: Mapping[str, Any],
                   runtime: Collection[str]) -> list[str]:
    """The (dotted, for nested configs) fields whose values differ between two `asdict`
    configs, a field absent from one counting as None, leaving out those whose top-level name
    is in `runtime`; `data` first, the rest in alphabetical order."""
    old, new = _flat(saved), _flat(now)
    changed = [k for k in old.keys() | new.keys()
               if k.split(".")[0] not in runtime and old.get(k) != new.get(k)]
    return sorted(changed, key=lambda k: (k != "data", k))


@dataclass(frozen=True)
class Checkpoint:
    """A run's `last.pt`, the config (a dataclass) it belongs to, and the fields of that config
    a resumed run may change."""

    path: Path
    config: Any
    runtime: frozenset[str]

    @classmethod
    def of(cls, config: Any, runtime: frozenset[str]) -> Checkpoint | None:
        """`checkpoint_dir/last.pt` of a config, None when its checkpoint_dir is None."""
        if config.checkpoint_dir is None:
            return None
        return cls(Path(config.checkpoint_dir) / CHECKPOINT, config, runtime)

    def save(self, state: Mapping[str, Any]) -> None:
        """Write {"config": asdict(config), **state} atomically, on rank 0 alone."""
        if rank() != 0:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"config": dataclasses.asdict(self.config), **state}, tmp)

    def epoch(self, start: int) -> int:
        """The last epoch `last.pt` holds, as the file says (what the next run resumes from),
        read without loading its tensors: 0 without a file; `start` (the epoch this run
        resumed from) for a file written before checkpoints recorded their epoch."""
        if not self.path.is_file():
            return 0
        saved = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        return int(saved.get("epoch", start))

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """What `save` wrote (tensors on `device`), or None without a checkpoint; raises
        `ConfigChanged` naming the first changed field when the config differs in one that is
        not a runtime field."""
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location=device, weights_only=True)
        now = dataclasses.asdict(self.config)
        changed = changed_fields(saved["config"], now, self.runtime)
        if changed:
            name = changed[0]
            old, new = _flat(saved["config"]), _flat(now)
            raise ConfigChanged(self.path, name, old.get(name), new.get(name))
        return saved


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys: {"tower": {"dim": 8}} → {"tower.dim": 8}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
