"""`leaninfer bench mirror`: Mirror-SD (streaming or EAGLE rollouts) vs plain decoding and EAGLE on Spec-Bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def bench_mirror(
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/mirror.json"),
    per_category: Annotated[int, typer.Option(min=1)] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=2)] = 64,
    gamma: Annotated[int, typer.Option(min=1, help="Draft window length.")] = 3,
    kappa: Annotated[int, typer.Option(min=1, help="Early-exit candidates per position.")] = 2,
    exit_layer: Annotated[Optional[int], typer.Option(help="Early-exit layer l_e (default N/2).")] = None,
    rollout: Annotated[str, typer.Option(help="Primary rollout draft: stream | eagle.")] = "stream",
    compare_rollout: Annotated[Optional[list[str]], typer.Option(help="Rollout drafts also run, as mirror_<name> "
                                                                 "(repeatable; default eagle).")] = None,
    baselines: Annotated[Optional[list[str]], typer.Option(help="Methods to compare with (default eagle).")] = None,
    ablate: Annotated[Optional[list[str]], typer.Option(help="One-factor ablation, e.g. kappa=4 (repeatable).")] = None,
    model: Annotated[str, typer.Option()] = "default",
    precision: Annotated[Optional[str], typer.Option()] = None,
    print_json: Annotated[bool, typer.Option("--print-json", help="Print the headline as JSON.")] = False,
) -> None:
    """Mirror-SD (overlapped and serial) vs plain decoding: speedup, τ, hit rate, exposed draft, latency model."""
    from leaninfer.bench.mirror import MirrorBenchConfig, run_mirror_bench, write_mirror_report

    cfg = MirrorBenchConfig(model=model, precision=precision, per_category=per_category,
                            max_new_tokens=max_new_tokens, gamma=gamma, kappa=kappa, exit_layer=exit_layer,
                            rollout=rollout, compare_rollouts=compare_rollout if compare_rollout is not None
                            else ["eagle"],
                            baselines=baselines if baselines is not None else ["eagle"], ablations=ablate or [])
    result = run_mirror_bench(cfg)
    paths = write_mirror_report(result, json_path)
    print(json.dumps(result["headline"], indent=2) if print_json else paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("mirror")(bench_mirror)
