"""Stage configs on the command line and on disk.

Every stage script describes itself with one config dataclass; `parse_config` turns its fields
(nested dataclasses included, as `--pretrain.epochs 5`) into command-line options, with the
field's docstring as the help text, so no stage writes argparse code of its own. Options are
spelled out in full (a prefix such as `--train.epoch` is refused, with the option it may mean):
a prefix that works today would mean another option, or none, once a field is added.
`save_config` writes the resolved config beside a stage's outputs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
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

__all__ = ["ConfigError", "check_folder_name", "parse_config", "resolve_device", "save_config"]

T = TypeVar("T")

COMMON_USAGE = "[--config FILE.toml] [--set KEY=VALUE ...] [--threads N] [--debug]"
COMMON_HELP = """\
every stage also takes, read by `twotower` before the stage's own options:
  --config FILE.toml  its settings from a TOML file (`twotower --help` says how)
  --set KEY=VALUE     one setting, e.g. --set train.epochs=5; may repeat; wins over the file
  --threads N         torch's and FAISS's CPU threads; 1 is often fastest on a busy machine
  --debug             an error's traceback instead of its one line"""
"""The options `pipelines.cli` takes out before a stage parses its own, in the stage's usage
line and at the top of its help."""


class ConfigError(ValueError):
    """A command line or setting that does not fit the stage's config."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting: the caller says it once."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (see --help)")

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """As argparse, but an unknown option comes with the option it most likely meant."""
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            options = list(self._option_string_actions)  # argparse keeps no public list
            meant = [match for token in unknown if token.startswith("-")
                     for match in difflib.get_close_matches(token.partition("=")[0], options, 1)]
            hint = f"; did you mean {', '.join(meant)}?" if meant else " (see --help)"
            raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return known


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; the description's lines as written (a stage's
    how-to: its examples, the table of common options)."""


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, description: str = "",
                 prog: str | None = None) -> T:
    """Build `cls` from command-line arguments: one option per (nested) field.

    `--help` prints `description` (default: the class docstring) and the options, under `prog`
    (`pipelines.cli` passes `twotower STAGE` and the stage module's docstring), and exits;
    anything else that does not fit raises `ConfigError`.
    """
    parser = _Parser(prog=prog, allow_abbrev=False, formatter_class=_Formatter,
                     description=f"{inspect.cleandoc(description or cls.__doc__ or '')}"
                                 f"\n\n{COMMON_HELP}")
    required = _add_fields(parser, cls, prefix="")
    parser.usage = " ".join(["%(prog)s", *required, COMMON_USAGE, "[options]"])
    args = vars(parser.parse_args(argv))
    return _build(cls, args, prefix="")


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as JSON (atomically) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    return path


def check_folder_name(name: str) -> None:
    """Refuse a stage's output `name` unless it is one plain folder name (no path, not hidden)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain folder name, got {name!r}")


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


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str,
                defaults: Any = None) -> list[str]:
    """One option per field of `cls`; `defaults`, an instance of it, overrides the class's own
    defaults (a nested field's default_factory may configure it differently). Returns the
    required ones as the usage line shows them (`--source SOURCE`)."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    required_options = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if dataclasses.is_dataclass(kind):
            required_options += _add_fields(
                parser, kind, prefix=f"{name}.",
                defaults=None if default is dataclasses.MISSING else default)
            continue
        option = "--" + name.replace("_", "-")
        try:
            form = _option_form(kind)
        except TypeError as err:
            raise TypeError(f"{cls.__name__}.{f.name} ({option}): {err}") from None
        required = default is dataclasses.MISSING  # then no "(default: ...)" in --help
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse %-formats help
        parser.add_argument(option, dest=name, required=required, help=help_text,
                            default=argparse.SUPPRESS if required else default, **form)
        if required:
            metavar = form.get("metavar", name.upper())
            required_options.append(f"{option} {metavar}{' ...' if 'nargs' in form else ''}")
    return required_options


def _option_form(kind: Any) -> dict[str, Any]:
    """add_argument's keywords (action, type, nargs, ...) for a field annotated `kind`."""
    base, optional = _unwrap_optional(kind)
    container, args = typing.get_origin(base), typing.get_args(base)
    if base is bool and not optional:
        return {"action": argparse.BooleanOptionalAction}  # --x / --no-x
    if container is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return {"nargs": "+", "metavar": "VALUE", "action": _Gather, "const": tuple,
                "type": _parser_for(args[0], optional)}
    if container is dict and len(args) == 2 and args[0] is str:  # dict[str, X]
        return {"nargs": "+", "metavar": "KEY=VALUE", "action": _Gather, "const": dict,
                "type": _pair_parser(_parser_for(args[1], False), optional)}
    choices = list(args) + ([None] if optional else []) if container is typing.Literal else None
    return {"type": _parser_for(base, optional), "choices": choices}  # choices: for --help


class _Gather(argparse.Action):
    """Stores a nargs="+" option's items as a tuple, or (`const=dict`) its KEY=VALUE pairs as
    a dict; a lone `none` (an optional field) stores None."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if None in values:
            if len(values) > 1:
                raise argparse.ArgumentError(self, "none must be the only item, for no value")
            setattr(namespace, self.dest, None)
        elif self.const is dict:
            keys = [key for key, _ in values]
            twice = [key for key in dict.fromkeys(keys) if keys.count(key) > 1]
            if twice:
                raise argparse.ArgumentError(self, f"key {twice[0]!r} given twice")
            setattr(namespace, self.dest, dict(values))
        else:
            setattr(namespace, self.dest, tuple(values))


def _build(cls: type[T], args: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        kind = hints[f.name]
        values[f.name] = (_build(kind, args, f"{name}.") if dataclasses.is_dataclass(kind)
                          else args[name])
    return cls(**values)


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
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentTypeError(f"bad value in {text!r}: {err}") from err

    return parse


def _parser_for(base: Any, optional: bool) -> Callable[[str], Any]:
    """A parser of one command-line word into a `base` ("none" is None when optional)."""
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)

        def convert(text: str) -> Any:  # checks the choice itself: tuple items and dict values
            value = type(choices[0])(text)
            if value not in choices:
                listed = ", ".join(map(repr, choices))
                raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {listed})")
            return value

        convert.__name__ = type(choices[0]).__name__
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
