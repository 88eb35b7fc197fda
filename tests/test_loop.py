"""The training loop both trainers share (`twotower.loop`): one resume rule, seeding that leaves
the caller's RNG alone, a generator per epoch, the non-finite check and what is logged when."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from simclr_vision.pretrain import RUNTIME_FIELDS as SIMCLR_RUNTIME
from simclr_vision.pretrain import PretrainConfig, pretrain
from twotower.data import PrepareConfig, prepare
from twotower.loop import Checkpoint, ConfigChanged, Epoch, Loop, changed_fields
from twotower.progress import Interrupted
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import RUNTIME_FIELDS as TWO_TOWER_RUNTIME
from twotower.train import TrainConfig, fit

CPU = torch.device("cpu")
IMAGES = torch.randint(0, 256, (64, 1, 16, 16), generator=torch.Generator().manual_seed(0),
                       dtype=torch.uint8)
CONFIGS = {
    "two-tower": TrainConfig(epochs=1, batch_size=64, val_k=10, max_history=5,
                             max_val_users=20, tower=TowerConfig(dim=8, hidden_dim=16,
                                                                 id_dim=8, id_dropout=0.3)),
    "SimCLR": PretrainConfig(arch="resnet_narrow", width=8, image_size=16, epochs=1,
                             batch_size=32, lr=1.0, log_every=1, knn_every=0, progress=False),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    shop = make_shop(ShopConfig(num_items=40, num_users=30, num_interactions=1200,
                                image_size=8))
    shop.interactions.to_parquet(root / "log.parquet")
    return prepare(root / "log.parquet", root / "prepare",
                   PrepareConfig(min_user_interactions=3, min_item_interactions=3))


def _train(trainer: str, cfg, prepared: Path) -> list[dict[str, float]]:
    """Train with `cfg`; the history."""
    if trainer == "two-tower":
        return fit(prepared, cfg, progress=False).history
    return pretrain(IMAGES, cfg).history


@pytest.mark.parametrize(("trainer", "name", "value"),
                         [("two-tower", "lr", 0.01), ("SimCLR", "temperature", 0.2)])
def test_both_trainers_refuse_a_changed_setting_with_one_message(trainer, name, value,
                                                                 prepared, tmp_path):
    cfg = dataclasses.replace(CONFIGS[trainer], checkpoint_dir=str(tmp_path))
    _train(trainer, cfg, prepared)
    message = (f"{tmp_path / 'last.pt'} was trained with {name}={getattr(cfg, name)!r}, not "
               f"{value!r}; resume with the same config or remove the checkpoint")
    with pytest.raises(ConfigChanged, match=re.escape(message)):
        _train(trainer, dataclasses.replace(cfg, **{name: value}), prepared)


@pytest.mark.parametrize(("trainer", "changes"), [
    ("two-tower", {"epochs": 2}),
    ("SimCLR", {"log_every": 2, "knn_bank_size": 8, "knn_query_size": 8}),
])
def test_both_trainers_resume_with_changed_runtime_fields(trainer, changes, prepared,
                                                          tmp_path):
    first = dataclasses.replace(CONFIGS[trainer], checkpoint_dir=str(tmp_path / "a"))
    history = _train(trainer, first, prepared)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    moved = dataclasses.replace(first, checkpoint_dir=str(tmp_path / "b"), **changes)
    resumed = _train(trainer, moved, prepared)
    assert resumed[:len(history)] == history  # resumed, not started again
    assert len(resumed) == moved.epochs


def test_the_runtime_fields_are_fields_and_never_the_data():
    for config, runtime in ((TrainConfig, TWO_TOWER_RUNTIME), (PretrainConfig, SIMCLR_RUNTIME)):
        assert runtime <= {f.name for f in dataclasses.fields(config)}
        assert "data" not in runtime and "seed" not in runtime


@pytest.mark.parametrize("trainer", list(CONFIGS))
def test_training_leaves_the_global_rng_as_it_was(trainer, prepared):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _train(trainer, CONFIGS[trainer], prepared)  # id dropout / augmentations draw
    assert torch.equal(torch.get_rng_state(), before)


def test_changed_fields_leave_out_runtime_ones_and_name_the_data_first():
    saved = {"data": "a", "lr": 1.0, "epochs": 3, "tower": {"dim": 8, "head": "mlp"}}
    now = {"data": "b", "lr": 1.0, "epochs": 5, "tower": {"dim": 16, "head": "mlp"}, "new": 1}
    assert changed_fields(saved, now, {"epochs"}) == ["data", "new", "tower.dim"]
    assert changed_fields(saved, now, {"epochs", "data", "new", "tower"}) == []
    assert changed_fields(saved, saved, ()) == []


# -------------------------------------------------------------------- the loop on a toy step
def _toy_run(epochs: int, steps: int, *, start: int = 0, log_every: int = 2,
             bad_step: int | None = None, **options):
    """Run a Loop whose step i returns loss i (nan at global step `bad_step`) and records one
    draw of its generator; (logged, draws per epoch, ends). `options`: more Loop fields."""
    logged, draws, ends = [], {}, []
    current = [0]

    def step(i: int, generator: torch.Generator):
        index = (current[0] - 1) * steps + i
        draws.setdefault(current[0], []).append(torch.rand((), generator=generator).item())
        loss = torch.tensor(float("nan") if index == bad_step else float(i))
        return loss, {"lr": 0.5, "tau": torch.tensor(2.0)}

    loop = Loop(name="toy", device=CPU, epochs=epochs, steps=steps, log_every=log_every,
                log=lambda metrics, at: logged.append((at, metrics)),
                **{"progress": False, **options})
    loop.run(nn.Linear(1, 1), step, epoch_seed=lambda epoch: 100 + epoch,
             begin_epoch=lambda epoch: current.__setitem__(0, epoch),
             end_epoch=ends.append, state=dict, start=start)
    return logged, draws, ends


def test_the_loop_logs_every_log_every_steps_and_at_each_epoch_end():
    logged, _, ends = _toy_run(epochs=2, steps=3)
    # Windows of the last 2 steps of the epoch, at the steps taken: 0,1 | 1,2 (epoch end) | 0 |
    # 1,2 (epoch end); the step's other metrics ride along, tensors moved to the host.
    assert logged == [(2, {"loss": 0.5, "lr": 0.5, "tau": 2.0}),
                      (3, {"loss": 1.5, "lr": 0.5, "tau": 2.0}),
                      (4, {"loss": 0.0, "lr": 0.5, "tau": 2.0}),
                      (6, {"loss": 1.5, "lr": 0.5, "tau": 2.0})]
    assert [e.number for e in ends] == [1, 2]
    assert isinstance(ends[0], Epoch) and torch.equal(ends[0].losses, torch.tensor([0., 1, 2]))
    assert ends[1].logged == [0.0, 1.5]


def test_each_epoch_draws_from_its_own_seed_whatever_came_before():
    _, straight, _ = _toy_run(epochs=3, steps=2)
    expected = torch.rand(2, generator=torch.Generator().manual_seed(100 + 2)).tolist()
    assert straight[2] == expected
    _, resumed, _ = _toy_run(epochs=3, steps=2, start=1)
    assert resumed == {2: straight[2], 3: straight[3]}


def test_a_non_finite_loss_stops_the_loop_naming_its_step():
    with pytest.raises(FloatingPointError,
                       match=r"toy training diverged at step 4 \(epoch 2\): the loss is nan"):
        _toy_run(epochs=2, steps=3, bad_step=4)


def test_a_checkpoint_round_trips_with_weights_only(tmp_path):
    cfg = dataclasses.replace(CONFIGS["SimCLR"], checkpoint_dir=str(tmp_path))
    checkpoint = Checkpoint.of(cfg, SIMCLR_RUNTIME)
    assert checkpoint.load(CPU) is None
    checkpoint.save({"weights": torch.arange(3.0), "history": [{"loss": 1.5}]})
    saved = checkpoint.load(CPU)
    assert torch.equal(saved["weights"], torch.arange(3.0))
    assert saved["history"] == [{"loss": 1.5}] and saved["config"]["seed"] == 0
    assert Checkpoint.of(dataclasses.replace(cfg, checkpoint_dir=None), frozenset()) is None


# -------------------------------------------------------------------- the console
def test_the_epoch_line_names_the_run_and_shows_what_the_epoch_end_returns(capsys):
    loop = Loop(name="toy", device=CPU, epochs=2, steps=3, label="train_two_tower/image")
    loop.run(nn.Linear(1, 1), lambda i, generator: (torch.tensor(float(i)), {}),
             epoch_seed=lambda epoch: epoch, end_epoch=lambda epoch: {"val_recall@10": 0.25},
             state=dict, start=1)
    err = capsys.readouterr().err  # not a terminal: plain lines, no redraws
    assert re.fullmatch(r"resuming train_two_tower/image from epoch 1\n"
                        r"train_two_tower/image epoch 2/2: 3 step in \d+\.\d s, "
                        r"loss=2\.0000, val_recall@10=0\.2500\n", err)


def test_a_quiet_loop_prints_nothing(capsys):
    _toy_run(epochs=2, steps=2, start=1)
    assert capsys.readouterr().err == ""


def _interrupt_at(step_index: int):
    """A step that presses Ctrl-C at its (0-based, global over 2-step epochs) `step_index`."""
    taken = []

    def step(i: int, generator: torch.Generator):
        if len(taken) == step_index:
            raise KeyboardInterrupt
        taken.append(i)
        return torch.tensor(1.0), {}
    return step


@pytest.mark.parametrize(("start", "says"), [
    (0, "interrupted during toy (epoch 2 saved)"),
    (1, "interrupted during toy (epoch 3 saved)"),  # resumed after epoch 1
])
def test_ctrl_c_names_the_run_and_the_last_epoch_saved(start, says, tmp_path):
    cfg = dataclasses.replace(CONFIGS["SimCLR"], checkpoint_dir=str(tmp_path))
    loop = Loop(name="toy", device=CPU, epochs=9, steps=2, progress=False,
                checkpoint=Checkpoint.of(cfg, SIMCLR_RUNTIME))
    with pytest.raises(Interrupted) as caught:
        loop.run(nn.Linear(1, 1), _interrupt_at(5), epoch_seed=lambda epoch: epoch,
                 end_epoch=lambda epoch: None, state=dict, start=start)
    assert str(caught.value) == says
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)


def test_ctrl_c_without_a_checkpoint_stays_a_plain_keyboard_interrupt():
    """Nothing is saved to name: whoever runs the loop says what was interrupted."""
    loop = Loop(name="toy", device=CPU, epochs=9, steps=2, progress=False)
    with pytest.raises(KeyboardInterrupt) as caught:
        loop.run(nn.Linear(1, 1), _interrupt_at(5), epoch_seed=lambda epoch: epoch,
                 end_epoch=lambda epoch: None, state=dict)
    assert type(caught.value) is KeyboardInterrupt


def test_ctrl_c_right_after_a_checkpoint_is_written_counts_that_epoch(tmp_path, monkeypatch):
    """What `last.pt` holds is what the next run resumes from: the message reads it there."""
    cfg = dataclasses.replace(CONFIGS["SimCLR"], checkpoint_dir=str(tmp_path))
    checkpoint = Checkpoint.of(cfg, SIMCLR_RUNTIME)
    save = Checkpoint.save

    def save_then_ctrl_c(self, state):
        save(self, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_ctrl_c)
    loop = Loop(name="toy", device=CPU, epochs=9, steps=2, progress=False,
                checkpoint=checkpoint)
    with pytest.raises(Interrupted, match=r"^interrupted during toy \(epoch 2 saved\)$"):
        loop.run(nn.Linear(1, 1), lambda i, generator: (torch.tensor(1.0), {}),
                 epoch_seed=lambda epoch: epoch, end_epoch=lambda epoch: None, state=dict)


def test_a_checkpoint_knows_its_epoch_and_an_older_one_is_where_the_run_resumed(tmp_path):
    cfg = dataclasses.replace(CONFIGS["SimCLR"], checkpoint_dir=str(tmp_path))
    checkpoint = Checkpoint.of(cfg, SIMCLR_RUNTIME)
    assert checkpoint.epoch(start=0) == 0  # no file yet
    checkpoint.save({"epoch": 4, "weights": torch.zeros(2)})
    assert checkpoint.epoch(start=0) == 4
    checkpoint.save({"weights": torch.zeros(2)})  # written before epochs were recorded
    assert checkpoint.epoch(start=3) == 3
