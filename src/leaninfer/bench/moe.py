"""`leaninfer bench moe`: the dial-k and Roster-of-Experts benchmark on the MoE built from Gemma 3 270M.

Stages (each cached, so the benchmark resumes): build the MoE; PHDS SFT and one oracle SFT per dialled k at
the same budget; held-out perplexity / multiple-choice accuracy of the dense model, the base MoE, PHDS and
the oracles at every k; cross-sparsity agreement; the RoE grid on validation and RoE on test; decode
ms/token per k (and for RoE) with the default int8 engine. Writes JSON, then markdown and PNG from it.
"""

from __future__ import annotations

import gc
import itertools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaninfer.bench.moe_report import write_moe_report  # noqa: F401  (re-exported: the CLI and tests use it)
from leaninfer.bench.report import machine_info, peak_rss_mb
from leaninfer.engine import load
from leaninfer.eval.choice import agreement
from leaninfer.io.store import resolve
from leaninfer.moe.build import BuildConfig, build_moe
from leaninfer.moe.evaluate import EvalConfig, RoEGrid, eval_data, evaluate, load_fp32, tune_roe
from leaninfer.moe.roe import RoEConfig
from leaninfer.moe.sft import SFTConfig, run_sft

log = logging.getLogger(__name__)
SPEED_PROMPTS = ["Explain how a refrigerator keeps food cold.", "Write a short story about a lighthouse keeper.",
                 "What are the main causes of inflation?"]


@dataclass
class MoEBenchConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ks: list[int] = field(default_factory=lambda: [4, 6, 8])
    test: EvalConfig = field(default_factory=EvalConfig)
    val: EvalConfig = field(default_factory=lambda: EvalConfig(split="val", ppl_len=128, max_passages=10))
    grid: RoEGrid = field(default_factory=lambda: RoEGrid(taus=[0.05, 0.1, 0.2, 0.3], clean_layers=[1], n=4))
    roe_k: int = 4
    speed_tokens: int = 32
    speed_repeats: int = 2
    tolerance: float = 0.01
    note: str = ""  # free text for the report, e.g. what else ran on the machine during the run

    @classmethod
    def quick(cls) -> MoEBenchConfig:
        return cls(build=BuildConfig.quick(), sft=SFTConfig(base="gemma3-moe-quick", steps=2, seq_len=64),
                   test=EvalConfig(max_passages=6, ppl_len=64, offsets=(0,)),
                   val=EvalConfig(split="val", ppl_len=32, max_passages=2),
                   grid=RoEGrid(taus=[0.25], clean_layers=[1], n=2), speed_tokens=8, speed_repeats=1)


def _eval_model(model_dir: Path, cfg: MoEBenchConfig, ks: list[int | None]) -> dict:
    engine = load_fp32(model_dir)
    data = eval_data(engine.tokenizer.encode, cfg.test)
    out = {str(k): evaluate(engine, model_dir, data, cfg.test, k) for k in ks}
    del engine
    gc.collect()
    return out


def _pairs(preds: dict[int, list[int]]) -> dict[str, float]:
    return {f"{a}-{b}": agreement(preds[a], preds[b]) for a, b in itertools.combinations(sorted(preds), 2)}


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def run_moe_bench(cfg: MoEBenchConfig) -> dict:
    ks = sorted(cfg.ks)
    base_dir = build_moe(cfg.build)
    phds_dir = run_sft(cfg.sft)
    oracle_dirs = {k: run_sft(cfg.sft, oracle_k=k) for k in ks}
    dense_dir = resolve(cfg.build.source)
    dense = _eval_model(dense_dir, cfg, [None])["None"]
    base = _eval_model(base_dir, cfg, ks)
    phds = _eval_model(phds_dir, cfg, ks)
    oracle = {str(k): _eval_model(oracle_dirs[k], cfg, [k])[str(k)] for k in ks}
    agree = {
        "phds": _pairs({k: phds[str(k)]["preds"] for k in ks}),
        "oracle": _pairs({k: oracle[str(k)]["preds"] for k in ks}),
        "base": _pairs({k: base[str(k)]["preds"] for k in ks}),
    }
    roe = _roe_stage(phds_dir, cfg)
    speed = _speed_stage(phds_dir, dense_dir, cfg, roe["config"])
    result = {
        "config": asdict(cfg), "machine": machine_info(), "dense": dense, "base": base, "phds": phds,
        "oracle": oracle, "agreement": agree, "roe": roe, "speed": speed, "peak_rss_mb": peak_rss_mb(),
        "models": {"base": str(base_dir), "phds": str(phds_dir), "oracles": {str(k): str(v) for k, v in
                                                                             oracle_dirs.items()}},
        "build": _read_json(base_dir / "build.json"),
        "training": training_summary(base_dir, phds_dir, oracle_dirs),
    }
    result["headline"] = headline(result, ks)
    result["targets"] = targets(result, ks, cfg.tolerance)
    return result


def _train_row(meta: dict, seq_len: int) -> dict:
    t = meta.get("train", {})
    losses = t.get("losses", [])
    return {"steps": t.get("steps_done"), "tokens": t.get("tokens", (t.get("steps_done") or 0) * seq_len),
            "cpu_minutes": t["seconds"] / 60 if t.get("clock") == "cpu" else None,
            "wall_minutes": t.get("wall_seconds", t.get("seconds", 0.0)) / 60, "complete": t.get("complete"),
            "first_loss": losses[0] if losses else None,
            "last10_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "k_draws": meta.get("k_draws"), "loss": meta.get("loss", "kd" if "layer_fit_rel_error" in meta else "ce")}


def training_summary(base_dir: Path, phds_dir: Path, oracle_dirs: dict[int, Path]) -> dict:
    """Steps, tokens, CPU / wall minutes and losses of the build and of every SFT run (from their metadata)."""
    build = _read_json(base_dir / "build.json")
    out = {"build": _train_row(build, build.get("config", {}).get("seq_len", 0))}
    for name, d in {"phds": phds_dir, **{f"oracle{k}": v for k, v in oracle_dirs.items()}}.items():
        meta = _read_json(d / "sft.json")
        out[name] = _train_row(meta, meta.get("config", {}).get("seq_len", 0))
    return out


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _roe_stage(phds_dir: Path, cfg: MoEBenchConfig) -> dict:
    engine = load_fp32(phds_dir)
    val = eval_data(engine.tokenizer.encode, cfg.val)
    tuned = tune_roe(engine, phds_dir, cfg.roe_k, cfg.grid, val, cfg.val)
    best = tuned["best"]
    roe_cfg = RoEConfig(best["n"], best["tau"], best["clean_layers"], cfg.grid.seed)
    test = eval_data(engine.tokenizer.encode, cfg.test)
    result = evaluate(engine, phds_dir, test, cfg.test, cfg.roe_k, roe_cfg)
    del engine
    gc.collect()
    return {"k": cfg.roe_k, "tuning": tuned, "test": result,
            "config": {"n": roe_cfg.n, "tau": roe_cfg.tau_per_layer, "clean_layers": roe_cfg.clean_layers}}


def _speed_stage(phds_dir: Path, dense_dir: Path, cfg: MoEBenchConfig, roe: dict) -> dict:
    """Decode ms/token, cached per (model, ks, RoE, tokens): run it on a quiet machine (docs/moe.md)."""
    import hashlib
    import json

    from leaninfer.paths import cache_dir

    stamp = int((phds_dir / "model.safetensors").stat().st_mtime)
    spec = [str(phds_dir), stamp, sorted(cfg.ks), roe, cfg.roe_k, cfg.speed_tokens, cfg.speed_repeats]
    key = hashlib.sha1(json.dumps(spec).encode())
    path = cache_dir("moe", "evals") / f"speed-{phds_dir.name}-{key.hexdigest()[:12]}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = _measure_speed(phds_dir, dense_dir, cfg, roe)
    path.write_text(json.dumps(out))
    return out


def _measure_speed(phds_dir: Path, dense_dir: Path, cfg: MoEBenchConfig, roe: dict) -> dict:
    """Median TPOT per setting at the default precision (int8); settings are interleaved prompt by prompt and
    repeat by repeat, so load changes on a shared machine hit every setting alike."""
    import os

    from leaninfer.bench.report import median

    load_before = os.getloadavg()
    dense, engine = load(dense_dir), load(phds_dir)
    roe_cfg = RoEConfig(roe["n"], roe["tau"], roe["clean_layers"], 0)
    settings = {"dense": (dense, {})} | {str(k): (engine, {"moe_k": k}) for k in sorted(cfg.ks)}
    settings["roe"] = (engine, {"moe_k": cfg.roe_k, "roe": roe_cfg})
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(cfg.speed_repeats):
        for p in SPEED_PROMPTS:
            for name, (eng, kw) in settings.items():
                r = eng.generate(p, max_new_tokens=cfg.speed_tokens, eos=False, **kw)
                times[name].append(r.stats["tpot_s"] * 1000)
    c = engine.cfg
    kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4  # bytes per cached token (fp32), one sequence
    out = {name: {"ms_per_token": median(t), "runs": len(t), "kv_bytes_per_token": kv} for name, t in times.items()}
    out["precision"] = engine.precision
    out["loadavg_before"], out["loadavg_after"] = list(load_before), list(os.getloadavg())
    return out


def headline(r: dict, ks: list[int]) -> dict:
    h: dict = {}
    for k in ks:
        s = str(k)
        h[s] = {"base_ppl": r["base"][s]["ppl"], "phds_ppl": r["phds"][s]["ppl"], "oracle_ppl": r["oracle"][s]["ppl"],
                "phds_acc": r["phds"][s]["acc"], "oracle_acc": r["oracle"][s]["acc"],
                "ms_per_token": r["speed"][s]["ms_per_token"]}
    roe_k = str(r["roe"]["k"])
    roe_ppl = r["roe"]["test"]["ppl"]
    matched = [k for k in ks if r["phds"][str(k)]["ppl"] >= roe_ppl]
    h.update({
        "phds_agreement": _mean(r["agreement"]["phds"]), "oracle_agreement": _mean(r["agreement"]["oracle"]),
        "roe_ppl": roe_ppl, "plain_ppl_same_k": r["phds"][roe_k]["ppl"],
        "roe_acc": r["roe"]["test"]["acc"], "plain_acc_same_k": r["phds"][roe_k]["acc"],
        "roe_matches_plain_k": max(matched) if matched else None,
        "roe_cost_ratio": r["speed"]["roe"]["ms_per_token"] / r["speed"][roe_k]["ms_per_token"],
    })
    return h


def targets(r: dict, ks: list[int], tol: float) -> dict:
    h = r["headline"]
    per_k = {str(k): {"ppl_within_1pct": h[str(k)]["phds_ppl"] <= h[str(k)]["oracle_ppl"] * (1 + tol),
                      "acc_within_1pt": h[str(k)]["phds_acc"] >= h[str(k)]["oracle_acc"] - 0.01} for k in ks}
    ms = [h[str(k)]["ms_per_token"] for k in ks]
    return {
        "phds_vs_oracle": per_k,
        "phds_agreement_exceeds_oracle": h["phds_agreement"] > h["oracle_agreement"],
        "decode_time_falls_with_k": all(a < b for a, b in zip(ms, ms[1:])),
        "roe_beats_plain_ppl": h["roe_ppl"] < h["plain_ppl_same_k"],
        "roe_beats_plain_acc": h["roe_acc"] > h["plain_acc_same_k"],
    }
