"""pipelines.lock: one live run per run folder, and no lock outlives its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.lock import LOCK, FolderBusy, hold

_HOLDER = """
import sys, time
from pipelines.lock import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_nested_holds_in_one_process_share_the_lock(tmp_path):
    with hold(tmp_path) as outer:
        with hold(tmp_path / "." ) as inner:
            assert (outer, inner) == (True, False)
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
    with hold(tmp_path) as again:  # released: taken afresh
        assert again


def test_another_process_is_refused_until_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"in use by pid {holder.pid}"), hold(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel must drop the lock
        holder.wait()
    with hold(tmp_path) as taken:
        assert taken and (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
