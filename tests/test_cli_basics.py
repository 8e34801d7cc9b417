"""The CLI answers as a user expects: help, version, completion, commands present."""

from __future__ import annotations

import pytest
from conftest import run_spmctl

from spmctl import __version__


def test_help_lists_every_command():
    result = run_spmctl("--help")
    assert result.returncode == 0
    for command in ("train", "sample", "export", "download", "plugins", "eval"):
        assert command in result.stdout


def test_version():
    result = run_spmctl("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"spmctl {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["plugins", "list"]])
def test_help_and_plugins_do_not_import_torch(argv: list[str]):
    import subprocess
    import sys

    # the console entry point as a user runs it; `plugins list` loads every default plugin (the metrics too)
    code = (f"import sys; sys.argv = ['spmctl', *{argv!r}]; from spmctl.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False False"


def test_shell_completion_script():
    # name the shell instead of letting Typer guess it from the parent process (not a shell under CI)
    result = run_spmctl("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert result.returncode == 0
    assert "_SPMCTL_COMPLETE" in result.stdout


@pytest.mark.parametrize(("exc", "kwargs", "expected"), [
    (ValueError(""), {}, "ValueError"),  # an empty message once raised IndexError in the handler itself
    (OSError("  \n"), {"with_type": True}, "OSError"),
    (RuntimeError("\n  first line  \nsecond line"), {}, "first line"),
    (KeyError("k"), {"with_type": True}, "KeyError: 'k'"),
    (ValueError("x" * 50), {"limit": 10}, "x" * 10),
])
def test_error_one_liner(exc: BaseException, kwargs: dict, expected: str):
    from spmctl.errors import one_line

    assert one_line(exc, **kwargs) == expected
