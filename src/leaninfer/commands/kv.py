"""`leaninfer bench kv`: KV-cache compression (EpiCache and baselines) on LoCoMo; `leaninfer kv ask`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

kv_app = typer.Typer(help="KV cache compression: EpiCache episodes, presses, conversation sessions.",
                     no_args_is_help=True)


def bench_kv(
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/kv.json"),
    quick: Annotated[bool, typer.Option(help="1 conversation, 2 sessions, 4 questions, 4x only (minutes).")] = False,
    conversations: Annotated[Optional[int], typer.Option(min=1, help="First N LoCoMo conversations.")] = None,
    skip: Annotated[Optional[int], typer.Option(min=0, help="Leave out the first N conversations.")] = None,
    max_sessions: Annotated[Optional[int], typer.Option(min=1, help="History = first N sessions.")] = None,
    questions: Annotated[Optional[int], typer.Option(min=1, help="Questions per conversation.")] = None,
    ratios: Annotated[Optional[str], typer.Option(help="Compression ratios, e.g. 2,4,8.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option(help="Subset of methods (repeat the option).")] = None,
    block: Annotated[Optional[int], typer.Option(min=1, help="Prefill block (tokens).")] = None,
    sinks: Annotated[Optional[int], typer.Option(min=0, help="Never evict the first N history tokens (every "
                                                 "method; covers the prompt header).")] = None,
    episodes: Annotated[Optional[int], typer.Option(min=1, help="EpiCache episodes E.")] = None,
    alpha: Annotated[Optional[float], typer.Option(min=0.0, help="EpiCache sensitivity-aware layer budgets with "
                                                   "this sharpness (default: off, uniform budgets).")] = None,
    headwise: Annotated[bool, typer.Option(help="Head-wise non-uniform selection for every method.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Conversations in parallel processes.")] = 1,
    data: Annotated[Optional[Path], typer.Option(help="LoCoMo JSON (default ../shared/data/locomo).")] = None,
    precision: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """Every method at every ratio on LoCoMo: fidelity/gold F1, log-likelihood, peak cache, latency."""
    from leaninfer.bench.kv import KVBenchConfig, run_kv_bench, write_kv_report

    kw = {k: v for k, v in dict(conversations=conversations, skip=skip, max_sessions=max_sessions, questions=questions,
                                block=block, sinks=sinks, data=data, precision=precision).items() if v is not None}
    if ratios:
        kw["ratios"] = [float(r) for r in ratios.split(",")]
    if methods:
        kw["methods"] = methods
    cfg = (KVBenchConfig.quick if quick else KVBenchConfig)(headwise=headwise, workers=workers, **kw)
    if episodes:
        cfg.epi.n_episodes = episodes
    if alpha is not None:
        cfg.epi.alpha, cfg.epi.sensitivity = alpha, alpha > 0
    paths = write_kv_report(run_kv_bench(cfg), json_path)
    typer.echo(paths[1].read_text())


@kv_app.command("ask")
def ask(
    question: Annotated[list[str], typer.Option("--question", "-q", help="Question(s) about the conversation.")],
    conversation: Annotated[int, typer.Option(min=0, help="LoCoMo conversation index.")] = 0,
    max_sessions: Annotated[Optional[int], typer.Option(min=1)] = 2,
    ratio: Annotated[float, typer.Option(min=1.0, help="Compression ratio of the KV budget.")] = 4.0,
    episodes: Annotated[int, typer.Option(min=1)] = 2,
    json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
) -> None:
    """Build EpiCache episode caches for a LoCoMo conversation with a ChatSession and answer questions."""
    import leaninfer
    from leaninfer.cache.session import ChatSession, SessionConfig
    from leaninfer.eval.locomo import load_locomo

    if json_path is not None and not Path(json_path).parent.is_dir():  # checked before hours of work
        raise typer.BadParameter(f"no such folder: {Path(json_path).parent}", param_hint="--json")
    convs = load_locomo(max_sessions=max_sessions)  # FileNotFoundError: one line from the CLI's entry point
    if conversation >= len(convs):
        raise typer.BadParameter(f"LoCoMo has {len(convs)} conversations (0..{len(convs) - 1}), got {conversation}",
                                 param_hint="--conversation")
    conv = convs[conversation]
    engine = leaninfer.load("default")
    session = ChatSession(engine, SessionConfig(ratio=ratio, n_episodes=episodes))
    session.load_history(conv)
    out = {"conversation": conv.sample_id, "memory_mb": session.memory_bytes() / 2**20,
           "answers": [{"question": q, **session.ask(q)} for q in question]}
    text = json.dumps(out, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
    typer.echo(text)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("kv")(bench_kv)
    app.add_typer(kv_app, name="kv")
