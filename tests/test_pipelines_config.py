"""parse_config: a config dataclass, nested ones included, as a command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipelines.config import ConfigError, parse_config, save_config


@dataclass
class Inner:
    """Inner settings."""

    rate: float = 0.1
    """Learning rate of the inner loop."""
    events: tuple[str, ...] | None = None
    """Events to keep."""
    weights: dict[str, float] | None = None
    """Event weights."""
    sizes: tuple[int, ...] = (8, 16)
    """Layer sizes."""
    modes: tuple[Literal["fast", "exact"], ...] = ("fast",)
    """Modes to try."""


@dataclass
class Outer:
    """Outer settings."""

    source: str
    """Where the data is."""
    steps: int = 3
    """How many steps."""
    mode: Literal["fast", "exact"] = "fast"
    """Which algorithm."""
    limit: int | None = None
    """An optional cap."""
    verbose: bool = False
    """Print more."""
    inner: Inner = field(default_factory=Inner)
    """The inner settings."""


def test_defaults_and_every_kind_of_field():
    assert parse_config(Outer, ["--source", "x"]) == Outer(source="x")
    cfg = parse_config(Outer, [
        "--source", "x", "--steps", "5", "--mode", "exact", "--limit", "7", "--verbose",
        "--inner.rate", "0.5", "--inner.events", "click", "buy",
        "--inner.weights", "click=1", "buy=2.5", "--inner.sizes", "4", "2",
        "--inner.modes", "exact", "fast",
    ])
    assert cfg == Outer(source="x", steps=5, mode="exact", limit=7, verbose=True,
                        inner=Inner(rate=0.5, events=("click", "buy"),
                                    weights={"click": 1.0, "buy": 2.5}, sizes=(4, 2),
                                    modes=("exact", "fast")))
    cfg = parse_config(Outer, ["--source", "x", "--limit", "none", "--no-verbose",
                               "--inner.events", "none", "--inner.weights", "none"])
    assert cfg.limit is None and not cfg.verbose
    assert cfg.inner.events is None and cfg.inner.weights is None


@dataclass
class Tuned:
    """A stage that configures its nested settings differently from their own defaults."""

    inner: Inner = field(default_factory=lambda: Inner(rate=0.7, sizes=(2,)))
    """Tuned inner settings."""


def test_a_nested_default_factory_sets_the_nested_defaults(capsys):
    assert parse_config(Tuned, []) == Tuned()
    assert parse_config(Tuned, ["--inner.sizes", "3"]) == Tuned(Inner(rate=0.7, sizes=(3,)))
    with pytest.raises(SystemExit):
        parse_config(Tuned, ["--help"])
    assert "(default: 0.7)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --source"),
        (["--source", "x", "--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
        (["--source", "x", "--steps", "two"], "argument --steps: invalid int value: 'two'"),
        (["--source", "x", "--inner.weights", "click"],
         "argument --inner.weights: expected KEY=VALUE, got 'click'"),
        (["--source", "x", "--inner.weights", "click=lots"],
         "argument --inner.weights: bad value in 'click=lots'"),
        (["--source", "x", "--inner.weights", "=1"],
         "argument --inner.weights: expected KEY=VALUE, got '=1'"),
        (["--source", "x", "--inner.weights", "a=1", "a=2"],
         "argument --inner.weights: key 'a' given twice"),
        (["--source", "x", "--inner.events", "click", "none"],
         "argument --inner.events: none must be the only item"),
        (["--source", "x", "--inner.sizes", "4", "wide"],
         "argument --inner.sizes: invalid int value: 'wide'"),
        (["--source", "x", "--inner.modes", "slow"],
         "argument --inner.modes: invalid choice: 'slow'"),
    ],
)
def test_bad_arguments_name_the_option(argv, message, capsys):
    """A bad option raises (the command line prints it as one line), printing no usage."""
    with pytest.raises(ConfigError) as err:
        parse_config(Outer, argv)
    assert message in str(err.value) and str(err.value).endswith("(see --help)")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--stesp", "5"], "unrecognized arguments: --stesp 5; did you mean --steps?"),
    (["--inner.rat=0.5"], "unrecognized arguments: --inner.rat=0.5; did you mean --inner.rate?"),
    (["--no-verbos", "--inner.mode", "fast"],
     "unrecognized arguments: --no-verbos --inner.mode fast; did you mean --no-verbose, "
     "--inner.modes?"),
    (["--frobnicate", "1"], "unrecognized arguments: --frobnicate 1 (see --help)"),
])
def test_an_unknown_option_comes_with_the_one_it_likely_meant(argv, message):
    """A prefix is refused too (`--inner.rat`, `--inner.mode`): it would silently mean another
    option, or stop working, once a field is added."""
    with pytest.raises(ConfigError) as err:
        parse_config(Outer, ["--source", "x", *argv])
    assert str(err.value) == message


def test_help_comes_from_the_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--help"], prog="prog")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("usage: prog --source SOURCE [--config FILE.toml] "
                                   "[--set KEY=VALUE ...] [--threads N] [--debug] [options]")
    assert "\n  --set KEY=VALUE     one setting" in out  # the table of what `twotower` reads
    text = " ".join(out.split())
    assert "Outer settings." in text
    assert "--inner.rate INNER.RATE Learning rate of the inner loop." in text
    assert "--verbose, --no-verbose Print more." in text
    assert "--inner.weights KEY=VALUE [KEY=VALUE ...] Event weights." in text
    assert "--source SOURCE Where the data is. --steps" in text  # required: no default shown


def test_unsupported_field_types_are_named():
    @dataclass
    class Odd:
        things: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match=r"Odd\.things \(--things\): no command-line form"):
        parse_config(Odd, [])

    @dataclass
    class Pairs:
        pairs: tuple[int, str] = (1, "a")  # a fixed-length tuple, not tuple[X, ...]

    with pytest.raises(TypeError, match=r"Pairs\.pairs"):
        parse_config(Pairs, [])


def test_save_config_writes_the_resolved_config(tmp_path):
    path = save_config(Outer(source="x", inner=Inner(events=("a",))), tmp_path / "c.json")
    assert '"events": [\n      "a"\n    ]' in path.read_text()
