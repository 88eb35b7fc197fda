"""The installed distribution: its packages import, and torch and faiss live in one process.

torch and faiss each ship an OpenMP runtime; two runtimes in one process can crash or hang a
threaded search. Each order of import runs in a fresh interpreter with threaded work on both
sides, under a timeout so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_WORK = """
import torch
a = torch.randn(512, 512)
assert torch.isfinite(a @ a).all()
"""

FAISS_WORK = """
import faiss, numpy as np
faiss.omp_set_num_threads(2)
rng = np.random.default_rng(0)
items = rng.standard_normal((2000, 32)).astype("float32")
index = faiss.IndexFlatIP(32)
index.add(items)
scores, ids = index.search(items[:50], 5)
assert (ids[:, 0] == np.arange(50)).all(), ids[:5]
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "program",
    [TORCH_WORK + FAISS_WORK + TORCH_WORK, FAISS_WORK + TORCH_WORK + FAISS_WORK],
    ids=["torch-then-faiss", "faiss-then-torch"],
)
def test_torch_and_faiss_work_in_one_process(program):
    done = subprocess.run(
        [sys.executable, "-c", program + "\nprint('ok')"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_distribution_holds_three_packages_importing_one_way():
    import pipelines
    import simclr_vision
    import twotower

    for package in (twotower, simclr_vision, pipelines):
        assert package.__file__ is not None
    # twotower never imports simclr_vision: they meet through files.
    done = subprocess.run(
        [sys.executable, "-c", "import sys, twotower; print('simclr_vision' in sys.modules)"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_every_install_ends_with_exactly_one_faiss():
    """faiss-cpu and faiss-gpu both install the module `faiss`: the base names neither and
    each of the `cpu` and `gpu` extras names exactly one."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    faiss_by_extra: dict[str | None, set[str]] = {None: set(), "cpu": set(), "gpu": set()}
    for line in requires("twotower") or []:
        req = Requirement(line)
        extra = next((e for e in faiss_by_extra if e and req.marker
                      and req.marker.evaluate({"extra": e})), None)
        if req.name.startswith("faiss"):
            faiss_by_extra[extra].add(req.name)
    assert faiss_by_extra == {None: set(), "cpu": {"faiss-cpu"}, "gpu": {"faiss-gpu"}}


def test_the_wheel_ships_the_fashion_mnist_sample_with_its_licence(tmp_path):
    """`twotower demo` on a fresh install reads the sample from the package itself."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    for name in ("twotower", "simclr_vision", "pipelines"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheel").glob("twotower-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sample = "simclr_vision/fashion_mnist/"
    assert {sample + n for n in ("LICENSE", "README.md", "t10k-images-idx3-ubyte.gz",
                                 "t10k-labels-idx1-ubyte.gz")} <= names
    licence = zipfile.ZipFile(wheel).read(sample + "LICENSE").decode()
    assert "MIT" in licence and "Zalando SE" in licence
