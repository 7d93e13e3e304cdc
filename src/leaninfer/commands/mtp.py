"""`leaninfer draft train --kind mtp` (the training entry) and `leaninfer bench mtp`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def train_mtp_command(target: str, minutes: float, max_steps: int | None, lr: float, draft_vocab: int,
                      out: Path | None, json_out: Path | None, overrides: str | None) -> None:
    """Train an MTP adapter (see `leaninfer.train.mtp.train_mtp`) and print its summary."""
    from leaninfer.bench.spec import parse_method
    from leaninfer.io.store import resolve
    from leaninfer.models.mtp import user_dir
    from leaninfer.train.mtp import MTPTrainConfig, train_mtp

    opts = parse_method("mtp:" + overrides)[2] if overrides else {}
    data = {k: opts.pop(k) for k in ("data_prompts", "data_minutes", "text_prompts") if k in opts}
    cfg = MTPTrainConfig(minutes=minutes, max_steps=max_steps, lr=lr if lr != 1e-3 else MTPTrainConfig.lr,
                         draft_vocab=draft_vocab, **opts)
    folder = out or user_dir(resolve(target))
    info = train_mtp(target, folder, cfg, **data)
    if json_out:
        json_out.write_text(json.dumps(info, indent=2))
    summary = {k: info[k] for k in ("folder", "budget", "final", "data")}
    print(json.dumps(summary, indent=2))


def bench_mtp(
    quick: Annotated[bool, typer.Option(help="One question per category, 32 new tokens, headline only.")] = False,
    per_category: Annotated[Optional[int], typer.Option(min=1)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    ablations: Annotated[bool, typer.Option(help="Also run the k / decoding / sampler ablations.")] = True,
    others: Annotated[Optional[list[str]], typer.Option(help="Other methods in the same run (repeatable).")] = None,
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/mtp.json"),
) -> None:
    """MTP on Spec-Bench beside plain decoding and the other drafters; base-perplexity drift of gated vs plain
    LoRA -> reports/mtp.{json,md,png}."""
    from leaninfer.bench.mtp import MTPBenchConfig, run_mtp_bench, write_mtp_report

    cfg = MTPBenchConfig.quick() if quick else MTPBenchConfig()
    if per_category is not None:
        cfg.per_category = per_category
    if max_new_tokens is not None:
        cfg.max_new_tokens = max_new_tokens
    if others is not None:
        cfg.others = list(others)
    cfg.ablations = ablations and not quick
    paths = write_mtp_report(run_mtp_bench(cfg), json_path)
    print(paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("mtp")(bench_mtp)
