"""`leaninfer bench spec`: the Spec-Bench runner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def bench_spec(
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/spec.json"),
    quick: Annotated[bool, typer.Option(help="One question per category, 32 tokens.")] = False,
    questions: Annotated[Optional[Path], typer.Option(help="Spec-Bench question.jsonl")] = None,
    methods: Annotated[Optional[list[str]], typer.Option(help="Methods besides plain decoding.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    per_category: Annotated[Optional[int], typer.Option(min=1)] = None,
    model: Annotated[str, typer.Option()] = "default",
    precision: Annotated[Optional[str], typer.Option()] = None,
    previous: Annotated[Optional[Path], typer.Option(help="An earlier run's JSON to show beside this one.")] = None,
) -> None:
    """Every speculative method vs plain decoding: tokens/s, speedup, τ per category, lossless check."""
    from leaninfer.bench.spec import SpecBenchConfig, run_spec_bench, write_spec_report

    cfg = (SpecBenchConfig.quick if quick else SpecBenchConfig)(model=model, precision=precision, questions=questions,
                                                                previous=previous)
    if methods:
        cfg.methods = methods
    if max_new_tokens:
        cfg.max_new_tokens = max_new_tokens
    if per_category:
        cfg.per_category = per_category
    paths = write_spec_report(run_spec_bench(cfg), json_path)
    print(paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("spec")(bench_spec)
