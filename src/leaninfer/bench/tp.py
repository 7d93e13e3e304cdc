"""`leaninfer bench tp`: TP=1 vs TP=2 vs TP=2 + Sync-Point Drop at 0..all blocks on the default model.

Quality (perplexity on held-out Spec-Bench passages, multiple-choice accuracy) comes from the single-process SPD
simulation (tests check it equals the ranks); speed from real gloo ranks on this machine; the communication
model (parallel/commmodel.py) is fitted to this machine's all-reduce times, checked against the TP=2 runs and
then used to predict TP4/TP8 on other interconnects. Sensitivity, tiers and B2B weights are saved as an SPD
plan in the user cache, which `leaninfer generate --tp 2 --spd N` then uses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from leaninfer.bench.report import machine_info, markdown_table, write_json, write_markdown, write_plot
from leaninfer.parallel import commmodel as cm
from leaninfer.parallel.b2b import B2BConfig, distill_blocks
from leaninfer.parallel.plan import SPDPlan, plan_path
from leaninfer.parallel.sensitivity import sensitivity, tiers

log = logging.getLogger(__name__)


@dataclass
class TPBenchConfig:
    model: str = "default"
    precision: str = "fp32"
    world: int = 2
    prompts: int = 3
    max_new_tokens: int = 48
    repeats: int = 1
    counts: list[int] = field(default_factory=lambda: [0, 2, 4, 6, 9, 12, 18])  # SPD block counts (timed, scored)
    calib_passages: int = 4  # sensitivity: Spec-Bench "val" passages
    calib_len: int = 128
    test_passages: int | None = 20  # quality: Spec-Bench "test" passages (None = all 40)
    ppl_len: int = 128
    b2b_passages: int = 16  # B2B: Spec-Bench "train" passages
    b2b: B2BConfig = field(default_factory=B2BConfig)
    zero_shot_tol: float = 0.002  # relative ppl increase of a block: insensitive below, B2B below distill_tol
    distill_tol: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [1, 64, 640, 1280, 4096, 16384, 65536, 262144, 1048576])

    @classmethod
    def quick(cls, **kw) -> TPBenchConfig:
        base = dict(prompts=2, max_new_tokens=24, counts=[0, 3, 6, 18], calib_passages=2, calib_len=96,
                    test_passages=6, b2b_passages=8, b2b=B2BConfig(steps=30), sizes=[1, 640, 4096, 65536, 262144])
        return cls(**{**base, **kw})


def _data(tok, cfg: TPBenchConfig):
    from leaninfer.moe.evaluate import EvalConfig, eval_data

    calib = eval_data(tok.encode, EvalConfig(split="val", ppl_len=cfg.calib_len, max_passages=cfg.calib_passages))
    test = eval_data(tok.encode, EvalConfig(split="test", ppl_len=cfg.ppl_len, max_passages=cfg.test_passages))
    train = eval_data(tok.encode, EvalConfig(split="train", ppl_len=cfg.ppl_len, max_passages=cfg.b2b_passages))
    n = min(len(x) for x in train.ppl)
    return calib, test, torch.tensor([x[:n] for x in train.ppl])


def quality(model, world: int, drop: list[int], weights: dict[str, torch.Tensor] | None, data, mc: bool = True
            ) -> dict:
    """Perplexity and MC accuracy (None unless `mc`) with blocks `drop` as SPD blocks (B2B `weights` swapped in
    for those blocks)."""
    from leaninfer.eval.choice import accuracy, predictions
    from leaninfer.moe.score import Scorer, perplexity
    from leaninfer.parallel.spd import simulate_spd

    mine = {k: v for k, v in (weights or {}).items() if int(k.split(".")[1]) in set(drop)}
    saved = {k: model.get_parameter(k).detach().clone() for k in mine}
    with torch.no_grad():
        for k, v in mine.items():
            model.get_parameter(k).copy_(v)
    try:
        with simulate_spd(model, world, drop):
            scorer = Scorer(model)
            ppl = perplexity(scorer, data.ppl)["ppl"]
            acc = accuracy(data.items, predictions(data.items, scorer.choice_scores)) if mc else None
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                model.get_parameter(k).copy_(v)
    return {"ppl": ppl, "acc": acc}


def run_quality(cfg: TPBenchConfig, folder: Path) -> dict:
    """Sensitivity -> tiers -> B2B -> perplexity / accuracy per number of dropped blocks; saves the SPD plan."""
    from safetensors.torch import save_file

    from leaninfer.io.store import read_model_dir
    from leaninfer.models.build import build_decoder
    from leaninfer.moe.score import Scorer, perplexity

    mcfg, state, tok = read_model_dir(folder)
    model = build_decoder(mcfg, state)
    del state
    calib, test, train = _data(tok, cfg)
    L = mcfg.n_layers
    t0 = time.process_time()
    sens = sensitivity(model, cfg.world, lambda m: perplexity(Scorer(m), calib.ppl)["ppl"])
    sens_cpu = time.process_time() - t0
    tier = tiers(sens["sensitivity"], sens["base"], cfg.zero_shot_tol, cfg.distill_tol)
    t0 = time.process_time()
    weights, b2b_info = distill_blocks(model, cfg.world, train, tier["sensitive"], cfg.b2b)
    b2b_cpu = time.process_time() - t0
    wfile = plan_path(folder, cfg.world).with_suffix(".b2b.safetensors")
    if weights:
        wfile.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(wfile))
    order = sens["order"]
    plan = SPDPlan(cfg.world, [], order, tier, sens["sensitivity"], str(wfile) if weights else None)
    plan.save(plan_path(folder, cfg.world))
    rows = []
    for k in sorted(c for c in set(cfg.counts) if c <= L):
        drop = sorted(order[:k])
        distilled = bool(set(drop) & set(tier["sensitive"]))
        zs = quality(model, cfg.world, drop, None, test, mc=not distilled)  # accuracy of the final variant only
        b2b = quality(model, cfg.world, drop, weights, test) if distilled else zs
        rows.append({"dropped": k, "blocks": drop, "ppl_zero_shot": zs["ppl"], "acc_zero_shot": zs["acc"],
                     "ppl": b2b["ppl"], "acc": b2b["acc"]})
        log.info("quality %s", rows[-1])
    return {"sensitivity": sens, "tiers": tier, "b2b": {str(j): v for j, v in b2b_info.items()},
            "sensitivity_cpu_s": sens_cpu, "b2b_cpu_s": b2b_cpu, "quality": rows,
            "plan": str(plan_path(folder, cfg.world)), "order": order,
            "test_tokens": sum(len(x) - 1 for x in test.ppl), "test_items": len(test.items)}


def run_speed(cfg: TPBenchConfig, folder: Path, order: list[int], n_layers: int) -> dict:
    from leaninfer.demo import DEMO_PROMPTS
    from leaninfer.parallel.launch import run_ranks
    from leaninfer.parallel.timing import time_rank

    prompts = list(DEMO_PROMPTS[: cfg.prompts])
    counts = sorted(c for c in set(cfg.counts) if c <= n_layers)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.world)  # TP=1 gets the cores the TP ranks get
    try:
        tp1 = run_ranks(time_rank, 1, str(folder), cfg.precision, prompts, cfg.max_new_tokens, order, [0], [],
                        cfg.repeats)
    finally:
        torch.set_num_threads(threads)
    tpn = run_ranks(time_rank, cfg.world, str(folder), cfg.precision, prompts, cfg.max_new_tokens, order, counts,
                    cfg.sizes, cfg.repeats, threads=1)
    return {"tp1": tp1, "tpn": tpn}


def comm_model(cfg: TPBenchConfig, mcfg, speed: dict) -> dict:
    """Fit the ring model to the measured all-reduces; check it against TP=p; predict TP4/TP8 elsewhere."""
    ar = speed["tpn"]["allreduce"]
    fit = cm.fit_ring([r["bytes"] for r in ar], [r["seconds"] for r in ar], cfg.world)
    shape = cm.Shape(mcfg.n_layers, mcfg.dim, mcfg.vocab_size, 4, mcfg.sandwich_norm)
    c1 = speed["tp1"]["runs"][0]["tpot_s"]
    run0 = speed["tpn"]["runs"][0]
    compute_p = run0["tpot_s"] - run0["comm_s_per_forward"]
    f = min(max(2 * (1 - compute_p / c1) if cfg.world == 2 else 1.0, 0.0), 1.0)
    check = []
    for run in speed["tpn"]["runs"]:
        pred = cm.predict(shape, c1, f, cfg.world, run["dropped"], fit.alpha_s, fit.beta_bytes_per_s)
        check.append({"dropped": run["dropped"], "measured_tpot_ms": run["tpot_s"] * 1e3,
                      "predicted_tpot_ms": pred["latency_s"] * 1e3, "measured_comm_ms": run["comm_s_per_forward"] * 1e3,
                      "predicted_comm_ms": pred["comm_s"] * 1e3})
    links = {"gloo here (fitted)": (fit.alpha_s, fit.beta_bytes_per_s), **cm.LINKS}
    here = cm.spd_table(shape, c1, f, (2, 4, 8), links)
    # LLaMA2-70B shape on GPUs: compute = bf16 weights read at 70% of an H100's 3.35 TB/s, split ideally
    llama = cm.Shape(80, 8192, 32000, 2, False)
    c70 = 140e9 / (0.7 * 3.35e12)
    big = cm.spd_table(llama, c70, 1.0, (2, 4, 8), cm.LINKS)
    return {"fit": asdict(fit), "parallel_fraction": f, "compute_tp1_ms": c1 * 1e3, "check": check,
            "default_model": here, "llama2_70b": big, "llama2_70b_compute_tp1_ms": c70 * 1e3}


def run_tp_bench(cfg: TPBenchConfig) -> dict:
    from leaninfer.io.store import read_model_config, resolve

    folder = resolve(cfg.model)
    mcfg, _ = read_model_config(folder)
    qual = run_quality(cfg, folder)
    speed = run_speed(cfg, folder, qual["order"], mcfg.n_layers)
    model = comm_model(cfg, mcfg, speed)
    tp1 = speed["tp1"]["runs"][0]
    runs = {r["dropped"]: r for r in speed["tpn"]["runs"]}
    qrows = {r["dropped"]: r for r in qual["quality"]}
    same = all(ids == tp1["token_ids"] for ids in [runs[0]["token_ids"]])
    spd = []
    for k in sorted(set(runs) | set(qrows)):
        r, q = runs.get(k, {}), qrows.get(k, {})
        spd.append({"dropped": k, "tokens_per_s": r.get("tokens_per_s"), "tpot_ms": r.get("tpot_s", float("nan")) * 1e3,
                    "comm_fraction": r.get("comm_fraction"), "ppl": q.get("ppl"), "acc": q.get("acc"),
                    "ppl_zero_shot": q.get("ppl_zero_shot"), "acc_zero_shot": q.get("acc_zero_shot")})
    return {
        "config": asdict(cfg), "machine": machine_info(), "model": str(folder), "n_layers": mcfg.n_layers,
        "tp1_tokens_per_s": tp1["tokens_per_s"], f"tp{cfg.world}_tokens_per_s": runs[0]["tokens_per_s"],
        f"comm_fraction_tp{cfg.world}": runs[0]["comm_fraction"], "tp_greedy_identical_to_tp1": same,
        "tp1_tpot_ms": tp1["tpot_s"] * 1e3, f"tp{cfg.world}_tpot_ms": runs[0]["tpot_s"] * 1e3,
        "spd": spd, "quality": qual, "speed": speed, "comm_model": model,
    }


def _md(r: dict) -> str:
    w = r["config"]["world"]
    q, m = r["quality"], r["comm_model"]
    base = next(x for x in r["spd"] if x["dropped"] == 0)
    rows = []
    for x in r["spd"]:
        speed = x["tokens_per_s"] / base["tokens_per_s"] - 1 if x["tokens_per_s"] and base["tokens_per_s"] else None
        dppl = x["ppl"] / base["ppl"] - 1 if x["ppl"] and base["ppl"] else None
        rows.append([x["dropped"], x["tokens_per_s"], x["tpot_ms"], x["comm_fraction"], speed, x["ppl_zero_shot"],
                     x["ppl"], dppl, x["acc_zero_shot"], x["acc"]])
    spd = markdown_table(["SPD blocks", "tokens/s", "TPOT ms", "comm share", "tokens/s vs TP", "ppl (zero-shot)",
                          "ppl (ZS + B2B)", "Δppl vs TP", "acc (ZS)", "acc (ZS + B2B)"], rows, 3)
    head = markdown_table(["setting", "tokens/s", "TPOT ms", "share of time in collectives"], [
        ["TP=1 (one process)", r["tp1_tokens_per_s"], r["tp1_tpot_ms"], 0.0],
        [f"TP={w} (gloo, 1 thread/rank)", r[f"tp{w}_tokens_per_s"], r[f"tp{w}_tpot_ms"], r[f"comm_fraction_tp{w}"]],
    ], 3)
    tier_of = {j: t for t, js in q["tiers"].items() for j in js}
    sens = markdown_table(["block", "Δppl (cumulative)", "tier"],
                          [[j, s, tier_of[j]] for j, s in enumerate(q["sensitivity"]["sensitivity"])], 4)
    b2b = markdown_table(["block", "loss before", "loss after", "CPU s"], [
        [j, v["loss_before"], v["loss_after"], v["cpu_s"]] for j, v in q["b2b"].items()], 4)
    ar = markdown_table(["bytes", "median µs"],
                        [[a["bytes"], a["seconds"] * 1e6] for a in r["speed"]["tpn"]["allreduce"]], 1)
    check = markdown_table(["SPD blocks", "measured TPOT ms", "model TPOT ms", "measured comm ms/token",
                            "model comm ms/token"], [list(c.values()) for c in m["check"]], 2)
    pred = markdown_table(["link", "TP", "TP ms/token", "comm share", "all attention syncs dropped ms", "SPD saving"],
                          [list(x.values()) for x in m["default_model"]], 3)
    big = markdown_table(["link", "TP", "TP ms/token", "comm share", "all attention syncs dropped ms", "SPD saving"],
                         [list(x.values()) for x in m["llama2_70b"]], 3)
    fit = m["fit"]
    return [
        ("", f"Default model ({r['n_layers']} blocks), precision {r['config']['precision']}, "
             f"{r['machine']['processor']} ({r['machine']['cores']} cores), torch {r['machine']['torch']}. "
             f"TP={w} greedy tokens identical to TP=1: **{r['tp_greedy_identical_to_tp1']}**. "
             "Timings on a shared 2-core machine are noisy; the share of time in collectives includes waiting for "
             "the slower rank."),
        ("TP=1 vs TP=2", head),
        ("Sync-Point Drop: speed and quality against the number of dropped sync points",
         spd + f"\n\nQuality: Spec-Bench test passages ({q['test_tokens']} tokens scored, {q['test_items']} "
         "multiple-choice items), from the single-process SPD simulation (equal to the ranks, tests/parallel). "
         "Blocks are dropped least sensitive first; ZS + B2B swaps in the distilled weights of the sensitive "
         "blocks among them."),
        ("Per-block sensitivity (cumulative from the last block, as in the paper) and tiers",
         sens + f"\n\nBase ppl on calibration text {q['sensitivity']['base']:.3f}; sensitivity took "
         f"{q['sensitivity_cpu_s']:.0f} CPU s. Tiers: {q['tiers']}."),
        ("B2B distillation of the sensitive blocks", (b2b if q["b2b"] else "(no sensitive blocks)")
         + f"\n\nTotal {q['b2b_cpu_s']:.0f} CPU s. Plan saved to `{q['plan']}`: `leaninfer generate --tp {w} "
         "--spd N` drops the N least sensitive blocks with these weights."),
        ("Communication model (a model, not a measurement)",
         f"gloo all-reduce latency against message size, measured here ({w} ranks):\n\n{ar}\n\n"
         f"Ring fit: α = {fit['alpha_s'] * 1e6:.1f} µs per step, β = {fit['beta_bytes_per_s'] / 1e9:.2f} GB/s; "
         f"per-token compute at TP=1 {m['compute_tp1_ms']:.1f} ms, share that splits over ranks "
         f"{m['parallel_fraction']:.2f} (fitted from the TP={w} compute).\n\nCheck against the TP={w} runs:\n\n"
         f"{check}\n\nPredicted per-token latency of the default model (compute measured on this CPU; a Gemma "
         "3 270M cannot really split 8 ways: 4 query heads):\n\n" + pred
         + f"\n\nLLaMA2-70B shape (80 blocks, d = 8192, bf16), compute = weights read at 70% of an H100's "
           f"3.35 TB/s ({m['llama2_70b_compute_tp1_ms']:.0f} ms at TP=1, split ideally); the SPD paper reports "
           "about 20% lower latency for it on 8 GPUs:\n\n" + big),
    ]


def write_tp_report(result: dict, json_path: Path) -> list[Path]:
    """JSON first, then markdown and a PNG drawn from it."""
    json_path = Path(json_path)
    paths = [write_json(json_path, result)]
    w = result["config"]["world"]
    paths.append(write_markdown(json_path.with_suffix(".md"), f"Tensor parallelism and Sync-Point Drop (TP={w})",
                                _md(result)))
    spd = [x for x in result["spd"] if x["tokens_per_s"]]
    qual = [x for x in result["spd"] if x["ppl"]]

    def draw(axes):
        a, b = axes
        a.plot([x["dropped"] for x in spd], [x["tpot_ms"] for x in spd], "o-", label=f"TP={w} + SPD (measured)")
        a.axhline(result["tp1_tpot_ms"], color="gray", ls="--", label="TP=1")
        a.set_xlabel("dropped sync points (blocks)")
        a.set_ylabel("TPOT ms")
        a.legend()
        b.plot([x["dropped"] for x in qual], [x["ppl_zero_shot"] for x in qual], "o-", label="zero-shot")
        b.plot([x["dropped"] for x in qual], [x["ppl"] for x in qual], "s-", label="ZS + B2B")
        b.set_xlabel("dropped sync points (blocks)")
        b.set_ylabel("perplexity (test)")
        b.legend()

    paths.append(write_plot(json_path.with_suffix(".png"), draw, figsize=(10, 4), ncols=2))
    return paths
