"""The `leaninfer` command line: a thin Typer app.

Every command group lives in its own module under `leaninfer.commands` and exposes
`register(app, bench)`, where `bench` is the `leaninfer bench ...` sub-app. Commands only parse
arguments, call the library and print; the work is done by importable functions.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
import sys
import traceback

import typer

from leaninfer import commands

app = typer.Typer(help="leaninfer: cheaper inference without losing quality.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: write JSON, a markdown table and a PNG plot under reports/.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


_VERBOSE = {"on": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", help="Show INFO logs, and a traceback on errors "
                                       "(accepted anywhere on the command line).")) -> None:
    """leaninfer: cheaper inference without losing quality."""
    _VERBOSE["on"] = _VERBOSE["on"] or verbose


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app, bench_app)


def _guard(fn):
    """Run a command; an error becomes one line on stderr and a non-zero exit (`--verbose`: the traceback too)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, _ClickException):
            raise
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place that turns errors into lines
            if _VERBOSE["on"]:
                traceback.print_exception(e)
            message, code = error_message(e)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None

    return run


def _guard_all(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            info.callback = _guard(info.callback)
    for sub in group.registered_groups:
        _guard_all(sub.typer_instance)


try:  # Typer ships its own copy of click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # older Typer
    from click import ClickException as _ClickException

_register_all()
_guard_all(app)


def error_message(exc: BaseException) -> tuple[str, int]:
    """One line for a failed command and its exit status: 2 for bad input (a path, a name, an option), 130
    for Ctrl-C, 1 otherwise. The traceback is for `--verbose` only."""
    from leaninfer.io import ModelLoadError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.strerror or 'not found'}: {exc.filename}", 2
    if isinstance(exc, (ModelLoadError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError,
                        TypeError, KeyError)):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text or type(exc).__name__, 2
    if isinstance(exc, MemoryError):
        return "out of memory", 1
    return f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)", 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `leaninfer` script. `--verbose` (anywhere) shows INFO logs and tracebacks; without it
    an error is one line on stderr and a non-zero exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    _VERBOSE["on"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        result = app(args, prog_name="leaninfer", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except _ClickException as e:  # usage errors: bad option values, missing arguments
        message = e.format_message()
        if message:  # (no_args_is_help has printed the help already)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {message}{hint}", file=sys.stderr)
        code = e.exit_code
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place that turns
        if verbose:                                                      # errors into messages
            traceback.print_exception(e)
        message, code = error_message(KeyboardInterrupt() if isinstance(e, typer.Abort) else e)
        print(f"error: {message}", file=sys.stderr)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
