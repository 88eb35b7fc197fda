"""Stage configs on the command line and on disk.

Every stage script describes itself with one config dataclass; `parse_config` turns its fields
(nested dataclasses included, as `--pretrain.epochs 5`) into command-line options, with the
field's docstring as the help text, so no stage writes argparse code of its own.
`save_config` writes the resolved config beside a stage's outputs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import os
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twotower.files import atomic_path

__all__ = ["parse_config", "resolve_device", "save_config"]

T = TypeVar("T")


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, description: str = "") -> T:
    """Build `cls` from command-line arguments: one option per (nested) field."""
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_fields(parser, cls, prefix="")
    args = vars(parser.parse_args(argv))
    return _build(cls, args, prefix="")


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as JSON (atomically) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    return path


def resolve_device(name: str) -> str:
    """"auto" → "cuda" when torch sees a GPU, else "cpu"; any other name is kept."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (attribute docstrings, PEP 257)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            _add_fields(parser, kind, prefix=f"{name}.")
            continue
        option = "--" + name.replace("_", "-")
        base, optional = _unwrap_optional(kind)
        default = _default(f)
        help_text = docs.get(f.name, "")
        if base is bool and not optional:
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
            continue
        required = default is dataclasses.MISSING
        container = typing.get_origin(base)
        if container in (tuple, dict):
            args = typing.get_args(base)  # (X, ...) for a tuple, (str, X) for a dict
            item = args[-1] if container is dict else args[0]
            if container is dict:
                parse = _pair_parser(_parser_for(item, False), optional)
            else:
                parse = _parser_for(item, optional)
            metavar = "KEY=VALUE" if container is dict else "VALUE"
            parser.add_argument(option, dest=name, default=default, help=help_text,
                                required=required, nargs="+", type=parse, metavar=metavar)
            continue
        choices = typing.get_args(base) if container is typing.Literal else None
        parser.add_argument(
            option, dest=name, default=default, help=help_text, required=required,
            type=_parser_for(base, optional),
            choices=list(choices) + ([None] if optional else []) if choices else None,
        )


def _build(cls: type[T], args: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, args, f"{name}.")
        else:
            values[f.name] = _collect(_unwrap_optional(kind)[0], args[name])
    return cls(**values)


def _collect(kind: Any, value: Any) -> Any:
    """argparse's list for a tuple or dict field → that tuple or dict ([None] → None)."""
    container = typing.get_origin(kind)
    if container not in (tuple, dict) or not isinstance(value, list):
        return value
    if value == [None]:
        return None
    return tuple(value) if container is tuple else dict(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (kind, False)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _pair_parser(parse_value: Callable[[str], Any], optional: bool) -> Callable[[str], Any]:
    """A parser of KEY=VALUE items into (key, value) pairs ("none" is None when optional)."""

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        try:
            return key, parse_value(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad value in {text!r}: {err}") from err

    return parse


def _parser_for(base: Any, optional: bool) -> Callable[[str], Any]:
    if typing.get_origin(base) is typing.Literal:
        convert = type(typing.get_args(base)[0])
    elif base in (int, float, str, Path):
        convert = base
    elif base is bool:
        def convert(text: str) -> bool:
            if text.lower() not in ("true", "false"):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return text.lower() == "true"
    else:
        raise TypeError(f"no command-line form for a field of type {base!r}")

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse: "invalid int value"
    return parse
