"""Help reads at 80 columns: whole option names, no squeezed descriptions, defaults, groups;
tables (plugins list) fit the terminal."""

from __future__ import annotations

import re

import pytest
from conftest import run_spmctl

COLUMNS = {"COLUMNS": "80"}


def command_paths() -> list[tuple[list[str], list[str]]]:
    """Every built-in command (path, its option names), from the CLI's own command tree."""
    import typer

    from spmctl.cli import app

    out = []

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        names = [n for p in command.params for n in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
                 if n.startswith("-")]
        out.append((path, names))

    walk(typer.main.get_command(app), [])
    return out


PATHS = command_paths()


@pytest.mark.parametrize(("path", "names"), PATHS, ids=[" ".join(p) or "spmctl" for p, _ in PATHS])
def test_help_fits_80_columns_with_every_option_name_whole(path: list[str], names: list[str]) -> None:
    from typer.testing import CliRunner

    from spmctl.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], env=COLUMNS)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    for name in names:  # whole: not cut by an ellipsis, not glued to another name
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (name, result.output)
    assert "<bool>" not in result.output


@pytest.mark.parametrize("command", ["train", "sample"])
def test_train_and_sample_help_grouped_with_defaults(command: str) -> None:
    result = run_spmctl(command, "--help", env=COLUMNS)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    if command == "train":
        sections = ["Configuration:", "What to erase:", "Model and run:", "Many concepts, many devices:", "Output:"]
        assert re.search(r"--iterations INT\s+train.iterations\s+\[default: 3000\]", text)
        assert "--template-name TEXT" in text and "(also --template_name)" in " ".join(text.split())
    else:
        sections = ["Configuration:", "Model and membranes:", "Prompts:", "Generation:", "Output:"]
        assert re.search(r"--steps INT\s+Denoising steps.\s+\[default: 30\]", text)
        assert re.search(r"--seed INT\s+Seed .*\s+\[default: 0\]", text)
        assert "train" not in text.replace("trained", "")  # no train key suggested for sample
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    # a description is not squeezed into a narrow column: help text starts within 30 columns
    starts = [len(m.group(1)) for m in re.finditer(r"^(  \S.*?  )\S", text, re.MULTILINE)]
    assert starts and max(starts) <= 30


def test_plugins_list_fits_the_terminal_and_stays_one_line_when_piped() -> None:
    narrow = run_spmctl("plugins", "list", env=COLUMNS)
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line.rstrip()) for line in narrow.stdout.splitlines()) <= 80
    assert "unlearncanvas" in narrow.stdout and "clip_score" in narrow.stdout
    piped = run_spmctl("plugins", "list")
    row = next(line for line in piped.stdout.splitlines() if " concept " in line)
    assert "Any text as the concept to erase (same settings as style/object)" in row
