"""The `leaninfer` command line: a thin Typer app.

Every command group lives in its own module under `leaninfer.commands` and exposes
`register(app, bench)`, where `bench` is the `leaninfer bench ...` sub-app. Commands only parse
arguments, call the library and print; the work is done by importable functions.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import typer

from leaninfer import commands

app = typer.Typer(help="leaninfer: cheaper inference without losing quality.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: write JSON, a markdown table and a PNG plot under reports/.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app, bench_app)


_register_all()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
