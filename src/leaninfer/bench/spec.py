"""`leaninfer bench spec`: Spec-Bench runner. For every method, in one run against plain decoding: tokens/s,
speedup, mean accepted tokens τ (plain = 1.00) per category and overall, and a check that every greedy output
equals plain greedy output."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from leaninfer.bench.report import machine_info, markdown_table, median, write_json, write_markdown, write_plot
from leaninfer.eval.specbench import format_prompt, load_questions

log = logging.getLogger(__name__)


@dataclass
class SpecBenchConfig:
    model: str = "default"
    precision: str | None = None
    questions: Path | None = None
    methods: list[str] = field(default_factory=lambda: ["ngram", "ngram_tree"])
    per_category: int | None = 3
    max_new_tokens: int = 96
    repeats: int = 1

    @classmethod
    def quick(cls, **kw) -> SpecBenchConfig:
        return cls(per_category=1, max_new_tokens=32, **kw)


def run_spec_bench(cfg: SpecBenchConfig) -> dict:
    import leaninfer

    engine = leaninfer.load(cfg.model, precision=cfg.precision)
    questions = load_questions(cfg.questions, per_category=cfg.per_category)
    methods = ["ar"] + [m for m in cfg.methods if m != "ar"]
    engine.generate(format_prompt(questions[0]), max_new_tokens=4)  # warm-up
    per: dict[str, list[dict]] = defaultdict(list)
    for q in tqdm(questions, desc="spec-bench"):
        prompt = format_prompt(q)
        ref_tokens = None
        for m in methods:
            runs = [engine.generate(prompt, max_new_tokens=cfg.max_new_tokens, method=m) for _ in range(cfg.repeats)]
            out = runs[0]
            ref_tokens = out.token_ids if m == "ar" else ref_tokens
            per[m].append({
                "question_id": q.question_id, "category": q.category, "new_tokens": len(out.token_ids),
                "seconds": median([r.stats["e2e_s"] for r in runs]), "forwards": out.stats["target_forwards"],
                "identical": out.token_ids == ref_tokens,
            })
    return {"benchmark": "spec", "config": {**asdict(cfg), "questions": str(cfg.questions or "default")},
            "machine": machine_info(), "precision": engine.precision, "per_question": dict(per),
            **_summarise(per)}


def _summarise(per: dict[str, list[dict]]) -> dict:
    def agg(rows):
        toks = sum(r["new_tokens"] for r in rows)
        secs = sum(r["seconds"] for r in rows)
        decode_fw = sum(max(r["forwards"] - 1, 1) for r in rows)
        return {"tokens_per_s": toks / secs, "tau": (toks - len(rows)) / decode_fw,
                "lossless": all(r["identical"] for r in rows), "mismatches": sum(not r["identical"] for r in rows)}

    cats = sorted({r["category"] for r in per["ar"]})
    table: dict[str, dict] = {}
    for m, rows in per.items():
        table[m] = {"overall": agg(rows), **{c: agg([r for r in rows if r["category"] == c]) for c in cats}}
    base = table["ar"]
    for m in table:
        for c in table[m]:
            table[m][c]["speedup"] = table[m][c]["tokens_per_s"] / base[c]["tokens_per_s"]
    headline = {m: {k: table[m]["overall"][k] for k in ("speedup", "tau", "lossless", "tokens_per_s")}
                for m in table if m != "ar"}
    return {"categories": cats, "table": table, "headline": headline}


def write_spec_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(json_path, result)
    table, cats = result["table"], result["categories"]
    overall = markdown_table(["method", "tokens/s", "speedup", "τ", "lossless (greedy = plain)"], [
        [m, t["overall"]["tokens_per_s"], t["overall"]["speedup"], t["overall"]["tau"],
         "yes" if t["overall"]["lossless"] else f"no ({t['overall']['mismatches']} mismatches)"]
        for m, t in table.items()])
    by_cat = markdown_table(["method"] + cats, [
        [m] + [f"{t[c]['speedup']:.2f}× / τ {t[c]['tau']:.2f}" for c in cats] for m, t in table.items()])
    c = result["config"]
    md = write_markdown(json_path.with_suffix(".md"), "Spec-Bench: speculative decoding on the default model", [
        ("Overall", overall), ("Per category (speedup / τ)", by_cat),
        ("Method", f"First turn of {c['per_category'] or 'every'} question(s) per category, greedy, "
                   f"{c['max_new_tokens']} new tokens max, precision {result['precision']}, all methods in one run "
                   "on the same machine; τ = new tokens per target forward after prefill (plain = 1.00)."),
        ("Reproduce", f"`leaninfer bench spec --json {json_path}`"),
    ])

    def draw(ax):
        methods = list(table)
        for i, m in enumerate(methods):
            ax.bar([j + i * 0.8 / len(methods) for j in range(len(cats))], [table[m][k]["speedup"] for k in cats],
                   width=0.8 / len(methods), label=m)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel("speedup vs plain decoding")
        ax.legend(fontsize=8)

    return json_path, md, write_plot(json_path.with_suffix(".png"), draw, figsize=(9, 4))
