"""Stage: pretrain the SimCLR image encoder on the product images.

    python -m pipelines.pretrain_vision --source CATALOG.parquet --run-dir runs/demo
    torchrun --nproc-per-node 8 -m pipelines.pretrain_vision --source ... --device cuda

Reads any image source `simclr_vision.data.load_images` knows (a catalog Parquet, an idx
folder such as Fashion-MNIST, an .npz, an image folder), trains with `simclr_vision.pretrain`,
and writes `<run_dir>/pretrain_vision/` — the checkpoint `last.pt` (resumed from when present),
`config.json` and `history.json` — with params, per-step loss, per-epoch loss and kNN accuracy
and the checkpoint tracked in MLflow. The checkpoint records its images' source and stamp
(`twotower.files.source_stamp`): a folder trained on other images, or on a source changed
since, is refused with both named rather than silently kept.

Images of one size are trained on as they are. A source whose images differ in size (a real
catalog) is resized, antialiased, to `--pretrain.image-size`: the size `embed_catalog` resizes
the catalog to for this checkpoint, so training and embedding see the same pixels. `--resize`
sets the size for every source instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.config import parse_config, save_config
from pipelines.runtime import distributed_device, is_main
from pipelines.tracking import stage_run
from simclr_vision.data import load_images
from simclr_vision.pretrain import PretrainConfig, pretrain
from twotower.files import atomic_path, stamped

STAGE = "pretrain_vision"


@dataclass
class PretrainVisionConfig:
    """Pretrain the SimCLR image encoder (stage `pretrain_vision`)."""

    source: str
    """Images: a catalog Parquet, an idx folder (Fashion-MNIST), an .npz or an image folder."""
    run_dir: str = "runs/demo"
    """The pipeline's run folder; this stage writes `<run_dir>/pretrain_vision/`."""
    split: str = "train"
    """Split to train on, for sources that have splits (idx folders)."""
    monitor_split: str | None = None
    """Labelled split of the same source for the kNN monitor (e.g. test); None: held-out train."""
    skip_bad: bool = False
    """Skip unreadable images (counted) instead of stopping."""
    resize: int | None = None
    """Resize every image to this side; None: resize mixed sizes only, to pretrain.image_size."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """SimCLR settings; the stage sets their `device` and `checkpoint_dir` (its folder)."""

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize <= 0:
            raise ValueError(f"resize must be a positive side in pixels or None, got {self.resize}")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / STAGE

    @property
    def inputs(self) -> tuple[str | Path, ...]:
        """The files and folders this stage reads: `pipelines.stages` redoes it when one changes."""
        return (self.source,)


def run(cfg: PretrainVisionConfig) -> dict[str, Any]:
    """Train, checkpoint every epoch, and return the last epoch's metrics and the checkpoint."""
    with distributed_device(cfg.device) as device:
        train_cfg = dataclasses.replace(cfg.pretrain, device=device,
                                        checkpoint_dir=str(cfg.out_dir), data=stamped(*cfg.inputs))
        cfg = dataclasses.replace(cfg, pretrain=train_cfg)
        load = partial(load_images, cfg.source, size=cfg.resize,
                       size_if_mixed=cfg.pretrain.image_size)
        images = load(split=cfg.split, skip_bad=cfg.skip_bad)
        monitor = None
        if cfg.monitor_split is not None:
            test = load(split=cfg.monitor_split)
            monitor = (test.images, test.labels) if test.labels is not None else None
        tracking = stage_run(STAGE, cfg, cfg.run_dir) if is_main() else contextlib.nullcontext()
        with tracking as tracker:
            result = pretrain(images.images, cfg.pretrain, labels=images.labels,
                              monitor=monitor, log=tracker.log if tracker else None,
                              label=STAGE)
            summary = {"checkpoint": str(result.checkpoint), "images": len(images),
                       "image_shape": list(images.images.shape[1:]),  # (C, H, W) trained on
                       "skipped": len(images.skipped), **result.history[-1]}
            if tracker is not None:
                with atomic_path(cfg.out_dir / "history.json") as tmp:
                    tmp.write_text(json.dumps(result.history, indent=2) + "\n")
                save_config(cfg, cfg.out_dir / "config.json")  # last: a failure keeps the old
                tracker.artifact(cfg.out_dir / "history.json")
                tracker.artifact(result.checkpoint, folder="checkpoint")
        return summary


def main(argv: list[str] | None = None) -> None:
    summary = run(parse_config(PretrainVisionConfig, argv))
    if is_main():
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":  # one-line errors and --threads, as `twotower pretrain_vision`
    import sys

    from pipelines.cli import main as cli

    cli(["pretrain_vision", *sys.argv[1:]])
