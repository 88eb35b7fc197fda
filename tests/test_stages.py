"""`pipelines.stages.Stages`: skip what is done, clear what is stale, resume what was cut."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipelines.stages import DONE, Stages


@dataclass
class Config:
    size: int = 1


def writer(folder, calls):
    """A stage that counts its runs and leaves a checkpoint-like file in its folder."""
    def run(config):
        calls.append(config.size)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "out.txt").write_text(str(config.size))
        return {"size": config.size, "out": str(folder / "out.txt")}
    return run


def test_a_finished_stage_is_skipped_with_its_recorded_summary(tmp_path):
    calls = []
    first = Stages()("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    again = Stages()
    second = again("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    assert calls == [3]
    assert second == first == {"size": 3, "out": str(tmp_path / "a" / "out.txt")}
    assert again.skipped == ["a"] and again.ran == []
    assert json.loads((tmp_path / "a" / DONE).read_text())["config"] == {"size": 3}


def test_another_config_clears_the_folder_and_runs_again(tmp_path):
    calls = []
    Stages()("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    (tmp_path / "a" / "stale.pt").write_text("old weights")
    stages = Stages()
    summary = stages("a", tmp_path / "a", Config(4), writer(tmp_path / "a", calls))
    assert calls == [3, 4] and summary["size"] == 4 and stages.ran == ["a"]
    assert not (tmp_path / "a" / "stale.pt").exists()


def test_stages_after_one_that_ran_run_too(tmp_path):
    calls_a, calls_b = [], []
    first = Stages()
    first("a", tmp_path / "a", Config(1), writer(tmp_path / "a", calls_a))
    first("b", tmp_path / "b", Config(1), writer(tmp_path / "b", calls_b))
    second = Stages()
    second("a", tmp_path / "a", Config(2), writer(tmp_path / "a", calls_a))
    second("b", tmp_path / "b", Config(1), writer(tmp_path / "b", calls_b))
    assert calls_b == [1, 1] and second.ran == ["a", "b"]


def test_an_interrupted_stage_keeps_its_folder_and_runs_again(tmp_path):
    folder = tmp_path / "a"

    def crash(config):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "last.pt").write_text("epoch 1")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stages()("a", folder, Config(), crash)
    assert not (folder / DONE).exists()
    seen = []

    def resume(config):
        seen.append((folder / "last.pt").read_text())
        return {"resumed": True}

    assert Stages()("a", folder, Config(), resume) == {"resumed": True}
    assert seen == ["epoch 1"] and (folder / DONE).is_file()


def test_an_unreadable_record_counts_as_not_done(tmp_path):
    calls = []
    Stages()("a", tmp_path / "a", Config(2), writer(tmp_path / "a", calls))
    (tmp_path / "a" / DONE).write_text("{not json")
    summary = Stages()("a", tmp_path / "a", Config(2), writer(tmp_path / "a", calls))
    assert calls == [2, 2] and summary["size"] == 2
    assert json.loads((tmp_path / "a" / DONE).read_text())["config"] == {"size": 2}
