"""`slatte --help`, every command's `--help`, `--version` and argument errors answer without
importing torch; `import slatte` and its packages show their public names before importing them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import slatte

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Runs the CLI as `python -m slatte.cli ARGS` does, then reports whether torch got imported.
PROBE = """
import runpy, sys
sys.argv = ["slatte", *sys.argv[1:]]
try:
    runpy.run_module("slatte.cli", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("exit", code, "torch" in sys.modules)
"""


# Each command's --help and one argument error of each (a bad choice or a value of the wrong
# type: argparse's own checks, and the checks of the guidance flags' types).
COMMAND_CASES = [
    ([name, "--help"], 0)
    for name in ("train", "sample", "bench", "eval", "convert", "finetune", "stg-search")
] + [
    (["train", "--steps", "abc"], 2),
    (["train", "--attention", "nosuch"], 2),
    (["sample", "--sampler", "nosuch"], 2),
    (["sample", "--stg-scale", "-1"], 2),
    (["sample", "--stg-strategy", "nosuch"], 2),
    (["sample", "--stg-adaptive", "0.5,nosuch"], 2),
    (["bench", "--heads", "x"], 2),
    (["eval"], 2),
    (["convert"], 2),
    (["finetune", "--mode", "nosuch"], 2),
    (["stg-search"], 2),
]


@pytest.mark.parametrize(
    "argv, code",
    [(["--help"], 0), (["--version"], 0), (["nosuch"], 2), ([], 2), (["--nosuch"], 2)]
    + COMMAND_CASES,
)
def test_help_version_and_argument_errors_do_not_import_torch(argv, code):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] == f"exit {code} False", done.stderr
    if code == 2:
        assert "error:" in done.stderr.splitlines()[-1], done.stderr
    if argv == ["--version"]:
        assert f"slatte {slatte.__version__}" in done.stdout


def test_every_command_is_listed_and_has_its_own_help(capsys):
    from slatte.cli import COMMANDS, build_parser

    with pytest.raises(SystemExit):
        build_parser(["--help"]).parse_args(["--help"])
    listing = capsys.readouterr().out
    for name, (summary, _) in COMMANDS.items():
        assert name in listing and summary.split()[0] in listing
        with pytest.raises(SystemExit):
            build_parser([name, "--help"]).parse_args([name, "--help"])
        assert f"usage: slatte {name}" in capsys.readouterr().out


def test_public_names_are_in_dir_and_the_docstring():
    names = dir(slatte)
    for name in ("enable_sla", "disable_sla", "enable_stg", "ops", "models", "training"):
        assert name in names and name in slatte.__doc__
    assert slatte.ops.attention is not None and callable(slatte.enable_sla)
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        slatte.nosuch  # noqa: B018


def test_subpackages_list_their_names_before_importing_them():
    # A fresh interpreter: dir() of each package lists its public names (its __all__) while
    # torch is still not imported, and `from package import name` then imports what it needs.
    probe = """
import sys, importlib
packages = ["ops", "ops.sla", "nn", "models", "guidance", "diffusion", "training", "data",
            "eval", "integrations", "parallel"]
for name in packages:
    module = importlib.import_module("slatte." + name)
    assert set(module.__all__) <= set(dir(module)), name
print("torch" in sys.modules)
from slatte.training import TrainConfig, train
from slatte.ops import sparse_linear_attention
print(callable(train), callable(sparse_linear_attention), TrainConfig.__name__)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert done.stdout.split() == ["False", "True", "True", "TrainConfig"], done.stderr


@pytest.mark.parametrize(
    "package, name",
    [
        ("slatte.ops", "attention"),
        ("slatte.ops", "linear_attention"),
        ("slatte.guidance", "combine"),
        ("slatte.integrations", "finetune"),
    ],
)
def test_a_function_named_as_its_submodule_stays_the_function(package, name):
    # Importing the submodule first binds it on the package; the package must keep exporting
    # the function, as an eager `from .attention import attention` did.
    probe = f"""
import importlib, types
importlib.import_module("{package}.{name}")
from {package} import {name} as value
print(callable(value), isinstance(value, types.ModuleType))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert done.stdout.split() == ["True", "False"], done.stderr
