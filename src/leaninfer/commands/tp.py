"""`leaninfer bench tp`: TP=1 vs TP=2 vs TP=2 + Sync-Point Drop (docs/tp.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def bench_tp(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "reports/tp.json"),
    quick: Annotated[bool, typer.Option(help="Fewer prompts, passages and B2B steps (minutes, not tens).")] = False,
    model: Annotated[str, typer.Option()] = "default",
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | int8 | int4 (shards are quantised per rank).")] = "fp32",
    tp: Annotated[int, typer.Option(min=2, help="TP degree of the timed runs.")] = 2,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    b2b_steps: Annotated[Optional[int], typer.Option(min=0, help="B2B steps per sensitive block.")] = None,
) -> None:
    """TP speed, communication share, SPD speed/perplexity/accuracy per dropped sync point, communication model."""
    from leaninfer.bench.tp import TPBenchConfig, run_tp_bench, write_tp_report

    cfg = TPBenchConfig.quick(model=model, precision=precision, world=tp) if quick else TPBenchConfig(
        model=model, precision=precision, world=tp)
    if max_new_tokens:
        cfg.max_new_tokens = max_new_tokens
    if b2b_steps is not None:
        cfg.b2b.steps = b2b_steps
    paths = write_tp_report(run_tp_bench(cfg), json_path)
    print(paths[1].read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("tp")(bench_tp)
