"""`pipelines.stages.Stages`: skip what is done, clear what is stale, resume what was cut, and
redo a stage when what it reads changed."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.stages import DONE, Stages
from twotower.files import source_stamp
from twotower.progress import Interrupted


@dataclass
class Config:
    size: int = 1
    inputs = ()  # not a field: a stage that reads nothing


@dataclass
class Reads:
    """A stage that reads a file."""

    path: str

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.path,)


def reader(calls):
    """A stage that records what it read."""
    def run(config):
        calls.append(Path(config.path).read_text())
        return {"read": calls[-1]}
    return run


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


def test_before_run_comes_before_each_stage_that_runs_and_only_then(tmp_path):
    """The demo opens its MLflow run there: a rerun that skips every stage opens none."""
    calls, opened = [], []
    stages = Stages(before_run=lambda: opened.append(len(calls)))
    stages("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    stages("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    stages("b", tmp_path / "b", Config(4), writer(tmp_path / "b", calls))
    assert opened == [0, 1] and stages.skipped == ["a"]


def test_another_config_clears_the_folder_and_runs_again(tmp_path):
    calls = []
    Stages()("a", tmp_path / "a", Config(3), writer(tmp_path / "a", calls))
    (tmp_path / "a" / "stale.pt").write_text("old weights")
    stages = Stages()
    summary = stages("a", tmp_path / "a", Config(4), writer(tmp_path / "a", calls))
    assert calls == [3, 4] and summary["size"] == 4 and stages.ran == ["a"]
    assert not (tmp_path / "a" / "stale.pt").exists()


def test_a_stage_runs_again_when_an_earlier_one_rewrote_what_it_reads_and_only_then(tmp_path):
    (tmp_path / "source.txt").write_text("log")
    calls_a, calls_b, calls_c = [], [], []

    def pipeline(size):
        stages = Stages()
        out = stages("a", tmp_path / "a", Config(size), writer(tmp_path / "a", calls_a))["out"]
        stages("b", tmp_path / "b", Reads(out), reader(calls_b))
        stages("c", tmp_path / "c", Reads(str(tmp_path / "source.txt")), reader(calls_c))
        return stages

    pipeline(1)
    second = pipeline(2)
    assert second.ran == ["a", "b"] and second.skipped == ["c"]
    assert calls_b == ["1", "2"] and calls_c == ["log"]
    third = pipeline(2)
    assert third.ran == [] and third.skipped == ["a", "b", "c"]


def test_an_input_rewritten_by_hand_even_to_the_same_bytes_reruns_its_reader(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("log")
    calls = []
    Stages()("b", tmp_path / "b", Reads(str(source)), reader(calls))
    record = json.loads((tmp_path / "b" / DONE).read_text())
    assert record["inputs"] == {str(source): source_stamp(source)}
    assert record["config"] == {"path": str(source)} and record["summary"] == {"read": "log"}
    stat = source.stat()
    source.write_text("log")  # the same bytes, written again a second later
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = Stages()
    again("b", tmp_path / "b", Reads(str(source)), reader(calls))
    assert again.ran == ["b"] and calls == ["log", "log"]


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


# -------------------------------------------------------------------- what a stage says
def _said(err: str) -> list[str]:
    """The stage lines of stderr, each stage's seconds replaced by N."""
    return [re.sub(r"in \d+\.\d s$", "in N s", line) for line in err.splitlines()]


def test_each_stage_says_when_it_starts_what_it_reads_and_when_it_ends(tmp_path, capsys):
    source = tmp_path / "source.txt"
    source.write_text("log")
    stages = Stages()
    stages("a", tmp_path / "a", Config(3), writer(tmp_path / "a", []))
    stages("b", tmp_path / "b", Reads(str(source)), reader([]))
    assert _said(capsys.readouterr().err) == [  # capsys's stderr is not a terminal
        "stage a started (reads nothing)",
        "stage a done in N s",
        f"stage b started (reads {source})",
        "stage b done in N s",
    ]


def test_a_skipped_or_redone_stage_says_why(tmp_path, capsys):
    source = tmp_path / "source.txt"
    source.write_text("log")
    Stages()("a", tmp_path / "a", Config(3), writer(tmp_path / "a", []))
    Stages()("b", tmp_path / "b", Reads(str(source)), reader([]))
    capsys.readouterr()
    Stages()("a", tmp_path / "a", Config(3), writer(tmp_path / "a", []))
    Stages()("a", tmp_path / "a", Config(4), writer(tmp_path / "a", []))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    Stages()("b", tmp_path / "b", Reads(str(source)), reader([]))
    assert _said(capsys.readouterr().err) == [
        "stage a skipped: done before with this config and these inputs",
        "stage a started (reads nothing; its config changed)",
        "stage a done in N s",
        f"stage b started (reads {source}; its inputs changed)",
        "stage b done in N s",
    ]


def test_ctrl_c_in_a_stage_names_it_and_keeps_the_epoch_the_loop_saved(tmp_path):
    def plain(config):
        raise KeyboardInterrupt

    def training(config):
        raise Interrupted("two-tower", 12)

    with pytest.raises(Interrupted) as caught:
        Stages()("embed_catalog", tmp_path / "e", Config(), plain)
    assert str(caught.value) == "interrupted during embed_catalog" and caught.value.resumable
    with pytest.raises(Interrupted) as caught:
        Stages()("train_two_tower/image", tmp_path / "t", Config(), training)
    assert str(caught.value) == "interrupted during train_two_tower/image (epoch 12 saved)"
