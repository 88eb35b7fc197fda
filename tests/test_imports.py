"""What importing the packages costs and which way their imports go.

`twotower` and `simclr_vision` re-export lazily (`twotower.lazy`), so importing one submodule
loads what that submodule needs and nothing else; the light-import tests run in a fresh
interpreter, where nothing else has loaded the heavy libraries yet. The layering is checked
statically, on the source of every module, so that an import inside a function or behind a
lazy export cannot hide from it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import simclr_vision
import twotower

PACKAGES = [twotower, simclr_vision]
HEAVY = ("faiss", "polars", "pandas", "pyarrow", "mlflow", "sklearn", "implicit")
"""Libraries that the contrastive core and the augmentations have no use for."""


def run_fresh(program: str) -> subprocess.CompletedProcess:
    """Run `program` in a new interpreter, whose `sys.modules` nothing has filled yet."""
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(
    ("statement", "unwanted"),
    [
        ("import twotower, simclr_vision", ("torch", "numpy", *HEAVY)),
        ("import twotower.contrastive, simclr_vision.augment", HEAVY),
    ],
    ids=["packages", "contrastive-and-augment"],
)
def test_a_submodule_loads_only_what_it_needs(statement, unwanted):
    done = run_fresh(f"{statement}\nimport sys\n"
                     f"print(sorted(m for m in {unwanted!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{statement} loaded {done.stdout.strip()}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_export_resolves_to_its_submodules_object(package):
    exports = package._EXPORTS
    assert package.__all__ == sorted(exports)
    for name, submodule in exports.items():
        defined = getattr(importlib.import_module(f"{package.__name__}.{submodule}"), name)
        assert getattr(package, name) is defined, name
        assert name in dir(package), name
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_what_type_checkers_read_is_what_loads(package):
    """The `if TYPE_CHECKING:` imports of the `__init__` name exactly the lazy exports."""
    tree = ast.parse(Path(package.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in block.body
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported == {name: f"{package.__name__}.{module}"
                        for name, module in package._EXPORTS.items()}


@pytest.mark.parametrize(("package", "name"), [(twotower, "evaluate"),
                                             (simclr_vision, "pretrain")])
def test_an_export_keeps_its_name_when_a_same_named_submodule_loads(package, name, monkeypatch):
    """`twotower.evaluate` is the function, as with eager re-exports, even when the submodule
    `twotower.evaluate` loads before anyone read the name."""
    submodule = importlib.import_module(f"{package.__name__}.{name}")
    monkeypatch.delitem(vars(package), name, raising=False)  # the name not read yet
    setattr(package, name, submodule)  # what the import system does when a submodule loads
    assert getattr(package, name) is getattr(submodule, name)


def imported_packages(source: str, package: str) -> dict[str, int]:
    """Top-level package of every import in `source` (also inside functions) → first line.

    Relative imports belong to `package`.
    """
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package if node.level else node.module or ""]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def test_imports_are_found_inside_functions_and_type_checking_blocks():
    source = ("import os.path\nfrom typing import TYPE_CHECKING\nfrom . import lazy\n"
              "if TYPE_CHECKING:\n    from pipelines import cli\n"
              "def f():\n    import mlflow\n")
    assert imported_packages(source, "twotower") == {
        "os": 1, "typing": 2, "twotower": 3, "pipelines": 5, "mlflow": 7}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [(twotower, {"pipelines", "mlflow", "simclr_vision"}),
     (simclr_vision, {"pipelines", "mlflow"})],
    ids=["twotower", "simclr_vision"],
)
def test_imports_go_one_way(package: ModuleType, forbidden: set[str]):
    """pipelines → simclr_vision → twotower: a package imports no package to its left and no
    MLflow (tracking is the pipelines' business); twotower and simclr_vision meet through files."""
    root = Path(package.__file__).parent
    wrong = [f"{path.relative_to(root.parent)}:{line} imports {name}"
             for path in sorted(root.rglob("*.py"))
             for name, line in imported_packages(path.read_text(), package.__name__).items()
             if name in forbidden]
    assert not wrong, "\n".join(wrong)


def test_the_readme_module_map_lists_every_module():
    """The README's table under "The parts" is the module map: a module added, moved or renamed
    without it fails here. In a row, a bare name is a module of the first name's package
    (`pipelines.make_shop`, `prepare`, ...); a package's row names its modules in backticks."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    start = text.index("The module map")
    listed = set()
    for line in text[start:text.index("\n\n- **", start)].splitlines():
        if not line.startswith("| `"):
            continue
        names, what = line.split("|")[1:3]
        first, *rest = names.split("`")[1::2]
        package = first.rsplit(".", 1)[0]
        listed |= {first, *(f"{package}.{name}" for name in rest)}
        listed |= {f"{first}.{name}" for name in what.split("`")[1::2]}  # a package's modules
    modules = {".".join(p.relative_to(root).with_suffix("").parts)
               for package in ("twotower", "simclr_vision", "pipelines")
               for p in (root / package).rglob("*.py") if p.name != "__init__.py"}
    assert not modules - listed, f"missing from the README's module map: {modules - listed}"
