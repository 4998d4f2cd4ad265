"""`slatte --help`, `--version` and argument errors answer without importing torch; `import
slatte` shows its public names."""

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


@pytest.mark.parametrize(
    "argv, code",
    [(["--help"], 0), (["--version"], 0), (["nosuch"], 2), ([], 2), (["--nosuch"], 2)],
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
