"""`leaninfer serve` (OpenAI-compatible HTTP server) and `leaninfer bench serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def serve(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the server local.")] = "127.0.0.1",
    model: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    precision: Annotated[Optional[str], typer.Option(help="w8a8 | fp32 | bf16 | int8 | int4 (default: w8a8)")] = None,
    served_name: Annotated[Optional[str], typer.Option(help="Model id in /v1/models (default: --model).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Plain requests decoded together.")] = 8,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting prompts before 429.")] = 64,
    max_model_len: Annotated[int, typer.Option(min=2, help="Prompt + max_tokens limit.")] = 2048,
    max_tokens: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 1024,
    api_key: Annotated[Optional[str], typer.Option(help="Require this bearer key (or LEANINFER_API_KEY).")] = None,
    profile: Annotated[Optional[list[str]], typer.Option(
        help="NAME=METHOD_SPEC, served as model id MODEL:NAME (repeatable), e.g. ngram=ngram:k=4.")] = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,
    /health, /metrics) until stopped."""
    import leaninfer
    from leaninfer.serve import ServeConfig
    from leaninfer.serve.run import serve as run_server

    try:
        profiles = dict(p.split("=", 1) for p in profile or [] if "=" in p)
        if len(profiles) != len(profile or []):
            raise ValueError("--profile takes NAME=METHOD_SPEC")
        cfg = ServeConfig(host=host, port=port, model_name=served_name or model, max_batch=max_batch,
                          max_queue=max_queue, max_model_len=max_model_len, max_tokens_cap=max_tokens,
                          api_key=api_key or os.environ.get("LEANINFER_API_KEY") or None, profiles=profiles)
        engine = leaninfer.load(model, precision=precision)
    except (ValueError, leaninfer.ModelLoadError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    console.print(f"serving {cfg.model_name} ({engine.precision}) on http://{host}:{port}/v1")
    run_server(engine, cfg)


def bench_serve(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "reports/serve.json"),
    quick: Annotated[bool, typer.Option(help="A few minutes: fewer requests and tokens.")] = False,
    model: Annotated[str, typer.Option()] = "default",
    clients: Annotated[Optional[list[int]], typer.Option(help="Concurrent clients (repeatable).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    requests: Annotated[Optional[int], typer.Option(min=1, help="Requests per client count.")] = None,
    llamacpp: Annotated[bool, typer.Option(help="Also llama.cpp's server when llama_cpp is importable.")] = True,
    rounds: Annotated[int, typer.Option(min=1, help="Passes over the levels (interleaved, pooled).")] = 1,
) -> None:
    """Throughput and TTFT / TPOT percentiles of `leaninfer serve` at 1, 4 and 8 concurrent clients."""
    from leaninfer.bench.serve import ServeBenchConfig, run_serve_bench, write_serve_report

    cfg = ServeBenchConfig.quick(model=model) if quick else ServeBenchConfig(model=model)
    if clients:
        cfg.clients = clients
    if max_tokens:
        cfg.max_tokens = max_tokens
    if requests:
        cfg.requests = requests
    cfg.llamacpp, cfg.rounds = llamacpp, rounds
    paths = write_serve_report(run_serve_bench(cfg), json_path)
    print(paths[1].read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command()(serve)
    bench.command("serve")(bench_serve)
