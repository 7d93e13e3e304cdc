"""`leaninfer draft data`: build a self-distillation set from the target (drafts are trained from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

draft_app = typer.Typer(help="Draft models for speculative decoding: data (training to come).",
                        no_args_is_help=True)


@draft_app.command("data")
def draft_data(
    target: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    n_prompts: Annotated[int, typer.Option(min=1)] = 256,
    new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    feature_layers: Annotated[Optional[list[int]], typer.Option(help="Layer outputs to store (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: user cache).")] = None,
    precision: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """Target continuations of the project's own prompts (+ hidden states), sharded and resumable."""
    import leaninfer
    from leaninfer.paths import cache_dir
    from leaninfer.train.distill import DistillConfig, build_distill_set

    engine = leaninfer.load(target, precision=precision)
    cfg = DistillConfig(n_prompts=n_prompts, new_tokens=new_tokens, feature_layers=feature_layers or [])
    folder = out or cache_dir("distill", f"{Path(engine.source).name}-{engine.precision}-n{n_prompts}-t{new_tokens}")
    print(build_distill_set(engine, folder, cfg))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(draft_app, name="draft")
