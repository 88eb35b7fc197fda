"""The notebooks run top to bottom at a small size, and are stored without outputs.

Each notebook's claims are `assert` statements in its cells, so executing it checks them; the
tests below also read what the cells printed and drew. `TWOTOWER_NOTEBOOK_SMALL=1` in the
kernel's environment (the kernel inherits this process's) selects the small sizes.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_contrastive_mechanics.ipynb", "02_simclr_vision.ipynb", "03_retrieval.ipynb"]
SMALL_KNOB = 'SMALL = os.environ.get("TWOTOWER_NOTEBOOK_SMALL", "0") == "1"'
CELL_TIMEOUT_S = 300


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list[nbformat.NotebookNode]:
    return [out for cell in _code_cells(nb) for out in cell.outputs if out.output_type == kind]


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(out.text for out in _outputs(nb, "stream") if out.name == "stdout")


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.data for out in _outputs(nb, "display_data"))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """name → the notebook after running every cell in a fresh python3 kernel: small size,
    one torch thread, from the repository root, no MLflow server, temporary files (the
    retrieval notebook's run folder) under pytest's tmp. Each runs once per module."""
    done: dict[str, nbformat.NotebookNode] = {}
    scratch = tmp_path_factory.mktemp("notebooks")

    def run(name: str) -> nbformat.NotebookNode:
        if name not in done:
            nb = _read(name)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TWOTOWER_NOTEBOOK_SMALL", "1")
                patch.delenv("MLFLOW_TRACKING_URI", raising=False)
                # Tiny tensors gain nothing from intra-op threads, and beside a busy process
                # torch's OpenMP threads wait on each other: the tiny demo's stages took 38 s
                # with 2 threads and 14 s with 1 on a 2-core machine with another job running.
                patch.setenv("OMP_NUM_THREADS", "1")
                patch.setenv("TMPDIR", str(scratch))
                client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                        resources={"metadata": {"path": str(ROOT)}})
                client.execute()  # raises CellExecutionError on a failing cell or assert
            done[name] = nb
        return done[name]

    return run


# ---------------------------------------------------------------------------------------------
# The stored files.


def test_the_three_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_stripped_with_the_small_knob_first(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    cells = _code_cells(nb)
    for i, cell in enumerate(cells):
        assert cell.outputs == [], f"code cell {i} of {name} has stored outputs"
        assert cell.execution_count is None, f"code cell {i} of {name} has an execution count"
    # The first code cell reads the size knob, so every size after it can derive from SMALL.
    assert SMALL_KNOB in cells[0].source
    assert all("TWOTOWER_NOTEBOOK_SMALL" not in cell.source for cell in cells[1:])


# ---------------------------------------------------------------------------------------------
# Executed at the small size.


def _assert_ran_cleanly(nb: nbformat.NotebookNode) -> None:
    assert _outputs(nb, "error") == []
    cells = _code_cells(nb)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    assert "SMALL = True" in _stdout(nb)


@pytest.mark.slow
def test_contrastive_mechanics(executed):
    nb = executed("01_contrastive_mechanics.ipynb")
    _assert_ran_cleanly(nb)
    out = _stdout(nb)
    # The seed's weight table, as the notebook printed it (pandas, 3 decimals).
    for row in ("0.07  0.993   0.007  0.000", "0.10  0.969   0.029  0.001",
                "0.50  0.565   0.281  0.154", "1.00  0.449   0.316  0.234"):
        assert row in out
    assert "hard 0.348, medium 0.173, easy 0.095" in out
    assert "hard/easy weight ratio: NT-Xent 3.67, NT-Logistic 1.49" in out
    assert "ItemIndex(normalize=False): ranking ['B', 'A']" in out
    assert "ItemIndex(normalize=True): ranking ['A', 'B']" in out
    assert _figures(nb) == 1  # the weights-against-τ plot


@pytest.mark.slow
def test_simclr_vision(executed):
    nb = executed("02_simclr_vision.ipynb")
    _assert_ran_cleanly(nb)
    out = _stdout(nb)
    assert "200 images of shape (3, 16, 16)" in out
    assert "category of 40 held-out products" in out
    for name in ("pixels", "random encoder", "SimCLR h", "SimCLR z", "colour", "rotation",
                 "noise"):
        assert name in out
    assert _figures(nb) == 2  # the augmentation gallery and the loss curve


@pytest.mark.slow
def test_retrieval_stage_by_stage(executed):
    nb = executed("03_retrieval.ipynb")
    _assert_ran_cleanly(nb)
    out = _stdout(nb)
    assert "shop: 120 fashion-mnist products, 60 users, 2500 events" in out
    assert "metrics at k = 10" in out
    for png in ("image_neighbours.png", "user_retrievals.png", "cold_retrievals.png"):
        assert png in out
    # recall@k and NDCG@k plots, then the three galleries, each read back from its PNG.
    assert _figures(nb) == 5
    tables = [out.data["text/plain"] for out in _outputs(nb, "display_data")
              if "text/plain" in out.data and "recall@10" in out.data["text/plain"]]
    assert len(tables) == 1
    for scorer in ("id_only", "image", "popularity", "ease", "image_knn"):
        assert scorer in tables[0]

