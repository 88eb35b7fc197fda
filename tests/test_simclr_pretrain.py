"""SimCLR pretraining: it learns, it resumes exactly, it stops loudly, it runs on two ranks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simclr_vision.pretrain import PretrainConfig, load_simclr, pretrain


def _patterns(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, size, size) images of 4 kinds (horizontal/vertical stripes, checks, a disc)
    with random period and phase plus noise: structure for SimCLR to find, labels for kNN."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    kind = torch.arange(n) % 4
    period = torch.randint(3, 6, (n, 1, 1), generator=g)
    phase = torch.randint(0, 4, (n, 1, 1), generator=g)
    stripes_h = (yy + phase) // period % 2
    stripes_v = (xx + phase) // period % 2
    checks = ((xx + phase) // period + yy // period) % 2
    disc = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (2 * period) ** 2).long()
    img = torch.stack([stripes_h, stripes_v, checks, disc])[kind, torch.arange(n)]
    noise = torch.rand(n, size, size, generator=g) * 0.3
    return ((img * 0.7 + noise) * 255).to(torch.uint8).unsqueeze(1), kind


IMAGES, LABELS = _patterns(384)
TINY = PretrainConfig(
    arch="resnet_narrow", width=8, image_size=16, epochs=2, batch_size=32, lr=1.0,
    log_every=4, knn_every=0, progress=False,
)


@pytest.mark.parametrize(("optimizer", "lr"), [("lars", 1.0), ("sgd", 0.3), ("adamw", 1e-2)])
def test_a_tiny_pretrain_lowers_the_loss(optimizer, lr):
    result = pretrain(IMAGES, dataclasses.replace(TINY, optimizer=optimizer, lr=lr))
    first, second = (h["epoch_loss"] for h in result.history)
    assert first < torch.log(torch.tensor(63.0)).item() + 0.05  # ≈ chance: log(2B − 1)
    assert second < first - 0.1, result.history
    for p in result.model.parameters():
        assert torch.isfinite(p).all()


def test_knn_monitor_and_log_callback(tmp_path):
    logged = []
    cfg = dataclasses.replace(TINY, epochs=1, knn_every=1, knn_k=10, knn_bank_size=200,
                              knn_query_size=64)
    result = pretrain(IMAGES, cfg, labels=LABELS, log=lambda m, s: logged.append((s, dict(m))))
    steps = len(IMAGES) // cfg.batch_size
    assert [s for s, m in logged if "loss" in m] == [4, 8, 12]
    assert logged[-1][0] == steps and "knn_accuracy" in logged[-1][1]
    assert 0.0 <= result.history[0]["knn_accuracy"] <= 1.0
    assert result.history[0]["images_per_s"] > 0


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=3, checkpoint_dir=str(tmp_path / "straight"))
    straight = pretrain(IMAGES, cfg).model.state_dict()

    steps = len(IMAGES) // cfg.batch_size

    def killed_in_epoch_two(metrics, step):
        if step > steps:
            raise KeyboardInterrupt("killed")

    cfg = dataclasses.replace(cfg, checkpoint_dir=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        pretrain(IMAGES, cfg, log=killed_in_epoch_two)
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert saved["epochs_done"] == 1
    result = pretrain(IMAGES, cfg)
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0]
    resumed = result.model.state_dict()
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["last.pt"]

    reloaded, config = load_simclr(tmp_path / "resumed" / "last.pt")
    assert not reloaded.training and config.epochs == 3
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, resumed[name]), name


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, checkpoint_dir=str(tmp_path))
    pretrain(IMAGES, cfg)
    with pytest.raises(ValueError, match=r"trained with temperature=0\.5, not 0\.2; resume with"):
        pretrain(IMAGES, dataclasses.replace(cfg, temperature=0.2))


def test_a_non_finite_loss_stops_with_the_step():
    cfg = dataclasses.replace(TINY, optimizer="sgd", lr=1e30, log_every=2)
    with pytest.raises(FloatingPointError, match=r"at step \d+ \(epoch \d\)"):
        pretrain(IMAGES, cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "need epochs ≥ 1"),
        ({"optimizer": "adam"}, "optimizer must be"),
        ({"warmup_epochs": 2}, r"warmup_epochs must be in \[0, epochs=2\)"),
        ({"lr": -1.0}, "lr must be positive"),
    ],
)
def test_bad_config_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        pretrain(IMAGES.float(), TINY)
    with pytest.raises(ValueError, match="labels must have shape"):
        pretrain(IMAGES, TINY, labels=LABELS[:10])
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain(IMAGES[:8], TINY)


def test_the_paper_learning_rate_scales_with_the_batch():
    assert PretrainConfig(batch_size=512).peak_lr == pytest.approx(0.6)
    assert PretrainConfig(batch_size=4096).peak_lr == pytest.approx(4.8)
    assert PretrainConfig(epochs=100).warmup == 10
    assert PretrainConfig(epochs=5).warmup == 0.5


def _ddp_worker(r: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    try:
        cfg = dataclasses.replace(TINY, epochs=1, checkpoint_dir=out_dir)
        result = pretrain(IMAGES, cfg)
        weights = {k: v.detach() for k, v in result.model.named_parameters()}
        torch.save({"weights": weights, "history": result.history},
                   Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    if not dist.is_available():
        pytest.skip("torch was built without torch.distributed")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # DDP averaged the gradients, so the weights stayed equal (BN running statistics are
    # per rank by design: each rank updates them from its own half of the batch).
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
        assert torch.isfinite(value).all(), name
    # Each rank took half of the global batch of 32, so 384 images still make 12 steps.
    assert ranks[0]["history"][0]["epoch_loss"] < torch.log(torch.tensor(63.0)).item() + 0.05
    assert (tmp_path / "last.pt").exists()  # written by rank 0 alone


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_pretrain_with_bf16_channels_last_and_compile(compiled):
    cfg = dataclasses.replace(TINY, device="cuda", compile=compiled)
    result = pretrain(IMAGES, cfg)
    first, second = (h["epoch_loss"] for h in result.history)
    assert second < first - 0.1, result.history
    assert next(result.model.parameters()).device.type == "cuda"
    for p in result.model.parameters():
        assert torch.isfinite(p).all()
