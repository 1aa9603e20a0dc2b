"""The `accelopt` command: one verb per module, errors turned into one line and an exit code."""

from __future__ import annotations

import os
import signal
import sys

import typer

from accelopt.cli import bench, compare, convert, inspect, recipes
from accelopt.cli import sweep
from accelopt.cli import profile
from accelopt.errors import AccelError, EXIT_BAD_INPUT, EXIT_CONVERSION_FAILED, Interrupted, first_line

app = typer.Typer(
    name="accelopt",
    help="Convert, optimize and validate models from one YAML recipe, then lower them to a target.\n\n"
         "Start with `accelopt inspect MODEL`, then `accelopt convert MODEL --recipe cpu-fp32 -o out/`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")) -> None:
    """Global options."""


app.command("convert")(convert.convert)
app.command("inspect")(inspect.inspect)
app.command("compare")(compare.compare)
app.command("bench")(bench.bench)
app.command("sweep")(sweep.sweep)
app.command("profile")(profile.profile)
app.add_typer(recipes.app, name="recipes")


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 1 gate failed, 2 bad input, 3 conversion failed)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ACCELOPT_DEBUG") == "1"
    command = typer.main.get_command(app)
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        # Standalone mode: the CLI layer prints usage errors itself (exit 2) and exits via SystemExit.
        command.main(args=args, prog_name="accelopt", standalone_mode=True)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_BAD_INPUT)
    except AccelError as e:
        if debug:
            raise
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    except Exception as e:
        if debug:
            raise
        sys.stderr.write(f"error: internal error {first_line(e, with_type=True)} (rerun with --debug for the traceback)\n")
        return EXIT_CONVERSION_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C as an AccelError: the CLI layer would turn KeyboardInterrupt into exit 1, a gate failure."""
    raise Interrupted("interrupted; nothing was written to the output folder")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
