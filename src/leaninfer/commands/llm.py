"""`leaninfer generate | info | demo` and `leaninfer bench decode`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    model: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(min=1)] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    method: Annotated[str, typer.Option(help="Decoding method spec name:key=value,... e.g. eagle:depth=5,top_k=3")
                      ] = "ar",
    kv: Annotated[Optional[str], typer.Option(help="KV compression of the prompt: press:budget=N[,block=B] "
                                                   "(e.g. snapkv:budget=128).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="w8a8 | fp32 | bf16 | int8 | int4 (default: w8a8)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming.")] = False,
    moe_k: Annotated[Optional[int], typer.Option(min=1, help="MoE: experts per token (default: native).")] = None,
    roe: Annotated[Optional[int], typer.Option(min=1, help="MoE models: Roster of Experts with N members.")] = None,
    roe_tau: Annotated[float, typer.Option(min=0.0, help="RoE Gumbel noise scale (tuned: docs/moe.md).")] = 0.2,
    roe_clean_layers: Annotated[int, typer.Option(min=0, help="RoE: first/last L layers route cleanly.")] = 1,
    tp: Annotated[int, typer.Option(min=1, help="Tensor-parallel ranks spawned here (docs/tp.md).")] = 1,
    spd: Annotated[Optional[str], typer.Option(help="TP: Sync-Point Drop of N blocks, or a plan file.")] = None,
) -> None:
    """Generate text; streams it as it is produced, then prints stats."""
    import leaninfer
    from leaninfer.request import GenerateRequest, MethodSpec, RoutingSpec, SamplingConfig, kv_policy

    stream = None if json_out else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    request = GenerateRequest(
        max_new_tokens=max_new_tokens, sampling=SamplingConfig(temperature, top_k, top_p, seed),
        method=MethodSpec.parse(method), routing=RoutingSpec(moe_k, roe, roe_tau, roe_clean_layers),
        kv=kv_policy(kv), stop=stop or [])
    if tp > 1 or spd or os.environ.get("WORLD_SIZE", "1") != "1":  # tensor-parallel ranks (or torchrun)
        from leaninfer.parallel.generate import tp_generate

        precision = precision or "fp32"
        out = tp_generate(model, prompt, tp, precision, spd, request, stream=not json_out)
        if out is None:  # torchrun: only rank 0 prints
            return
    else:
        engine = leaninfer.load(model, precision=precision)  # errors: one line from leaninfer.cli
        precision = engine.precision
        out = engine.generate(prompt, request, stream=stream)
    if json_out:
        print(json.dumps({"token_ids": out.token_ids, "text": out.text, "finish_reason": out.finish_reason,
                          **out.stats}))
        return
    print()
    s = out.stats
    console.print(f"[dim]{s['new_tokens']} tokens, {s['tokens_per_s']:.1f} tokens/s, TTFT {s['ttft_s'] * 1000:.0f} ms, "
                  f"TPOT {s['tpot_s'] * 1000:.1f} ms, mean accepted {s['mean_accepted_tokens']:.2f}, "
                  f"{precision}, finish: {out.finish_reason}[/dim]")


def info(
    model: Annotated[str, typer.Option(help="'default', a GGUF file or a model folder.")] = "default",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the model, dtype, device and cache paths."""
    import torch

    import leaninfer
    from leaninfer.paths import cache_dir

    engine = leaninfer.load(model)
    cfg = engine.cfg
    params = sum(p.numel() for p in engine.model.parameters()) + sum(b.numel() for b in engine.model.buffers())
    d = {
        "model": model, "source": engine.source, "arch": cfg.arch, "layers": cfg.n_layers, "dim": cfg.dim,
        "vocab_size": cfg.vocab_size, "parameters_and_buffers": params, "precision": engine.precision,
        "default_precision": leaninfer.DEFAULT_PRECISION, "device": str(engine.device),
        "threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available(),
        "cache_dir": str(cache_dir()), "version": leaninfer.__version__,
        "license_note": "Gemma 3 weights: Gemma Terms of Use apply" if cfg.arch == "gemma3" else None,
    }
    if json_out:
        print(json.dumps(d))
        return
    for k, v in d.items():
        print(f"{k:24s} {v}")


def demo(max_new_tokens: Annotated[int, typer.Option(min=1)] = 48) -> None:
    """The main job: the default model, the fastest exact method, compared with plain decoding."""
    from leaninfer.demo import run_demo

    console.print("[bold]leaninfer demo[/bold]: Gemma 3 270M (Gemma terms apply)")
    rows = run_demo(max_new_tokens)
    table = Table(title="fastest exact method vs plain decoding (same precision)")
    for col in ("prompt", "method", "precision", "tokens/s", "plain tokens/s", "speedup", "same tokens as plain"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.prompt[:28].replace("\n", " ") + "…", r.method, r.precision, f"{r.tokens_per_s:.1f}",
                      f"{r.baseline_tokens_per_s:.1f}", f"{r.speedup:.2f}×", "yes" if r.same_as_baseline else "no")
    for r in rows:
        print(f"\n>>> {r.prompt}\n{r.text}")
    Console(width=120).print(table)


def bench_decode(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "reports/decode.json"),
    quick: Annotated[bool, typer.Option(help="A few minutes: 4 prompts, 32 tokens, 1 run.")] = False,
    model: Annotated[str, typer.Option()] = "default",
    questions: Annotated[Optional[Path], typer.Option(help="Spec-Bench question.jsonl")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1)] = None,
    backends: Annotated[Optional[list[str]], typer.Option(help="ours, ours_fp32, hf, llamacpp")] = None,
    quality_texts: Annotated[Optional[int], typer.Option(min=1, help="Passages for the perplexity check.")] = None,
) -> None:
    """Our AR decode vs transformers generate vs llama.cpp: tokens/s, TTFT, TPOT, peak RSS."""
    from leaninfer.bench.decode import DecodeBenchConfig, run_decode_bench, write_decode_report

    cfg = DecodeBenchConfig.quick(model=model, questions=questions) if quick else DecodeBenchConfig(
        model=model, questions=questions)
    if max_new_tokens:
        cfg.max_new_tokens = max_new_tokens
    if repeats:
        cfg.repeats = repeats
    if backends:
        cfg.backends = backends
    if quality_texts:
        cfg.quality_texts = quality_texts
    result = run_decode_bench(cfg)
    paths = write_decode_report(result, json_path)
    print(paths[1].read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)}")


def bench_precision(
    json_path: Annotated[Path, typer.Option("--json")] = Path("reports/precision.json"),
    quick: Annotated[bool, typer.Option()] = False,
    model: Annotated[str, typer.Option()] = "default",
) -> None:
    """Perplexity, agreement and speed of fp32 / bf16 / int8 / int4 weights; recommends the default."""
    from leaninfer.bench.precision import PrecisionBenchConfig, run_precision_bench, write_precision_report

    cfg = PrecisionBenchConfig.quick(model=model) if quick else PrecisionBenchConfig(model=model)
    paths = write_precision_report(run_precision_bench(cfg), json_path)
    print(paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command()(generate)
    app.command()(info)
    app.command()(demo)
    bench.command("decode")(bench_decode)
    bench.command("precision")(bench_precision)
