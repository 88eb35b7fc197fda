"""Stages are independent scripts: none imports another, so what two stages share lives in a
package (README, "The parts": imports go one way, pipelines → packages). The demo alone
orchestrates stages; `tune` runs no stage, it takes the train_two_tower stage's config as the
model it tunes (and writes that stage's config file), so that class is all it imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.cli import STAGES

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = {module for module, _ in STAGES.values()}


def stage_imports(module: str) -> set[tuple[str, str | None]]:
    """(stage module, name imported from it or None) for each stage module `module` imports,
    in any form: `import pipelines.x`, `from pipelines import x`, `from pipelines.x import y`,
    relative ones, and imports inside functions."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, None) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = ".".join(filter(None, ["pipelines" if node.level else "", node.module]))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"  # `from pipelines import figures`
                found.add((submodule, None) if submodule in STAGE_MODULES
                          else (source, alias.name))
    return {(name, what) for name, what in found if name in STAGE_MODULES and name != module}


@pytest.mark.parametrize("module", sorted(STAGE_MODULES - {"pipelines.demo", "pipelines.tune"}))
def test_a_stage_imports_no_other_stage(module):
    assert stage_imports(module) == set()


def test_tune_takes_only_the_config_of_the_stage_it_tunes():
    assert stage_imports("pipelines.tune") == {("pipelines.train_two_tower",
                                                "TrainTwoTowerConfig")}


def test_the_demo_imports_the_stages_it_runs():
    """Every stage but tune and recommend (serving a finished run, not part of its report)."""
    assert {module for module, _ in stage_imports("pipelines.demo")} == \
        STAGE_MODULES - {"pipelines.demo", "pipelines.tune", "pipelines.recommend"}
