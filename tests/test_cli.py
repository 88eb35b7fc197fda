"""`twotower STAGE --config FILE.toml --set KEY=VALUE`: configs, overrides, errors, a real run."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import faiss
import pandas as pd
import pytest
import torch

from pipelines import cli
from pipelines.config import ConfigError, parse_config
from pipelines.demo import DemoConfig
from pipelines.make_shop import MakeShopConfig
from pipelines.make_shop import run as make_shop
from pipelines.runtime import set_threads
from twotower.files import DataError
from twotower.synthetic import ShopConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_of(stage, *args):
    module, name = cli.STAGES[stage]
    cls = getattr(importlib.import_module(module), name)
    return parse_config(cls, cli.stage_argv(stage, cls, *args))


@pytest.mark.parametrize(("path", "stages"), [
    ("demo.toml", ["demo"]),
    ("fashion_mnist.toml", ["demo"]),
    ("procedural.toml", ["demo"]),
    ("movielens.toml", ["prepare", "train_two_tower", "build_index", "evaluate_retrieval"]),
])
def test_every_shipped_config_builds_its_stages(path, stages):
    for stage in stages:
        cfg = config_of(stage, CONFIGS / path)
        assert cfg.run_dir == f"runs/{path.removesuffix('.toml')}"


def test_the_demo_config_is_the_demo_defaults_and_the_others_differ():
    assert config_of("demo", CONFIGS / "demo.toml") == DemoConfig()
    fmnist = config_of("demo", CONFIGS / "fashion_mnist.toml")
    assert fmnist.catalog == "fashion-mnist" and fmnist.data_dir is not None
    procedural = config_of("demo", CONFIGS / "procedural.toml")
    assert dataclasses.replace(procedural, run_dir="runs/demo") == DemoConfig(
        catalog="procedural")
    prepare = config_of("prepare", CONFIGS / "movielens.toml")
    assert prepare.data.columns == {"userId": "user_id", "movieId": "item_id"}
    evaluate = config_of("evaluate_retrieval", CONFIGS / "movielens.toml")
    assert evaluate.ks == (10, 20, 50) and evaluate.baselines == ("popularity", "ease", "ials")
    assert set(evaluate.models) == {"id_only"}


def test_settings_override_the_file_and_take_every_kind(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('run_dir = "a"\n[demo.train]\nepochs = 3\nlearn_temperature = true\n')
    cfg = config_of("demo", path, ["train.epochs=7", "ks=5 10", "report_k=10", "run_dir=b",
                                   "train.learn_temperature=false", "data.columns=a=user_id"])
    assert cfg.train.epochs == 7 and cfg.ks == (5, 10) and cfg.run_dir == "b"
    assert cfg.train.learn_temperature is False
    assert cfg.data.columns == {"a": "user_id"}
    assert config_of("demo", path).train.learn_temperature is True


@pytest.mark.parametrize(("text", "settings", "message"), [
    ("[demo]\nepochs = 3\n", [], "has no setting 'epochs'"),
    ("[demo.trian]\nepochs = 3\n", [], "has no setting 'trian'"),
    ("runs = 1\n", [], "top-level key 'runs'"),
    ("[demo\n", [], "not valid TOML"),
    ("", ["train.epochs"], "--set takes KEY=VALUE"),
    ("", ["train.learn_temperature=maybe"], "a switch takes true or false"),
    ("", ["shop.seed.x=1"], "no settings table 'seed'"),
])
def test_bad_settings_name_the_file_and_the_key(tmp_path, text, settings, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        config_of("demo", path, settings)
    if not settings:
        assert str(path) in str(err.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no config file here") as err:
        config_of("demo", tmp_path / "nope.toml")
    assert "nope.toml" in str(err.value)


def test_usage_help_and_unknown_stages(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: twotower STAGE [--config FILE.toml] [--set KEY=VALUE ...]")
    assert "\n    twotower demo --config configs/fashion_mnist.toml\n" in out  # the examples
    assert "\n  make_shop           Generate the synthetic shop.\n" in out  # a line per stage
    assert all(f"\n  {stage} " in out for stage in cli.STAGES)
    assert "A config file is TOML." in out and "--debug` shows its traceback" in out
    cli.main([])
    assert capsys.readouterr().out == out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trian"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("twotower: error: unknown stage 'trian'; stages:")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("usage: twotower demo [--config FILE.toml] [--set KEY=VALUE "
                                   "...] [--threads N] [--debug] [options]")
    assert "\n  --config FILE.toml  " in out and "\n  --set KEY=VALUE     " in out
    assert "--train.epochs" in out and "Most passes over the training split" in out
    assert "--threads N" in out and "--debug" in out
    assert re.search(r"\d%", out)  # a docstring's % is printed, not %-formatted
    with pytest.raises(SystemExit):
        cli.main(["prepare", "-h"])
    assert capsys.readouterr().out.startswith("usage: twotower prepare --source SOURCE [--config")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--config", "bad.toml"])
    assert exit_.value.code == 2
    assert re.fullmatch(r"twotower: error: bad\.toml: no config file here\n",
                        capsys.readouterr().err)


@pytest.mark.parametrize("argv, says", [
    (["prepare", "--source", "nowhere.parquet", "--run-dir", "{tmp}"],
     "nowhere.parquet: no such file or folder"),
    (["prepare", "--sauce", "x"], "the following arguments are required: --source"),
    (["demo", "--train.epochs", "many"], "argument --train.epochs: invalid int value: 'many'"),
    (["demo", "--train.epoch", "5"],
     "twotower: error: unrecognized arguments: --train.epoch 5; did you mean --train.epochs?\n"),
    (["demo", "--set", "train.epochz=3"], "TrainConfig has no setting 'epochz'"),
    (["demo", "--threads", "0"], "--threads takes a positive integer, got '0'"),
    (["demo", "--set"], "--set needs a value"),
])
def test_expected_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("twotower: error: ") and says in err and err.count("\n") == 1
    with pytest.raises((ValueError, OSError)):  # --debug: the exception, for its traceback
        cli.main([*argv, "--debug"])


@pytest.mark.slow
def test_module_entry_points_share_the_command_line(tmp_path):
    """`python -m pipelines.prepare` prints the same one line and status as `twotower`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--source", str(tmp_path / "no.csv"),
         "--run-dir", str(tmp_path)], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"twotower: error: {tmp_path / 'no.csv'}: no such file or folder")
    assert "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, "-m", "pipelines.demo", "--help"],
                            capture_output=True, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    assert helped.returncode == 0 and helped.stdout.startswith("usage: twotower demo [--config")


def test_threads_sets_torch_threads(monkeypatch):
    """`--threads N` is taken out before the stage parses its options and sets torch's
    threads; without it torch keeps its own default."""
    seen = []
    monkeypatch.setattr(cli, "set_threads", seen.append)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--threads", "3", "--help"])
    assert seen == [3]
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert seen == [3]
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_a_stage_runs_from_a_config_file(tmp_path, capsys):
    path = tmp_path / "shop.toml"
    path.write_text(f'run_dir = "{tmp_path / "run"}"\n[make_shop.shop]\nnum_items = 30\n'
                    "num_users = 10\nnum_interactions = 200\nimage_size = 8\n")
    cli.main(["make_shop", "--config", str(path), "--set", "shop.seed=3"])
    summary = json.loads(capsys.readouterr().out)
    catalog = pd.read_parquet(summary["catalog"])
    assert len(catalog) == 30 and summary["num_interactions"] == 200
    made = json.loads(Path(summary["config"]).read_text())
    assert made["seed"] == 3
    assert parse_config(MakeShopConfig, cli.stage_argv("make_shop", MakeShopConfig, path)
                        ).shop.num_items == 30


@pytest.mark.slow
@pytest.mark.usefixtures("local_mlflow")
def test_the_console_script_exits_zero_after_a_stage(tmp_path):
    """`twotower` is `sys.exit(main())`: a stage that succeeds (`prepare`, whose own main
    returns its summary) must leave exit status 0."""
    shop = make_shop(MakeShopConfig(run_dir=str(tmp_path), shop=ShopConfig(
        num_items=20, num_users=10, num_interactions=200, image_size=8)))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
         "prepare", "--run-dir", str(tmp_path), "--set", f"source={shop['interactions']}",
         "--set", "data.min_user_interactions=1", "--set", "data.min_item_interactions=1"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prepare" / "manifest.json").is_file()


def test_config_and_set_take_the_inline_form_too(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[demo.train]\nepochs = 4\n")
    spaced, _, rest = cli._split(["--config", str(path), "--set", "shop.seed=2", "--x", "1"])
    inline, settings, rest2 = cli._split([f"--config={path}", "--set=shop.seed=2", "--x", "1"])
    assert spaced == inline == str(path) and settings == ["shop.seed=2"]
    assert rest == rest2 == ["--x", "1"]
    with pytest.raises(ConfigError, match="--set needs a value"):
        cli._split(["--set"])
