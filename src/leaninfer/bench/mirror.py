"""`leaninfer bench mirror`: Mirror-SD on Spec-Bench against plain decoding and the EAGLE draft, in one run:
tokens/s, speedup, tau, lossless, hit rate and exposed draft time per category; the per-step time breakdown;
the latency model's prediction checked against the measurement and extrapolated to a draft on its own device.

Mirror-SD runs with the primary rollout draft (`rollout`, labels `mirror` / `mirror_serial`) and with every
rollout in `compare_rollouts` (labels `mirror_<rollout>` / `mirror_<rollout>_serial`): "stream" is the
speculative-streaming draft (one forward per rollout), "eagle" the EAGLE feature draft (one per token)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from leaninfer.bench.report import machine_info, markdown_table, write_json, write_markdown, write_plot
from leaninfer.bench.spec import _summarise, category_plot, category_table
from leaninfer.eval.specbench import format_prompt, load_questions
from leaninfer.generate.latency import exposed_draft_s, from_stats, hit_rate, predict_speedup, predict_step_s

log = logging.getLogger(__name__)
PHASES = ("prefix_s", "suffix_s", "draft_refresh_s", "draft_rollout_s", "redraft_s", "exposed_draft_s", "accept_s",
          "steps", "hits", "misses")


@dataclass
class MirrorBenchConfig:
    model: str = "default"
    precision: str | None = None
    per_category: int = 1
    max_new_tokens: int = 64
    gamma: int = 3
    kappa: int = 2
    exit_layer: int | None = None
    rollout: str = "stream"  # the primary rollout draft: "stream" (speculative streaming) or "eagle"
    compare_rollouts: list[str] = field(default_factory=lambda: ["eagle"])
    baselines: list[str] = field(default_factory=lambda: ["eagle"])
    # one-factor-at-a-time ablations around (gamma, kappa, exit_layer), e.g. ["exit_layer=9", "kappa=4"]
    ablations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.per_category < 1 or self.max_new_tokens < 2:
            raise ValueError("per_category must be >= 1 and max_new_tokens >= 2")
        bad = [r for r in [self.rollout, *self.compare_rollouts] if r not in ROLLOUTS]
        if bad:
            raise ValueError(f"unknown rollout(s) {bad}; choose from {ROLLOUTS}")
        self.compare_rollouts = [r for r in self.compare_rollouts if r != self.rollout]


ROLLOUTS = ("stream", "eagle")


def _prefixes(cfg: MirrorBenchConfig) -> dict[str, str]:
    """Label prefix -> rollout: `mirror` for the primary rollout, `mirror_<r>` for the compared ones."""
    return {"mirror": cfg.rollout, **{f"mirror_{r}": r for r in cfg.compare_rollouts}}


def run_mirror_bench(cfg: MirrorBenchConfig) -> dict:
    import leaninfer

    engine = leaninfer.load(cfg.model, precision=cfg.precision)
    opts = {"gamma": cfg.gamma, "kappa": cfg.kappa, "exit_layer": cfg.exit_layer}
    methods = [("ar", "ar", {})] + [(b, b, {}) for b in cfg.baselines]
    for prefix, rollout in _prefixes(cfg).items():
        methods += [(prefix, "mirror", {**opts, "rollout": rollout, "workers": "threads"}),
                    (f"{prefix}_serial", "mirror", {**opts, "rollout": rollout, "workers": "serial"})]
    for a in cfg.ablations:
        key, _, val = a.partition("=")
        if key not in opts or not val.isdigit():
            raise ValueError(f"ablation {a!r}: expected gamma=N, kappa=N or exit_layer=N")
        methods.append((f"mirror {a}", "mirror", {**opts, key: int(val), "rollout": cfg.rollout,
                                                  "workers": "threads"}))
    questions = load_questions(None, per_category=cfg.per_category)
    for _, name, o in methods:  # warm-up: load drafts, build the early-exit head
        engine.generate(format_prompt(questions[0]), max_new_tokens=4, method=name, **o)
    rows: dict[str, list[dict]] = defaultdict(list)
    for q in tqdm(questions, desc="bench mirror"):
        prompt, ref = format_prompt(q), None
        for label, name, o in methods:
            out = engine.generate(prompt, max_new_tokens=cfg.max_new_tokens, method=name, **o)
            ref = out.token_ids if name == "ar" else ref
            rows[label].append({"category": q.category, "question_id": q.question_id, "new_tokens": len(out.token_ids),
                                "seconds": out.stats["e2e_s"], "ttft_s": out.stats["ttft_s"],
                                "forwards": out.stats["target_forwards"], "identical": out.token_ids == ref,
                                **{k: out.stats[k] for k in PHASES if k in out.stats}})
    result = {"benchmark": "mirror", "config": asdict(cfg), "machine": machine_info(), "precision": engine.precision,
              "per_question": dict(rows)}
    result.update(summarise(rows))
    return result


def _mirror_stats(rows: list[dict]) -> dict:
    """Hit rate and exposed draft fraction of Mirror-SD rows."""
    tot = {k: sum(r[k] for r in rows) for k in PHASES}
    drafted = tot["draft_refresh_s"] + tot["draft_rollout_s"] + tot["redraft_s"]
    return {"hit_rate": hit_rate(tot),
            "exposed_draft_fraction": tot["exposed_draft_s"] / drafted if drafted else 0.0}


def summarise(rows: dict[str, list[dict]]) -> dict:
    """Spec-Bench's per-category table (`bench.spec._summarise`) plus hit rate and exposed draft fraction for
    the Mirror-SD runs; labels with a space are one-factor ablations, summarised overall only."""
    main = {m: rs for m, rs in rows.items() if " " not in m}
    res = _summarise(main)
    table, cats = res["table"], res["categories"]
    for m, rs in main.items():
        if "steps" not in rs[0]:
            continue
        table[m]["overall"].update(_mirror_stats(rs))
        for c in cats:
            table[m][c].update(_mirror_stats([r for r in rs if r["category"] == c]))
        res["headline"][m].update({k: table[m]["overall"][k] for k in ("hit_rate", "exposed_draft_fraction")})
    ablations = {}
    for m, rs in rows.items():
        if " " in m:
            ablations[m] = {**_summarise({"ar": rows["ar"], m: rs})["table"][m]["overall"], **_mirror_stats(rs)}
    if ablations:
        ablations["mirror (base)"] = table["mirror"]["overall"]
    return {**res, "latency_model": latency_check(main), "ablations": ablations}


def _mirror_runs(rows: dict) -> list[str]:
    """Overlapped Mirror-SD labels that also have a serial run."""
    return [m for m in rows if m.startswith("mirror") and not m.endswith("_serial") and f"{m}_serial" in rows]


def _halves(rs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Fit on the even-numbered questions, predict the odd-numbered ones (every label lists questions in the same
    order); a single question is both halves."""
    return (rs[::2], rs[1::2]) if len(rs) > 1 else (rs, rs)


def _ar_token_s(ar: list[dict]) -> float:
    return sum(r["seconds"] - r["ttft_s"] for r in ar) / max(sum(r["new_tokens"] - 1 for r in ar), 1)


def _fit(rs: list[dict]) -> tuple:
    stats = {k: sum(r[k] for r in rs) for k in PHASES}
    return (*from_stats(stats, sum(r["new_tokens"] for r in rs) - len(rs) + 1), stats)


def latency_check(rows: dict[str, list[dict]]) -> dict:
    """The latency model fitted on half of the questions (phase times, hit rate, tau, plain decoding's token time)
    and checked against the measured step time and speedup on the other half, for every Mirror run; and per
    rollout an extrapolation: the target at the serial run's speed (all cores) with the draft on its own device
    at the overlapped run's speed."""
    ar_fit, ar_test = _halves(rows["ar"])
    ar_token_s, ar_token_test_s = _ar_token_s(ar_fit), _ar_token_s(ar_test)
    fit = "half" if len(rows["ar"]) > 1 else "same"
    out: dict = {"ar_token_ms": 1000 * ar_token_s, "fit": fit, "separate_draft_device": {}}
    for prefix in _mirror_runs(rows):
        times = {}
        for label, overlap in ((prefix, True), (f"{prefix}_serial", False)):
            train, test = _halves(rows[label])
            t, h, tau, _ = _fit(train)
            _, _, tau_test, stats_test = _fit(test)
            measured_step = sum(r["seconds"] - r["ttft_s"] for r in test) / max(stats_test["steps"], 1)
            out[label] = {"fit": fit, "step_ms": {k: 1000 * v for k, v in asdict(t).items()}, "hit_rate": h,
                          "tau": tau, "measured_step_ms": 1000 * measured_step,
                          "predicted_step_ms": 1000 * predict_step_s(t, h, overlap),
                          "predicted_exposed_draft_ms": 1000 * exposed_draft_s(t, h) if overlap else None,
                          "predicted_speedup": predict_speedup(t, tau, h, ar_token_s, overlap),
                          "measured_speedup": tau_test * ar_token_test_s / measured_step}
            times[label] = t
        # heterogeneous placement: target parts as fast as with all cores (serial run), draft parts on their own core
        ts, td = times[f"{prefix}_serial"], times[prefix]
        het = type(ts)(ts.prefix_s, ts.suffix_s, td.draft_refresh_s, td.draft_rollout_s, td.redraft_s, ts.verify_s)
        h, tau = out[prefix]["hit_rate"], out[prefix]["tau"]
        out["separate_draft_device"][prefix] = {
            "predicted_step_ms": 1000 * predict_step_s(het, h), "predicted_speedup": predict_speedup(het, tau, h,
                                                                                                     ar_token_s),
            "hidden_fraction_of_rollouts": min(1.0, het.suffix_s / max(het.draft_rollout_s, 1e-9))}
    return out


def write_mirror_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(json_path, result)
    table, cats, lm = result["table"], result["categories"], result["latency_model"]
    overall = markdown_table(["method", "tokens/s", "speedup", "τ", "lossless", "hit rate", "exposed draft"], [
        [m, t["overall"]["tokens_per_s"], t["overall"]["speedup"], t["overall"]["tau"],
         "yes" if t["overall"]["lossless"] else f"no ({t['overall']['mismatches']})",
         t["overall"].get("hit_rate", "-"), t["overall"].get("exposed_draft_fraction", "-")]
        for m, t in table.items()])
    runs = [k for k in lm if k.startswith("mirror")]
    phases = list(lm[runs[0]]["step_ms"])
    breakdown = markdown_table(["run"] + [p.replace("_s", " ms") for p in phases] + ["measured step ms",
                                                                                     "model step ms"], [
        [k] + [lm[k]["step_ms"][p] for p in phases] + [lm[k]["measured_step_ms"], lm[k]["predicted_step_ms"]]
        for k in runs])
    sep = lm["separate_draft_device"]
    model_rows = markdown_table(["setting", "hit rate", "τ", "predicted speedup", "measured speedup"], [
        [k, lm[k]["hit_rate"], lm[k]["tau"], lm[k]["predicted_speedup"], lm[k]["measured_speedup"]] for k in runs] + [
        [f"{k}: draft on its own device (extrapolated)", lm[k]["hit_rate"], lm[k]["tau"],
         sep[k]["predicted_speedup"], "-"] for k in sep])
    c = result["config"]
    rollouts = "; ".join(f"`{p}` rolls out with the {'speculative-streaming' if r == 'stream' else 'EAGLE'} draft"
                         for p, r in {"mirror": c.get("rollout", "eagle"),
                                      **{f"mirror_{r}": r for r in c.get("compare_rollouts", [])}}.items())
    md = write_markdown(json_path.with_suffix(".md"), "Mirror speculative decoding on Spec-Bench", [
        ("Overall", overall), ("Per category (speedup / τ)", category_table(table, cats)),
        ("Time per step (ms; redraft per miss, the rest per step)", breakdown),
        ("Latency model vs measurement", model_rows + f"\n\nPlain decoding: {lm['ar_token_ms']:.1f} ms per token. "
         + ("The model is fitted on the even-numbered questions (phase times, hit rate, τ, plain decoding's token "
            "time) and its prediction compared with the measurement on the odd-numbered ones; measured step ms "
            "above are from the held-out half." if lm.get("fit") == "half" else
            "The model is fed the phase times of the same run it predicts, so agreement is by construction.")
         + " Hit rate everywhere = 1 - misses / steps (a miss pays a serial re-draft)."),
        ("Ablations (one factor at a time around the base setting, overlapped)", markdown_table(
            ["setting", "tokens/s", "speedup", "τ", "hit rate", "exposed draft", "lossless"],
            [[m, a["tokens_per_s"], a["speedup"], a["tau"], a["hit_rate"], a["exposed_draft_fraction"],
              "yes" if a["lossless"] else "no"] for m, a in result["ablations"].items()]) if result["ablations"]
         else "none run"),
        ("Method", f"First turn of {c['per_category']} question(s) per category, greedy, {c['max_new_tokens']} new "
                   f"tokens, γ={c['gamma']}, κ={c['kappa']}, exit layer {c['exit_layer'] or 'N/2'}, precision "
                   f"{result['precision']}; {rollouts}; `_serial` runs draft and target one after the other, the "
                   "others overlap them on two threads; all methods in one run."),
        ("Reproduce", f"`{_command(c, json_path)}`"),
    ])

    return json_path, md, write_plot(json_path.with_suffix(".png"), category_plot(table, cats), figsize=(9, 4))


def _command(c: dict, json_path: Path) -> str:
    """The `leaninfer bench mirror` command line that reproduces a run with config `c`."""
    args = [f"--per-category {c['per_category']}", f"--max-new-tokens {c['max_new_tokens']}", f"--gamma {c['gamma']}",
            f"--kappa {c['kappa']}", f"--rollout {c['rollout']}"]
    args += [f"--exit-layer {c['exit_layer']}"] if c.get("exit_layer") is not None else []
    args += [f"--compare-rollout {r}" for r in c.get("compare_rollouts") or []]
    args += [f"--baselines {b}" for b in c.get("baselines") or []]
    args += [f"--ablate {a}" for a in c.get("ablations") or []]
    return f"leaninfer bench mirror {' '.join(args)} --json {json_path}"
