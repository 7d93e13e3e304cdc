"""`leaninfer bench moe-decode`: decode ms/token of the dense default model against the MoE made from it (its FFNs
split into `n_experts` experts) at k of n_experts active, at one precision (w8a8 by default), in one run.

Decode speed does not depend on the weights' values, so the MoE here is the MoEfied *structure* of the dense model
(neurons split into equal experts, a random router), built in seconds, not the distilled `leaninfer moe build`.
Settings are interleaved prompt by prompt and repeat by repeat (dense, k=2, k=4, ...), so load changes on a shared
machine hit every setting alike; each cell is the median ms/token over prompts x repeats. Weight bytes read per
token come from the model's quantised buffers (the k chosen experts' share of the expert stacks).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from leaninfer.bench.report import machine_info, markdown_table, median, write_json, write_markdown, write_plot

log = logging.getLogger(__name__)
PROMPTS = ["Explain how a refrigerator keeps food cold.", "Write a short story about a lighthouse keeper.",
           "What are the main causes of inflation?"]


@dataclass
class MoEDecodeBenchConfig:
    model: str = "default"
    precision: str = "w8a8"
    n_experts: int = 16
    ks: list[int] = field(default_factory=lambda: [2, 4, 8])
    max_new_tokens: int = 64
    repeats: int = 5
    gathered_baseline: bool = True  # also time k=4 with float experts gathered per token (the path before w8a8)
    threads: int | None = None  # torch threads (None: the engine's run-time policy, 'auto')
    seed: int = 0
    note: str = ""

    @classmethod
    def quick(cls, **kw) -> MoEDecodeBenchConfig:
        return cls(**{"max_new_tokens": 16, "repeats": 2, **kw})


def moefied_structure(dense_cfg, dense_state: dict, n_experts: int, seed: int = 0) -> nn.Module:
    """The dense model with every FFN split into `n_experts` equal experts (a random balanced neuron split, as
    `moe.moefy.split_experts` lays them out) and a random router: fp32, untrained (for speed measurements)."""
    from leaninfer.moe.build import BuildConfig, _moe_model
    from leaninfer.moe.moefy import split_experts

    g = torch.Generator().manual_seed(seed)
    inter = dense_cfg.intermediate_size
    ffn = {}
    for i in range(dense_cfg.n_layers):
        p = f"layers.{i}.ffn."
        assign = torch.randperm(inter, generator=g) % n_experts  # balanced: inter / n_experts neurons each
        gate_up, down, _ = split_experts(dense_state[p + "gate_proj.weight"], dense_state[p + "up_proj.weight"],
                                         dense_state[p + "down_proj.weight"], assign, n_experts)
        router = torch.randn(n_experts, dense_cfg.dim, generator=g) * dense_cfg.dim**-0.5
        ffn.update({p + "router.weight": router, p + "gate_up": gate_up, p + "down": down})
    return _moe_model(dense_state, dense_cfg, BuildConfig(n_experts=n_experts, top_k=min(8, n_experts)), ffn)


def weight_bytes_per_token(model: nn.Module, k: int | None = None) -> int:
    """Bytes of weights one decode step reads: every quantised linear (the head included) and, of every packed
    expert stack, the k chosen experts' share; float parameters other than the embedding count in full."""
    from leaninfer.models.moe import MoE
    from leaninfer.models.moe_q8 import PackedExperts
    from leaninfer.models.quant import QuantLinear

    total = 0
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        nbytes = sum(t.numel() * t.element_size() for t in own)
        if isinstance(module, PackedExperts):
            total += nbytes * k // module.n_experts
        elif isinstance(module, MoE) and hasattr(module, "gate_up"):  # float stacks gathered per token
            total += (module.gate_up.nbytes + module.down.nbytes) * k // module.cfg.n_experts
        elif isinstance(module, QuantLinear) or (name != "embed" and not isinstance(module, MoE)):
            total += nbytes
    return total


def _unpack(model: nn.Module, fp32_stacks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Put float expert stacks back in place of the packed ones: the gathered-per-token path (the baseline)."""
    for name, module in model.named_modules():
        if name in fp32_stacks:
            del module.packed
            module.gate_up = nn.Parameter(fp32_stacks[name][0], requires_grad=False)
            module.down = nn.Parameter(fp32_stacks[name][1], requires_grad=False)
    return model


def _engines(cfg: MoEDecodeBenchConfig) -> dict:
    """name -> (engine, generate kwargs, weight bytes per token)."""
    from leaninfer.engine import Engine, load
    from leaninfer.io.store import read_model_dir, resolve
    from leaninfer.models.moe import MoE
    from leaninfer.models.quant import quantize_model

    folder = resolve(cfg.model)
    threads = cfg.threads or "auto"
    dense = load(folder, precision=cfg.precision, threads=threads)
    dense_cfg, state, tok = read_model_dir(folder)
    engines = {"dense": (dense, {}, weight_bytes_per_token(dense.model))}

    def moe_engine(state: dict):
        model = moefied_structure(dense_cfg, state, cfg.n_experts, cfg.seed)
        stacks = {n: (m.gate_up.data, m.down.data) for n, m in model.named_modules() if isinstance(m, MoE)}
        return Engine(quantize_model(model, cfg.precision), tok, cfg.precision, str(folder), threads), stacks

    moe, stacks = moe_engine(state)
    for k in sorted(cfg.ks):
        engines[f"moe_k{k}"] = (moe, {"moe_k": k}, weight_bytes_per_token(moe.model, k))
    if cfg.gathered_baseline and cfg.precision == "w8a8":
        base = moe_engine(state)[0]
        _unpack(base.model, stacks)
        engines["moe_k4_gathered"] = (base, {"moe_k": 4}, weight_bytes_per_token(base.model, 4))
    del state, stacks
    gc.collect()
    return engines


def run_moe_decode_bench(cfg: MoEDecodeBenchConfig) -> dict:
    load_before = os.getloadavg()
    engines = _engines(cfg)
    for eng, kw, _ in engines.values():  # warm-up (kernel build, allocator)
        eng.generate(PROMPTS[0], max_new_tokens=4, eos=False, **kw)
    times: dict[str, list[float]] = {name: [] for name in engines}
    threads_used: set = set()
    for _ in range(cfg.repeats):
        for p in PROMPTS:
            for name, (eng, kw, _) in engines.items():
                r = eng.generate(p, max_new_tokens=cfg.max_new_tokens, eos=False, **kw)
                times[name].append(r.stats["tpot_s"] * 1000)
                threads_used.add(r.stats.get("threads"))
    dense_ms = median(times["dense"])
    rows = {}
    for name, (_, _, nbytes) in engines.items():
        ms = median(times[name])
        rows[name] = {"ms_per_token": ms, "ms_runs": times[name], "weight_bytes_per_token": nbytes,
                      "weight_gb_per_s": nbytes / ms / 1e6, "vs_dense": ms / dense_ms}
    k4 = rows.get("moe_k4", {}).get("ms_per_token")
    return {"config": asdict(cfg), "machine": machine_info(), "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()), "threads_used": sorted(threads_used, key=str), "settings": rows,
            "headline": {"dense_ms": dense_ms, "moe_k4_ms": k4,
                         "moe_k4_faster_than_dense": k4 is not None and k4 < dense_ms}}


def reproduce_command(cfg: MoEDecodeBenchConfig) -> str:
    return (f"leaninfer bench moe-decode --precision {cfg.precision} --repeats {cfg.repeats} "
            f"--max-new-tokens {cfg.max_new_tokens}" + (f" --threads {cfg.threads}" if cfg.threads else ""))


def paired_ratios(settings: dict) -> dict[str, float]:
    """Per setting, the median over runs of (its ms / the dense ms of the same prompt and repeat): runs are
    interleaved, so this cancels load that changes between repeats better than a ratio of medians."""
    dense = settings["dense"]["ms_runs"]
    return {name: median([a / b for a, b in zip(r["ms_runs"], dense)]) for name, r in settings.items()}


def write_moe_decode_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = Path(json_path)
    c, s = result["config"], result["settings"]
    for name, ratio in paired_ratios(s).items():
        s[name]["vs_dense_paired"] = ratio
    result["headline"]["moe_k4_vs_dense_paired"] = s.get("moe_k4", {}).get("vs_dense_paired")
    write_json(json_path, result)
    rows = [[name, r["ms_per_token"], r["vs_dense"], r["vs_dense_paired"], r["weight_bytes_per_token"] / 1e6,
             r["weight_bytes_per_token"] / s["dense"]["weight_bytes_per_token"], len(r["ms_runs"])]
            for name, r in s.items()]
    table = markdown_table(["setting", "ms/token (median)", "x dense (medians)", "x dense (paired runs)",
                            "weight MB/token", "x dense bytes", "runs"], rows)
    h = result["headline"]
    verdict = (f"MoE k=4 of {c['n_experts']}: {h['moe_k4_ms']:.1f} ms/token vs dense {h['dense_ms']:.1f} (medians): "
               f"{'faster' if h['moe_k4_faster_than_dense'] else 'NOT faster'} than the dense model; median of the "
               f"paired per-run ratios {h['moe_k4_vs_dense_paired']:.2f}x."
               if h["moe_k4_ms"] else "")
    cfg = MoEDecodeBenchConfig(**{k: v for k, v in c.items() if k in MoEDecodeBenchConfig.__dataclass_fields__})
    md = write_markdown(json_path.with_suffix(".md"), "MoE decode: dense vs MoE at k active experts", [
        ("", f"Model `{c['model']}` at {c['precision']}, its FFNs split into {c['n_experts']} experts (structure "
             f"only: speed does not depend on the weights); {c['max_new_tokens']} new tokens per prompt, "
             f"{len(PROMPTS)} prompts x {c['repeats']} repeats, settings interleaved. Load average before/after: "
             f"{result['loadavg_before'][0]:.1f} / {result['loadavg_after'][0]:.1f} "
             f"({result['machine']['cores']} cores, threads: {result.get('threads_used') or c.get('threads') or 'auto'}"
             ")."
             + (f" Note: {c['note']}" if c.get("note") else "")),
        ("Results", table + "\n\n" + verdict),
        ("Reproduce", f"`{reproduce_command(cfg)}`"),
    ])

    def draw(ax):
        names = list(s)
        ax.bar(names, [s[n]["ms_per_token"] for n in names], color=["gray"] + ["C0"] * (len(names) - 1))
        ax.set_ylabel("ms / token (median)")
        ax.set_title(f"decode at {c['precision']}: dense vs MoE (k of {c['n_experts']})")
        ax.tick_params(axis="x", labelrotation=20)

    png = write_plot(json_path.with_suffix(".png"), draw)
    return json_path, md, png
