"""`leaninfer bench summary`: the README feature table from the committed reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench_summary(
    reports: Annotated[Path, typer.Option(help="Folder with the committed report JSON files.")] = Path("reports"),
    write: Annotated[bool, typer.Option(help="Rewrite the feature block of README.md.")] = False,
    readme: Annotated[Path, typer.Option()] = Path("README.md"),
) -> None:
    """Print (or write into README.md) the feature table with the numbers of the committed reports."""
    from leaninfer.bench.summary import feature_table, update_readme

    if write:
        update_readme(readme, reports)
    print(feature_table(reports))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("summary")(bench_summary)
