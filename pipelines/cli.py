"""usage: twotower STAGE [--config FILE.toml] [--set KEY=VALUE ...] [--threads N] [--debug] ...

Runs one stage of the pipeline, or the whole demo; `twotower STAGE --help` says what the stage
does and lists its options.

    twotower demo
    twotower demo --config configs/fashion_mnist.toml
    twotower train_two_tower --config configs/movielens.toml --set train.epochs=5
    twotower prepare --help

A config file is TOML. Its top-level keys `run_dir` and `device` go to every stage that has
such a field; a table named after a stage (`[prepare]`, `[train_two_tower.train]`) holds that
stage's own settings, nested as its config dataclass is. `--set train.epochs=5` overrides one
setting, and any stage option (`--train.epochs 5`, spelled out in full) may follow; later ones
win. Each stage's config class says what every option does. A stage whose config nests another
stage's (`tune` has a `train_two_tower` config as `base`) fills it from that stage's table and
the shared keys first, so `twotower tune --config configs/movielens.toml` tunes the model that
file trains; its own table (`[tune.base.train]`) comes after.

`--threads N` sets torch's (and FAISS's) CPU threads; on a busy or shared machine a run's
share of the cores beats the default of one thread per core. An expected error (bad
input, a bad option, a missing file, a folder in use) prints one line `twotower: error: ...`
and exits with status 2; `--debug` shows its traceback instead.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import shlex
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from pipelines.config import ConfigError, parse_config
from pipelines.runtime import set_threads
from twotower.files import DataError
from twotower.progress import Interrupted, live

__all__ = ["STAGES", "main", "stage_argv"]

STAGES: dict[str, tuple[str, str]] = {
    "make_shop": ("pipelines.make_shop", "MakeShopConfig"),
    "prepare": ("pipelines.prepare", "PrepareStage"),
    "pretrain_vision": ("pipelines.pretrain_vision", "PretrainVisionConfig"),
    "embed_catalog": ("pipelines.embed_catalog", "EmbedCatalogConfig"),
    "probe_vision": ("pipelines.probe_vision", "ProbeVisionConfig"),
    "train_two_tower": ("pipelines.train_two_tower", "TrainTwoTowerConfig"),
    "build_index": ("pipelines.build_index", "BuildIndexConfig"),
    "evaluate_retrieval": ("pipelines.evaluate_retrieval", "EvaluateRetrievalConfig"),
    "recommend": ("pipelines.recommend", "RecommendConfig"),
    "figures": ("pipelines.figures", "FiguresConfig"),
    "demo": ("pipelines.demo", "DemoConfig"),
    "tune": ("pipelines.tune", "TuneConfig"),
}
"""Stage name → (its module, which has `main(argv)`; its config dataclass)."""
SHARED = ("run_dir", "device")
"""Top-level keys of a config file, given to every stage that has such a field."""


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _option(cls: type, dotted: str, value: Any, where: str) -> list[str]:
    """One setting `a.b.c = value` of config class `cls` as command-line tokens."""
    *path, name = dotted.split(".")
    for part in path:
        fields = _fields(cls)
        if part not in fields or not dataclasses.is_dataclass(fields[part][1]):
            raise DataError(f"{cls.__name__} has no settings table {part!r}", path=where,
                            column=dotted)
        cls = fields[part][1]
    fields = _fields(cls)
    if name not in fields or dataclasses.is_dataclass(fields[name][1]):
        raise DataError(f"{cls.__name__} has no setting {name!r}; "
                        f"it has {', '.join(fields)}", path=where, column=dotted)
    flag = "--" + dotted.replace("_", "-")
    if fields[name][1] is bool:
        if isinstance(value, str):
            value = {"true": True, "false": False}.get(value.lower(), value)
        if not isinstance(value, bool):
            raise DataError("a switch takes true or false", path=where, column=dotted,
                            value=value)
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, dict):
        return [flag, *(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, list | tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _flatten(table: dict[str, Any], cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """A TOML table → (dotted key, value) pairs, descending only into nested config classes."""
    fields = _fields(cls)
    pairs = []
    for key, value in table.items():
        kind = fields[key][1] if key in fields else None
        if isinstance(value, dict) and kind is not None and dataclasses.is_dataclass(kind):
            pairs += _flatten(value, kind, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _stage_pairs(document: dict[str, Any], stage: str, cls: type) -> list[tuple[str, Any]]:
    """The (dotted key, value) settings of a config file for `stage`: shared keys, its table."""
    fields = _fields(cls)
    shared = {k: v for k, v in document.items() if k in SHARED and k in fields}
    return _flatten(shared, cls) + _flatten(document.get(stage, {}), cls)


def _stage_of(kind: Any) -> str | None:
    """The stage whose config class `kind` is, if any."""
    for stage, (module, name) in STAGES.items():
        if (getattr(kind, "__module__", None), getattr(kind, "__name__", None)) == (module, name):
            return stage
    return None


def stage_argv(stage: str, cls: type, config: str | Path | None = None,
               settings: Sequence[str] = ()) -> list[str]:
    """The stage's command-line tokens for a TOML file and `KEY=VALUE` settings."""
    argv: list[str] = []
    if config is not None:
        path = Path(config)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DataError("no config file here", path=path) from None
        except tomllib.TOMLDecodeError as err:
            raise DataError(f"not valid TOML: {err}", path=path) from None
        stray = [k for k in document if k not in STAGES and k not in SHARED]
        if stray:
            raise DataError(f"top-level key {stray[0]!r} is neither a stage table "
                            f"({', '.join(STAGES)}) nor a shared setting ({', '.join(SHARED)})",
                            path=path, column=stray[0])
        pairs = []  # a nested stage's settings first: the stage's own table overrides them
        for name, (_, kind) in _fields(cls).items():
            inner = _stage_of(kind)
            if inner is not None:
                pairs += [(f"{name}.{key}", value)
                          for key, value in _stage_pairs(document, inner, kind)]
        for key, value in pairs + _stage_pairs(document, stage, cls):
            argv += _option(cls, key, value, str(path))
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise DataError("--set takes KEY=VALUE, e.g. train.epochs=5", value=setting)
        tokens = shlex.split(value)
        argv += _option(cls, key.strip(), tokens if len(tokens) != 1 else tokens[0],
                        "--set")
    return argv


def _split(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Pull `--config FILE` and every `--set KEY=VALUE` out of argv; the rest goes to the stage."""
    config, settings, rest = None, [], []
    tokens = iter(argv)
    for token in tokens:
        name, inline, value = token.partition("=")
        if name not in ("--config", "--set"):
            rest.append(token)
            continue
        if not inline:
            value = next(tokens, None)
            if value is None:
                raise ConfigError(f"{name} needs a value")
        if name == "--config":
            config = value
        else:
            settings.append(value)
    return config, settings, rest


def _threads(argv: list[str]) -> tuple[int | None, list[str]]:
    """Pull `--threads N` out of argv."""
    threads, rest = None, []
    tokens = iter(argv)
    for token in tokens:
        name, inline, value = token.partition("=")
        if name != "--threads":
            rest.append(token)
            continue
        value = value if inline else next(tokens, "")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--threads takes a positive integer, got {value!r}")
        threads = int(value)
    return threads, rest


def _summary(stage: str) -> str:
    """The first line of the stage's config class docstring, read from its source: importing
    every stage (torch, MLflow, FAISS) would make `twotower --help` take seconds."""
    module, name = STAGES[stage]
    source = Path(importlib.util.find_spec(module).origin).read_text()
    (cls,) = [node for node in ast.parse(source).body
              if isinstance(node, ast.ClassDef) and node.name == name]
    return (ast.get_docstring(cls) or "").split("\n")[0].replace(f" (stage `{stage}`)", "")


def _help() -> str:
    """`twotower --help`: this module's docstring, with the stages after its examples."""
    usage, about, examples, *rest = (__doc__ or "").strip().split("\n\n")
    width = max(map(len, STAGES))
    stages = "stages:\n" + "\n".join(f"  {stage:<{width}}  {_summary(stage)}" for stage in STAGES)
    return "\n\n".join([usage, about, examples, stages, *rest])


def _run(argv: list[str]) -> None:
    stage, *rest = argv
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    module_name, class_name = STAGES[stage]
    module = importlib.import_module(module_name)
    config, settings, rest = _split(rest)
    threads, rest = _threads(rest)
    tokens = stage_argv(stage, getattr(module, class_name), config, settings)
    if threads is not None:
        set_threads(threads)
    if "-h" in rest or "--help" in rest:  # its how-to and options, under its name; exits
        parse_config(getattr(module, class_name), ["--help"], prog=f"twotower {stage}",
                     description=module.__doc__ or "")
    module.main(tokens + rest)


def main(argv: Sequence[str] | None = None) -> None:
    """Run `twotower STAGE ...` (the console script; `python -m pipelines.STAGE` comes here too).

    Expected errors (`ValueError`s such as `DataError` and `ConfigError`, and `OSError`s such
    as a missing file) end the process with one line on stderr and exit status 2. Ctrl-C ends
    it with one line saying where it stopped (and, when it knows, what is saved and how to go
    on), and exit status 130 (128 + SIGINT, as a shell reports it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        return
    debug = "--debug" in argv
    tokens = [token for token in argv if token != "--debug"]
    if not live():  # MLflow's own artifact bar would leave every redraw in a log file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        _run(tokens)
    except (ValueError, OSError) as err:
        if debug:
            raise
        print(f"twotower: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as err:
        if debug:
            raise
        where = err if isinstance(err, Interrupted) else Interrupted(tokens[0])
        then = ("; run the same command to resume" if where.resumable
                else "; run the same command to start it again" if where.saved == 0 else "")
        print(f"twotower: {where}{then}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
