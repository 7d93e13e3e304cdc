"""`leaninfer draft data`: build a self-distillation set from the target (drafts are trained from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

draft_app = typer.Typer(help="Draft models for speculative decoding: build the data, train, inspect.",
                        no_args_is_help=True)

DEFAULT_FEATURES = [2, 9, 15, 18]  # EAGLE's low/middle/high layers and the last (Medusa/Hydra) of an 18-layer target


DEFAULT_PROMPTS = 480  # `draft data` and `draft train` share one default set


def _data_dir(engine, n_prompts: int, new_tokens: int, derived: bool, features: list[int] | None = None) -> Path:
    from leaninfer.paths import cache_dir

    name = f"{Path(engine.source).name}-{engine.precision}-n{n_prompts}-t{new_tokens}{'-d' if derived else ''}"
    if features is not None and list(features) != DEFAULT_FEATURES:  # the default set keeps its old name
        name += "-f" + (".".join(str(f) for f in features) or "none")
    return cache_dir("distill", name, create=False)


def _check_features(engine, layers: list[int]) -> None:
    bad = [n for n in layers if not 1 <= n <= engine.cfg.n_layers]
    if bad:
        raise typer.BadParameter(f"feature layers {bad} are outside 1..{engine.cfg.n_layers} for this target")


@draft_app.command("data")
def draft_data(
    target: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    n_prompts: Annotated[int, typer.Option(min=1)] = DEFAULT_PROMPTS,
    new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    feature_layers: Annotated[Optional[list[int]], typer.Option(help="Layer outputs to store (repeatable; default "
                                                                "2, 9, 15, 18: what `draft train` reads).")] = None,
    tokens_only: Annotated[bool, typer.Option(help="Store no hidden states (draft-lm / mirror only).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: user cache).")] = None,
    precision: Annotated[Optional[str], typer.Option()] = None,
    derived: Annotated[bool, typer.Option(help="Add stage-2 prompts built from the stage-1 outputs.")] = True,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    worker: Annotated[int, typer.Option(min=0, help="Run as worker W of --n-workers processes.")] = 0,
    n_workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Target continuations of the project's own prompts (+ hidden states), sharded and resumable. The defaults
    build the set `draft train` uses by default."""
    import leaninfer
    from leaninfer.train.distill import DistillConfig, build_distill_set

    if worker >= n_workers:
        raise typer.BadParameter(f"--worker must be in 0..{n_workers - 1} for --n-workers {n_workers}")
    layers = [] if tokens_only else list(feature_layers or DEFAULT_FEATURES)
    cfg = DistillConfig(n_prompts=n_prompts, new_tokens=new_tokens, feature_layers=layers,
                        derived=derived, batch_size=batch_size, worker=worker,
                        n_workers=n_workers)
    engine = leaninfer.load(target, precision=precision)
    _check_features(engine, layers)
    folder = out or _data_dir(engine, n_prompts, new_tokens, derived, layers)
    print(build_distill_set(engine, folder, cfg))


@draft_app.command("train")
def draft_train(
    kind: Annotated[str, typer.Option(help="eagle | medusa | hydra | draft-lm | mirror (streaming) | mtp (mask "
                                      "tokens + gated LoRA; options: docs/mtp.md)")] = "eagle",
    target: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="Distillation set (default: the one `draft data` "
                                                 "builds with its defaults, built or finished first if "
                                                 "missing or partial).")] = None,
    minutes: Annotated[float, typer.Option(min=0.1, help="Wall-clock training budget.")] = 30.0,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    batch_tokens: Annotated[int, typer.Option(min=64)] = 4096,
    draft_vocab: Annotated[int, typer.Option(min=16)] = 16384,
    ttt_steps: Annotated[int, typer.Option(min=1)] = 3,
    n_heads: Annotated[int, typer.Option(min=1)] = 4,
    lm_layers: Annotated[Optional[str], typer.Option(help="draft-lm: comma-separated target layers it starts "
                                                     "from (default 0,6,11,17).")] = None,
    n_streams: Annotated[int, typer.Option(min=1, help="mirror: speculative streams (1 + S tokens per forward).")] = 3,
    stream_layers: Annotated[int, typer.Option(min=1, help="mirror: top layers with multi-stream attention.")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the user cache, where "
                                                "`leaninfer.load(...).draft(kind)` finds it).")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing checkpoint instead of resuming.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the training summary here.")] = None,
    mtp: Annotated[Optional[str], typer.Option(help="mtp: 'key=value,...' overrides of MTPTrainConfig and "
                                               "data_prompts / data_minutes / text_prompts.")] = None,
) -> None:
    """Train a draft on the target's self-distillation set, resumable, with a curve of offline τ."""
    import json

    if kind == "mtp":
        from leaninfer.commands.mtp import train_mtp_command

        return train_mtp_command(target, minutes, max_steps, lr, draft_vocab, out, json_out, mtp)

    import leaninfer
    from leaninfer.io.drafts import KINDS, draft_dir
    from leaninfer.train.distill import DistillConfig, build_distill_set, check_distill_set, is_complete
    from leaninfer.train.drafts import DraftTrainConfig, DraftTrainer

    if kind not in KINDS:  # checked before the target is loaded
        raise typer.BadParameter(f"unknown draft kind {kind!r}; choose from {', '.join(KINDS)}", param_hint="--kind")
    try:
        extra = {"lm_layers": tuple(int(x) for x in lm_layers.split(","))} if lm_layers else {}
    except ValueError:
        raise typer.BadParameter(f"--lm-layers must be comma-separated integers, got {lm_layers!r}") from None
    if data is not None:
        try:
            check_distill_set(data)
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="--data") from None
    engine = leaninfer.load(target)
    if kind == "mirror":  # the streaming draft starts from the trained draft LM when there is one
        base = draft_dir(engine.source, "draft-lm")
        extra.update(n_streams=n_streams, stream_layers=stream_layers,
                     init_from=str(base) if (base / "weights.pt").exists() else None)
    cfg = DraftTrainConfig(kind=kind, minutes=minutes, max_steps=max_steps, lr=lr, batch_tokens=batch_tokens,
                           draft_vocab=draft_vocab, ttt_steps=ttt_steps, n_heads=n_heads, **extra)
    if data is None:
        default = DistillConfig(n_prompts=DEFAULT_PROMPTS, new_tokens=128, derived=True,
                                feature_layers=DEFAULT_FEATURES)
        data = _data_dir(engine, DEFAULT_PROMPTS, 128, True, DEFAULT_FEATURES)
        if not is_complete(data, default):  # missing or interrupted: build (resumes from the shards written)
            build_distill_set(engine, data, default)
    folder = out or draft_dir(engine.source, kind)
    if fresh and (folder / "checkpoint.pt").exists():
        (folder / "checkpoint.pt").unlink()
    # a draft LM copies target layers, so it starts from the unquantised weights
    model = leaninfer.load(target, precision="fp32").model if kind in ("draft-lm", "mirror") else engine.model
    trainer = DraftTrainer(model, data, folder, cfg)
    resumed = trainer.resume()
    info = trainer.run()
    last = info["curve"][-1]
    summary = {"kind": kind, "folder": str(folder), "resumed": resumed, "steps": info["steps"],
               "train_tokens": info["train_tokens"], "train_seconds": info["train_seconds"],
               "draft_vocab_coverage": info["draft_vocab_coverage"], "chain_tau": last["chain_tau"],
               "acc_by_depth": last["acc_by_depth"]}
    if json_out:
        json_out.write_text(json.dumps({**summary, "curve": info["curve"]}, indent=2))
    print(json.dumps(summary, indent=2))


@draft_app.command("report")
def draft_report(
    target: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/drafts.json"),
) -> None:
    """Training summaries and offline τ curves of the trained drafts -> reports/drafts.{json,md,png}."""
    from leaninfer.bench.drafts import collect, write_draft_report
    from leaninfer.io.store import resolve

    paths = write_draft_report(collect(str(resolve(target))), json_path)
    print(paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(draft_app, name="draft")
