"""`twotower.progress`: tqdm's bars on a terminal, one plain line per bar anywhere else, and what
an `Interrupted` says."""

from __future__ import annotations

import re

import pytest
from tqdm.auto import tqdm

from twotower.progress import Interrupted, PlainBar, progress


def test_a_bar_is_one_line_when_stderr_is_not_a_terminal(capsys):
    with progress(total=3, desc="image epoch 2/5", unit="step") as bar:
        assert isinstance(bar, PlainBar)  # capsys's stderr is no terminal
        for _ in range(3):
            bar.update()
            bar.set_postfix(loss="1.0000")
        bar.set_postfix(loss="0.5000", recall="0.2500")
    err = capsys.readouterr().err
    assert re.fullmatch(r"image epoch 2/5: 3 step in \d+\.\d s, loss=0\.5000, recall=0\.2500\n",
                        err)


def test_an_iterated_bar_yields_everything_and_counts_a_short_one(capsys):
    assert list(progress(range(4), desc="rank image", unit="batch")) == [0, 1, 2, 3]
    with progress(total=10, desc="index flat", unit="vec") as bar:
        bar.update(7)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["rank image: 4 batch",
                                                         "index flat: 7/10 vec"]


def test_disabled_transient_and_failed_bars_print_nothing(capsys):
    assert list(progress(range(2), desc="encode", enabled=False)) == [0, 1]
    assert list(progress(range(2), desc="encode", leave=False)) == [0, 1]
    with pytest.raises(RuntimeError), progress(total=2, desc="epoch 1/2") as bar:
        bar.update()
        raise RuntimeError("the error speaks for the bar")
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with progress(total=1, desc="epoch 1/1", enabled=False) as bar:
        assert isinstance(bar, tqdm)


@pytest.mark.parametrize(("interrupted", "says", "resumable"), [
    (Interrupted("train_two_tower/image", 12),
     "interrupted during train_two_tower/image (epoch 12 saved)", True),
    (Interrupted("pretrain_vision", 0), "interrupted during pretrain_vision (no epoch saved yet)",
     False),
    (Interrupted("prepare"), "interrupted during prepare", False),
    (Interrupted("prepare", resumable=True), "interrupted during prepare", True),
])
def test_interrupted_says_what_ran_and_what_is_saved(interrupted, says, resumable):
    assert isinstance(interrupted, KeyboardInterrupt)
    assert str(interrupted) == says and interrupted.resumable is resumable
