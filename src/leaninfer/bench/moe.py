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
    grid: RoEGrid = field(default_factory=lambda: RoEGrid(taus=[0.1, 0.3], clean_layers=[1], n=4))
    roe_k: int = 4
    speed_tokens: int = 32
    speed_repeats: int = 2
    tolerance: float = 0.01

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
    }
    result["headline"] = headline(result, ks)
    result["targets"] = targets(result, ks, cfg.tolerance)
    return result


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
    from leaninfer.bench.report import median

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


def write_moe_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    from leaninfer.bench.report import markdown_table, write_json, write_markdown, write_plot

    json_path = write_json(Path(json_path), result)
    h, ks = result["headline"], sorted(int(k) for k in result["base"])
    dense = result["dense"]
    rows = [[k, h[str(k)]["base_ppl"], h[str(k)]["phds_ppl"], h[str(k)]["oracle_ppl"],
             result["base"][str(k)]["acc"] * 100, h[str(k)]["phds_acc"] * 100, h[str(k)]["oracle_acc"] * 100,
             h[str(k)]["ms_per_token"]] for k in ks]
    rows.append(["dense", dense["ppl"], "", "", dense["acc"] * 100, "", "", result["speed"]["dense"]["ms_per_token"]])
    dial = markdown_table(["k", "base ppl", "PHDS ppl", "oracle-k ppl", "base acc %", "PHDS acc %",
                           "oracle-k acc %", "ms/token (PHDS, int8)"], rows)
    ag = result["agreement"]
    agree = markdown_table(["pair (k_a-k_b)", "PHDS (one checkpoint)", "oracle pair", "base"],
                           [[p, ag["phds"][p] * 100, ag["oracle"][p] * 100, ag["base"][p] * 100] for p in ag["phds"]])
    roe = result["roe"]
    trials = markdown_table(["tau", "clean layers", "n", "val ppl"],
                            [[t["tau"], t["clean_layers"], t["n"], t["val_ppl"]] for t in roe["tuning"]["trials"]],
                            digits=3)
    sp = result["speed"]
    rk = str(roe["k"])
    roe_table = markdown_table(
        ["setting", "test ppl", "acc %", "ms/token", "KV bytes/token"],
        [[f"plain k={k}", h[str(k)]["phds_ppl"], h[str(k)]["phds_acc"] * 100, sp[str(k)]["ms_per_token"],
          sp[str(k)]["kv_bytes_per_token"]] for k in ks]
        + [[f"RoE k={rk} n={roe['config']['n']}", roe["test"]["ppl"], roe["test"]["acc"] * 100,
            sp["roe"]["ms_per_token"], sp["roe"]["kv_bytes_per_token"]]])
    t = result["targets"]
    build = result.get("build", {})
    md = write_markdown(json_path.with_suffix(".md"), "MoE: dial k (PHDS) and Roster of Experts", [
        ("Setup", _setup_text(result, build)),
        ("Dialling k: base vs PHDS vs oracle-k (held-out test)", dial),
        ("Cross-sparsity agreement (% of MC items with the same answer)", agree),
        ("RoE tuning on validation (grid)", f"plain val ppl at k={rk}: {roe['tuning']['plain_val_ppl']:.3f}\n\n"
         + trials),
        ("RoE vs plain decoding (PHDS checkpoint)", roe_table + "\n\n" + _roe_text(h)),
        ("Targets", "\n".join(f"- {k}: {v}" for k, v in t.items())),
        ("Headline", "```\n" + __import__("json").dumps(h, indent=1) + "\n```"),
    ])

    def draw(ax):
        fig = ax.figure
        ax.remove()
        ax1, ax2 = fig.subplots(1, 2)
        for name, key in (("base", "base_ppl"), ("PHDS", "phds_ppl"), ("oracle-k", "oracle_ppl")):
            ax1.plot(ks, [h[str(k)][key] for k in ks], marker="o", label=name)
        ax1.axhline(dense["ppl"], color="grey", ls="--", label="dense")
        ax1.scatter([roe["k"]], [roe["test"]["ppl"]], marker="*", s=150, color="red",
                    label=f"RoE n={roe['config']['n']}")
        ax1.set_xlabel("experts per token k")
        ax1.set_ylabel("held-out perplexity")
        ax1.legend()
        ax2.plot([sp[str(k)]["ms_per_token"] for k in ks], [h[str(k)]["phds_acc"] * 100 for k in ks], marker="o",
                 label="PHDS (one checkpoint)")
        for k in ks:
            ax2.annotate(f"k={k}", (sp[str(k)]["ms_per_token"], h[str(k)]["phds_acc"] * 100))
        ax2.scatter([sp["roe"]["ms_per_token"]], [roe["test"]["acc"] * 100], marker="*", s=150, color="red",
                    label="RoE")
        ax2.set_xlabel("decode ms/token (int8)")
        ax2.set_ylabel("MC accuracy %")
        ax2.legend()

    return json_path, md, write_plot(json_path.with_suffix(".png"), draw, figsize=(11, 4))


def _setup_text(r: dict, build: dict) -> str:
    c = r["config"]
    b = c["build"]
    lines = [
        f"- MoE: Gemma 3 270M FFNs (2048 neurons) split into {b['n_experts']} experts of "
        f"{2048 // b['n_experts']} neurons, native "
        f"top-{b['top_k']}, no renormalisation (OLMoE convention); `leaninfer moe build` "
        f"(train steps {b['train_steps']} x {b['seq_len']} tokens, distillation from the dense model).",
        f"- SFT (PHDS and each oracle-k): {c['sft']['steps']} steps x {c['sft']['seq_len']} tokens, LM loss, same "
        f"data order; PHDS k_set {c['sft']['k_set']} -> anchor {c['sft']['anchor_k']} from "
        f"{c['sft']['anchor_start']:.0%} over {c['sft']['ramp']:.0%} of training, eps {c['sft']['eps']}.",
        f"- Test: Spec-Bench long passages (test split), perplexity over the first {c['test']['ppl_len']} tokens of "
        f"each; MC: {len(r['dense']['preds'])} items, {c['test']['n_choices']} choices, context "
        f"{c['test']['ctx_len']} / continuation {c['test']['cont_len']} tokens.",
        f"- Dense model: test ppl {r['dense']['ppl']:.3f}, MC acc {r['dense']['acc'] * 100:.1f}%.",
    ]
    if build.get("train"):
        lines.append(f"- Build: {build['train']['steps_done']} distillation steps in {build['seconds_train'] / 60:.1f}"
                     f" min of training (plus collection / clustering / layer fits).")
    m = r["machine"]
    lines.append(f"- Machine: {m.get('processor', '')}, {m.get('cores')} cores, shared with other "
                 "jobs during the run (quality numbers do not depend on load; ms/token: settings interleaved per "
                 "prompt and repeat, run through the shared slot, see docs/moe.md).")
    return "\n".join(lines)


def _roe_text(h: dict) -> str:
    m = h["roe_matches_plain_k"]
    return (f"RoE ppl {h['roe_ppl']:.3f} vs plain {h['plain_ppl_same_k']:.3f} at the same k; MC acc "
            f"{h['roe_acc'] * 100:.1f}% vs {h['plain_acc_same_k'] * 100:.1f}%. Decode cost {h['roe_cost_ratio']:.2f}x "
            f"plain at the same k; the clean cache keeps KV memory at one sequence. "
            + (f"Largest plain k whose perplexity RoE reaches: {m}." if m else "RoE does not reach plain ppl at "
               "any dialled k."))
