"""The `spmctl` command line: one module per command group, mounted here.

Nothing heavy is imported at start-up: torch and diffusers load inside the
commands that need them, and plugins load only for the commands that use them
(see `plugin_commands`), so `spmctl --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ..errors import SpmctlError, error_line
from ..version import __version__
from . import attack, benchmark, doctor, download, eval_cmd, export, names, plugins_cmd, sample, train
from .helpfmt import grouped_help
from .plugin_commands import builtin_commands, requested_command, with_plugin_commands

app = typer.Typer(
    name="spmctl",
    help="Erase concepts from Stable Diffusion with Semi-Permeable Membranes (SPM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: it wraps at the terminal width without cutting names
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spmctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Erase concepts from Stable Diffusion with Semi-Permeable Membranes (SPM)."""


app.command("train", help=train.train.__doc__,
            cls=grouped_help(train.HELP_PANELS, train.help_defaults))(train.train)
app.command("sample", help=sample.sample.__doc__,
            cls=grouped_help(sample.HELP_PANELS, sample.help_defaults))(sample.sample)
app.command("attack", help=attack.attack.__doc__)(attack.attack)
app.command("names", help=names.names.__doc__)(names.names)
app.add_typer(export.app, name="export", help="Export membranes: LoRA files, merged membranes or models.")
app.add_typer(download.app, name="download", help="Download models and datasets (seed layout).")
app.add_typer(plugins_cmd.app, name="plugins", help="List plugins, providers and hooks.")
app.add_typer(eval_cmd.app, name="eval", help="Measure erasure: nudity, UnlearnCanvas, CLIP score, FID, cost.")
app.add_typer(benchmark.app, name="benchmark", help="The field's benchmarks in one resumable job: "
              "unlearncanvas, i2p, unlearndiffatk, coco; compare runs.")
app.command("doctor", help=doctor.doctor.__doc__)(doctor.doctor)


# Boolean flags the seed's scripts took with a value (`--use_sample False`, which they then read as
# true). Here a true/false value after one of them is honoured; anything else is left to Typer.
_VALUED_BOOL_FLAGS = {"--use_sample": "use-sample", "--use-sample": "use-sample"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _honour_bool_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, given = arg.partition("=")
        if eq and flag in _VALUED_BOOL_FLAGS and given.lower() in _TRUE | _FALSE:  # --use_sample=false
            name = _VALUED_BOOL_FLAGS[flag]
            out.append(f"--{name}" if given.lower() in _TRUE else f"--no-{name}")
            i += 1
            continue
        name = _VALUED_BOOL_FLAGS.get(arg)
        value = argv[i + 1].lower() if name and i + 1 < len(argv) else None
        if value in _TRUE or value in _FALSE:
            out.append(f"--{name}" if value in _TRUE else f"--no-{name}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    args = _honour_bool_values(sys.argv[1:])
    try:
        command = requested_command(args)
        if command is not None and command not in builtin_commands(app):
            with_plugin_commands(app)(args=args)  # maybe a plugin's command: only now load plugins
        else:
            app(args=args)
    except SpmctlError as exc:
        print(error_line(exc), file=sys.stderr)
        _exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C where no command saves anything: one line, not a traceback
        print("interrupted", file=sys.stderr)
        _exit(130)
    except SystemExit as exc:
        if not isinstance(exc.code, int | None):
            raise  # a message: let Python print it and exit 1
        _exit(exc.code or 0)
    _exit(0)


def _exit(code: int) -> None:
    """Exit; a rank that torchrun started skips the interpreter's teardown.

    Such a rank gets here after its work is saved and it has left the process group
    (spmctl/distributed/launch.py). Now and then gloo aborted the process during teardown ("terminate
    called without an active exception", exit -6), and torchrun then reported a finished run as
    failed and killed the other ranks. Nothing of ours runs at exit, so only the streams need flushing.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from ..distributed.dist import launched_by_torchrun

        if launched_by_torchrun():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)
