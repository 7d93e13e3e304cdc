"""`leaninfer moe build|phds|eval` and `leaninfer bench moe`: parse, call the library, print."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

moe_app = typer.Typer(help="Mixture of experts: build one from the default model, PHDS dial-k SFT, RoE, eval.",
                      no_args_is_help=True)


def _emit(result: dict, json_out: bool) -> None:
    if json_out:
        print(json.dumps(result, default=str))
    else:
        for k, v in result.items():
            print(f"{k:22s} {v}")


@moe_app.command("build")
def moe_build(
    name: Annotated[Optional[str], typer.Option(help="Name of the MoE in the user cache (default gemma3-moe, "
                                                    "with --quick gemma3-moe-quick).")] = None,
    experts: Annotated[Optional[int], typer.Option(min=2, help="Experts per layer (default 16).")] = None,
    k: Annotated[Optional[int], typer.Option(min=1, help="Native experts per token (default 8).")] = None,
    train_steps: Annotated[Optional[int], typer.Option(min=1, help="Most distillation steps (the time budget may "
                                                                  "end training first).")] = None,
    max_minutes: Annotated[float, typer.Option(min=1.0, help="Budget of this run, set-up included.")] = 60.0,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate of the experts.")] = None,
    router_lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate of the routers.")] = None,
    quick: Annotated[bool, typer.Option(help="A tiny smoke build (minutes).")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even when a finished build exists.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Derive a trained MoE from Gemma 3 270M (MoEfication + distillation); resumable."""
    from leaninfer.moe.build import BuildConfig, build_moe

    logging.basicConfig(level=logging.INFO)
    given = {key: v for key, v in (("name", name), ("n_experts", experts), ("top_k", k), ("train_steps", train_steps),
                                   ("lr", lr), ("router_lr", router_lr)) if v is not None}
    try:  # --quick is a preset: options given explicitly still apply on top of it
        cfg = BuildConfig.quick(**given) if quick else BuildConfig(max_minutes=max_minutes, **given)
        out = build_moe(cfg, force=force)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    meta = json.loads((out / "build.json").read_text())
    t = meta["train"]
    _emit({"model": str(out), "steps_done": t["steps_done"], "tokens": t.get("tokens"), "complete": t["complete"],
           "train_minutes": t["seconds"] / 60, "clock": t.get("clock", "wall"),
           "wall_minutes": t.get("wall_seconds", t["seconds"]) / 60,
           "layer_fit_rel_error": meta["layer_fit_rel_error"]}, json_out)


@moe_app.command("phds")
def moe_phds(
    base: Annotated[str, typer.Option(help="A built MoE name or model folder.")] = "gemma3-moe",
    steps: Annotated[Optional[int], typer.Option(min=1, help="SFT steps (default: SFTConfig.steps).")] = None,
    k_set: Annotated[Optional[list[int]], typer.Option("--k", help="k values to train (repeatable).")] = None,
    anchor_k: Annotated[Optional[int], typer.Option(help="Low k the curriculum anchors at.")] = 4,
    oracles: Annotated[bool, typer.Option(help="Also run the fixed-k oracle SFT at every k (same budget).")] = False,
    oracle_k: Annotated[Optional[list[int]], typer.Option("--oracle-k", help="Run the oracle SFT at this k "
                                                          "(repeatable); with --no-phds only these.")] = None,
    phds: Annotated[bool, typer.Option(help="Run the PHDS SFT.")] = True,
    loss: Annotated[str, typer.Option(help="kd: KL to the dense model the MoE was built from; ce: next-token "
                                           "cross-entropy on the training text.")] = "kd",
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak LR of the experts (default: SFTConfig).")
                  ] = None,
    router_lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak LR of the routers.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option()] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """PHDS SFT (k drawn per step, anchor curriculum); with --oracles the fixed-k baselines. Resumable."""
    from leaninfer.moe.sft import SFTConfig, run_sft

    logging.basicConfig(level=logging.INFO)
    try:
        opts = {key: v for key, v in (("steps", steps), ("lr", lr), ("router_lr", router_lr)) if v is not None}
        cfg = SFTConfig(base=base, k_set=k_set or [4, 6, 8], anchor_k=anchor_k, max_minutes=max_minutes, loss=loss,
                        **opts)
        out = {"phds": str(run_sft(cfg))} if phds else {}
        ks = sorted(set((cfg.k_set if oracles else []) + (oracle_k or [])))
        out.update({f"oracle{k}": str(run_sft(cfg, oracle_k=k)) for k in ks})
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise typer.BadParameter(str(e)) from e
    _emit(out, json_out)


@moe_app.command("eval")
def moe_eval(
    model: Annotated[str, typer.Option(help="A built MoE name, or a model folder ('default' for the dense).")
                     ] = "gemma3-moe",
    k: Annotated[Optional[list[int]], typer.Option("--k", help="Dialled k (repeatable; default native).")] = None,
    roe: Annotated[Optional[int], typer.Option(min=1, help="Score with a Roster of N experts.")] = None,
    roe_tau: Annotated[float, typer.Option(min=0.0)] = 0.2,
    roe_clean_layers: Annotated[int, typer.Option(min=0)] = 1,
    split: Annotated[str, typer.Option(help="test | val")] = "test",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Held-out perplexity and multiple-choice accuracy at each k (cached per setting)."""
    from leaninfer.io.store import resolve
    from leaninfer.moe.build import built_model
    from leaninfer.moe.evaluate import EvalConfig, eval_data, evaluate, load_fp32
    from leaninfer.moe.roe import RoEConfig

    logging.basicConfig(level=logging.INFO)
    folder = built_model(model) or resolve(model)
    engine = load_fp32(folder)
    cfg = EvalConfig(split=split)
    data = eval_data(engine.tokenizer.encode, cfg)
    roe_cfg = RoEConfig(roe, roe_tau, roe_clean_layers) if roe else None
    out = {}
    try:
        for kk in k or [None]:
            r = evaluate(engine, folder, data, cfg, kk, roe_cfg)
            out[f"k={kk or 'native'}"] = {"ppl": r["ppl"], "acc": r["acc"], "tokens": r["tokens"]}
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    _emit(out, json_out)


def bench_moe(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "reports/moe.json"),
    quick: Annotated[bool, typer.Option(help="Tiny build, 2 SFT steps, few passages: a smoke run.")] = False,
    note: Annotated[str, typer.Option(help="Free text for the report (e.g. what else ran meanwhile).")] = "",
) -> None:
    """Dial k (base / PHDS / oracle-k), cross-sparsity agreement, RoE vs plain: tables and plot in reports/."""
    from leaninfer.bench.moe import MoEBenchConfig, run_moe_bench, write_moe_report

    logging.basicConfig(level=logging.INFO)
    cfg = MoEBenchConfig.quick() if quick else MoEBenchConfig()
    cfg.note = note
    paths = write_moe_report(run_moe_bench(cfg), json_path)
    print(paths[1].read_text())


def bench_moe_decode(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "reports/moe_decode.json"),
    precision: Annotated[str, typer.Option(help="Precision of both models.")] = "w8a8",
    k: Annotated[Optional[list[int]], typer.Option("--k", help="Active experts (repeatable; default 2, 4, 8).")
                 ] = None,
    experts: Annotated[int, typer.Option(min=2, help="Experts per layer.")] = 16,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=2)] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1)] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads (default: the library's).")] = None,
    quick: Annotated[bool, typer.Option(help="16 tokens, 2 repeats: a smoke run.")] = False,
    note: Annotated[str, typer.Option(help="Free text for the report (e.g. what else ran meanwhile).")] = "",
) -> None:
    """Decode ms/token: dense vs the MoE made from it at k of E experts (interleaved runs, medians)."""
    from leaninfer.bench.moe_decode import MoEDecodeBenchConfig, run_moe_decode_bench, write_moe_decode_report

    logging.basicConfig(level=logging.INFO)
    opts = {key: v for key, v in (("ks", k), ("max_new_tokens", max_new_tokens), ("repeats", repeats))
            if v is not None}
    base = MoEDecodeBenchConfig.quick if quick else MoEDecodeBenchConfig
    cfg = base(precision=precision, n_experts=experts, threads=threads, note=note, **opts)
    paths = write_moe_decode_report(run_moe_decode_bench(cfg), json_path)
    print(paths[1].read_text())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(moe_app, name="moe")
    bench.command("moe")(bench_moe)
    bench.command("moe-decode")(bench_moe_decode)
