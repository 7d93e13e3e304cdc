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
    # "name" or "label=name:key=value,key=value" (e.g. "eagle8=eagle:max_nodes=8,depth=6")
    methods: list[str] = field(default_factory=lambda: ["ngram", "ngram_tree", "sd", "eagle", "medusa", "hydra"])
    per_category: int | None = 3
    max_new_tokens: int = 96
    repeats: int = 1
    previous: Path | None = None  # an earlier run's JSON: its speedup and τ are shown beside this run's

    @classmethod
    def quick(cls, **kw) -> SpecBenchConfig:
        return cls(per_category=1, max_new_tokens=32, **kw)


def parse_method(spec: str) -> tuple[str, str, dict]:
    """"label=name:key=value,..." -> (label, method name, options); values parsed as int/float/bool."""
    head, _, opts = spec.partition(":")
    label, _, name = head.rpartition("=")
    options = {}
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        options[k] = {"true": True, "false": False}.get(v.lower(), _number(v))
    return label or (name if not options else spec), name, options


def _number(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# the trained draft each method needs (Mirror-SD rolls out with the EAGLE draft unless rollout=stream)
DRAFT_KIND = {"sd": "draft-lm", "eagle": "eagle", "medusa": "medusa", "hydra": "hydra", "mirror": "eagle"}


def available(engine, methods: list[tuple[str, str, dict]]) -> tuple[list, dict[str, str]]:
    """Methods whose drafts exist; the others with the reason they were skipped."""
    from leaninfer.io.drafts import DraftNotFoundError

    keep, skipped = [], {}
    for label, name, opts in methods:
        if name in DRAFT_KIND and "draft" not in opts:
            kind = "mirror" if name == "mirror" and opts.get("rollout") == "stream" else DRAFT_KIND[name]
            try:
                engine.draft(kind)
            except DraftNotFoundError as e:
                skipped[label] = str(e)
                continue
        keep.append((label, name, opts))
    return keep, skipped


TIMERS = ("draft_s", "verify_s", "other_s")


def run_spec_bench(cfg: SpecBenchConfig) -> dict:
    import leaninfer

    engine = leaninfer.load(cfg.model, precision=cfg.precision)
    questions = load_questions(cfg.questions, per_category=cfg.per_category)
    methods, skipped = available(engine, [parse_method(m) for m in cfg.methods if m != "ar"])
    methods = [("ar", "ar", {})] + methods
    for label, name, opts in methods:  # warm-up (and load every draft) before timing anything
        engine.generate(format_prompt(questions[0]), max_new_tokens=4, method=name, **opts)
    per: dict[str, list[dict]] = defaultdict(list)
    for q in tqdm(questions, desc="spec-bench"):
        prompt = format_prompt(q)
        ref_tokens = None
        for label, name, opts in methods:
            runs = [engine.generate(prompt, max_new_tokens=cfg.max_new_tokens, method=name, **opts)
                    for _ in range(cfg.repeats)]
            out = runs[0]
            ref_tokens = out.token_ids if name == "ar" else ref_tokens
            per[label].append({
                "question_id": q.question_id, "category": q.category, "new_tokens": len(out.token_ids),
                "seconds": median([r.stats["e2e_s"] for r in runs]), "forwards": out.stats["target_forwards"],
                "ttft_s": out.stats["ttft_s"], "identical": out.token_ids == ref_tokens,
                **{t: out.stats[t] for t in TIMERS if t in out.stats},
                **{t: out.stats[t] for t in ("accept_by_position",) if t in out.stats},  # MTP
            })
    return {"benchmark": "spec", "config": {**asdict(cfg), "questions": str(cfg.questions or "default"),
                                            "previous": str(cfg.previous) if cfg.previous else None},
            "machine": machine_info(), "precision": engine.precision, "per_question": dict(per),
            "previous": _previous(cfg.previous),
            "skipped": skipped, "methods": {label: {"method": n, "options": o} for label, n, o in methods},
            **_summarise(per), "step_time": _step_time(per)}


def _previous(path: Path | None) -> dict | None:
    """Headline speedup / τ / precision of an earlier run, per method label."""
    if path is None:
        return None
    import json

    old = json.loads(Path(path).read_text())
    return {"path": str(path), "precision": old.get("precision"),
            "methods": {m: {"speedup": h["speedup"], "tau": h["tau"]} for m, h in old["headline"].items()}}


def _step_time(per: dict[str, list[dict]]) -> dict:
    """Per method: mean ms per decode step spent drafting, in the target's verification forward, and in
    bookkeeping (acceptance, cache compaction, feeding features back)."""
    out = {}
    for m, rows in per.items():
        if m == "ar" or not all(t in rows[0] for t in TIMERS):
            continue
        steps = sum(max(r["forwards"] - 1, 1) for r in rows)
        out[m] = {t.replace("_s", "_ms"): 1000 * sum(r[t] for r in rows) / steps for t in TIMERS}
    ar = per.get("ar")
    if ar:
        steps = sum(max(r["forwards"] - 1, 1) for r in ar)
        out["ar"] = {"step_ms": 1000 * sum(r["seconds"] - r["ttft_s"] for r in ar) / steps}
    return out


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


def _step_table(result: dict) -> str:
    """Where a step's time goes, and the τ each method needs at its measured step cost: a step of `total` ms
    emitting τ tokens beats plain decoding (`plain` ms per token) by τ · plain / total."""
    st = result.get("step_time", {})
    plain = st.get("ar", {}).get("step_ms")
    rows = []
    for m, v in st.items():
        if m == "ar":
            continue
        total = v["draft_ms"] + v["verify_ms"] + v["other_ms"]
        need = [total / plain, 1.8 * total / plain] if plain else ["", ""]
        rows.append([m, v["draft_ms"], v["verify_ms"], v["other_ms"], total, *need])
    note = (f"\n\nPlain decoding: {plain:.1f} ms per step. τ needed = step total / plain step (× 1.8 for the "
            "1.8× target): the acceptance a method must reach at its own measured step cost." if plain else "")
    skipped = "".join(f"\n\nSkipped {m}: {why}" for m, why in result.get("skipped", {}).items())
    head = ["method", "draft", "verify (target forward)", "bookkeeping", "total", "τ for 1.0×", "τ for 1.8×"]
    return markdown_table(head, rows) + note + skipped


def category_plot(table: dict, cats: list[str]):
    """`draw(ax)` for `report.write_plot`: grouped bars of each method's speedup per category."""

    def draw(ax) -> None:
        for i, m in enumerate(table):
            ax.bar([j + i * 0.8 / len(table) for j in range(len(cats))], [table[m][k]["speedup"] for k in cats],
                   width=0.8 / len(table), label=m)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel("speedup vs plain decoding")
        ax.legend(fontsize=8)

    return draw


def category_table(table: dict, cats: list[str]) -> str:
    """Markdown table of speedup / τ per method (rows) and category (columns) from `_summarise`'s table."""
    return markdown_table(["method"] + cats, [
        [m] + [f"{t[c]['speedup']:.2f}× / τ {t[c]['tau']:.2f}" for c in cats] for m, t in table.items()])


def write_spec_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(json_path, result)
    table, cats = result["table"], result["categories"]
    prev = (result.get("previous") or {}).get("methods", {})
    old = [f"previous speedup ({result['previous']['precision']} engine)", "previous τ"] if prev else []
    overall = markdown_table(["method", "tokens/s", "speedup", "τ", "lossless (greedy = plain)", *old], [
        [m, t["overall"]["tokens_per_s"], t["overall"]["speedup"], t["overall"]["tau"],
         "yes" if t["overall"]["lossless"] else f"no ({t['overall']['mismatches']} mismatches)",
         *([prev.get(m, {}).get("speedup", "n/a"), prev.get(m, {}).get("tau", "n/a")] if prev else [])]
        for m, t in table.items()])
    if prev:
        overall += (f"\n\nPrevious: `{result['previous']['path']}` (the same bench on the earlier engine). Methods "
                    "missing here were skipped (see below).")
    by_cat = category_table(table, cats)
    c = result["config"]
    md = write_markdown(json_path.with_suffix(".md"), "Spec-Bench: speculative decoding on the default model", [
        ("Overall", overall), ("Per category (speedup / τ)", by_cat),
        ("Where a decode step's time goes (ms per target forward)", _step_table(result)),
        ("Method", f"First turn of {c['per_category'] or 'every'} question(s) per category, greedy, "
                   f"{c['max_new_tokens']} new tokens max, precision {result['precision']}, all methods in one run "
                   "on the same machine; τ = new tokens per target forward after prefill (plain = 1.00)."),
        ("Reproduce", "`leaninfer bench spec " + "".join(f"--methods '{m}' " for m in c["methods"])
         + f"--max-new-tokens {c['max_new_tokens']} --per-category {c['per_category']} "
         + (f"--previous {c['previous']} " if c.get("previous") else "") + f"--json {json_path}`"),
    ])

    return json_path, md, write_plot(json_path.with_suffix(".png"), category_plot(table, cats), figsize=(9, 4))
