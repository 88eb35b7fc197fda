"""What `twotower` shows as it runs: Ctrl-C as one line with exit status 130 and how to go on,
"resuming ..." on the next run, and plain lines, not bar redraws, when stderr is a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import cli
from twotower.data import PrepareConfig, prepare
from twotower.progress import Interrupted
from twotower.synthetic import ShopConfig, make_shop

ROOT = Path(__file__).resolve().parents[1]


def _interrupting(error: KeyboardInterrupt):
    def run(argv):
        raise error
    return run


@pytest.mark.parametrize(("error", "says"), [
    (Interrupted("train_two_tower/image", 12),
     "twotower: interrupted during train_two_tower/image (epoch 12 saved); run the same command "
     "to resume\n"),
    (Interrupted("pretrain_vision", 0),
     "twotower: interrupted during pretrain_vision (no epoch saved yet); run the same command "
     "to start it again\n"),
    (Interrupted("build_index/image", resumable=True),
     "twotower: interrupted during build_index/image; run the same command to resume\n"),
    (KeyboardInterrupt(), "twotower: interrupted during prepare\n"),
])
def test_ctrl_c_is_one_line_and_exit_130(error, says, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_run", _interrupting(error))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", "--run-dir", "runs/x"])
    assert exit_.value.code == 130 and capsys.readouterr().err == says


def test_debug_keeps_the_interrupts_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_run", _interrupting(Interrupted("prepare")))
    with pytest.raises(Interrupted):
        cli.main(["--debug", "prepare"])


@pytest.mark.slow  # two processes that import torch and MLflow and train: about 20 s
@pytest.mark.usefixtures("local_mlflow")
def test_sigint_after_a_checkpoint_says_so_and_the_same_command_resumes(tmp_path):
    """A real `twotower train_two_tower` in a subprocess, its stderr a file: SIGINT once
    `last.pt` exists, then the same command (one more epoch allowed: `epochs` may change on a
    resume) picks up where it stopped."""
    shop = make_shop(ShopConfig(num_items=40, num_users=30, num_interactions=1200,
                                image_size=8))
    shop.interactions.to_parquet(tmp_path / "log.parquet")
    prepare(tmp_path / "log.parquet", tmp_path / "run" / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "OMP_NUM_THREADS": "1"}

    def command(epochs: int) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", "train_two_tower", "--threads", "1",
                "--run-dir", str(tmp_path / "run"), "--name", "image", "--device", "cpu",
                "--set", f"train.epochs={epochs}", "--set", "train.patience=1000",
                "--set", "train.batch_size=64", "--set", "train.max_val_users=10",
                "--set", "train.tower.dim=8", "--set", "train.tower.hidden_dim=8"]

    checkpoint = tmp_path / "run" / "train_two_tower" / "image" / "last.pt"
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(command(1000), stdout=subprocess.DEVNULL, stderr=err, env=env,
                                 cwd=ROOT)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        status = first.wait(timeout=60)
    said = (tmp_path / "first.err").read_text()
    assert status == 130 and "Traceback" not in said, said
    stopped = re.search(r"^twotower: interrupted during train_two_tower/image \(epoch (\d+) "
                        r"saved\); run the same command to resume$", said, re.MULTILINE)
    assert stopped, said
    saved = int(stopped[1])
    again = subprocess.run(command(saved + 1), capture_output=True, text=True, env=env,
                           cwd=ROOT)
    assert again.returncode == 0, again.stderr
    lines = again.stderr.splitlines()
    assert f"resuming train_two_tower/image from epoch {saved}" in lines, again.stderr
    last = saved + 1
    assert re.search(rf"^train_two_tower/image epoch {last}/{last}: \d+ step in \d+\.\d s, "
                     r"loss=\d+\.\d{4}, val_recall@\d+=\d\.\d{4}$", again.stderr, re.MULTILINE)
    assert "\r" not in said + again.stderr  # a log file gets lines, not bar redraws
