"""`leaninfer bench precision`: perplexity, next-token agreement, greedy agreement and decode speed of each
weight precision against the fp32 reference; picks the fastest precision within 1% perplexity."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from leaninfer.bench.report import machine_info, markdown_table, median, write_json, write_markdown, write_plot
from leaninfer.demo import DEMO_PROMPTS
from leaninfer.eval.perplexity import agreement, perplexity, text_corpus


@dataclass
class PrecisionBenchConfig:
    model: str = "default"
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16", "int8", "int4", "w8a8"])
    n_texts: int = 20
    max_len: int = 256
    greedy_tokens: int = 32
    speed_tokens: int = 48
    repeats: int = 3
    tolerance: float = 0.01

    @classmethod
    def quick(cls, **kw) -> PrecisionBenchConfig:
        return cls(n_texts=6, max_len=256, greedy_tokens=16, speed_tokens=16, repeats=1, **kw)


def run_precision_bench(cfg: PrecisionBenchConfig) -> dict:
    import leaninfer

    texts = text_corpus(limit=cfg.n_texts)
    rows: dict[str, dict] = {}
    ref_argmax = ref_greedy = None
    for p in tqdm(cfg.precisions, desc="precisions"):
        engine = leaninfer.load(cfg.model, precision=p)
        ids = [engine.tokenizer.encode(t) for t in texts]
        ppl = perplexity(engine.model, ids, cfg.max_len)
        greedy = [engine.generate(q, max_new_tokens=cfg.greedy_tokens, eos=False).token_ids for q in DEMO_PROMPTS]
        engine.generate(DEMO_PROMPTS[0], max_new_tokens=4)
        speeds = []
        for _ in range(cfg.repeats):
            out = engine.generate(DEMO_PROMPTS[0], max_new_tokens=cfg.speed_tokens, eos=False)
            speeds.append(out.stats["tokens_per_s"])
        if ref_argmax is None:
            ref_argmax, ref_greedy = ppl.argmax, greedy
        rows[p] = {
            "ppl": ppl.ppl, "tokens_scored": ppl.tokens,
            "next_token_agreement": agreement(ppl.argmax, ref_argmax),
            "greedy_identical": sum(a == b for a, b in zip(greedy, ref_greedy, strict=True)) / len(greedy),
            "tokens_per_s": median(speeds),
        }
        del engine
    base = rows[cfg.precisions[0]]["ppl"]
    for r in rows.values():
        r["ppl_change"] = r["ppl"] / base - 1.0
        r["within_tolerance"] = abs(r["ppl_change"]) <= cfg.tolerance
    ok = [p for p in cfg.precisions if rows[p]["within_tolerance"]]
    best = max(ok, key=lambda p: rows[p]["tokens_per_s"])
    return {"benchmark": "precision", "config": asdict(cfg), "machine": machine_info(), "rows": rows,
            "headline": {"recommended_default": best, "tolerance": cfg.tolerance,
                         **{f"{p}_ppl": rows[p]["ppl"] for p in rows},
                         **{f"{p}_tokens_per_s": rows[p]["tokens_per_s"] for p in rows}}}


def write_precision_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(json_path, result)
    c, rows = result["config"], result["rows"]
    table = markdown_table(
        ["precision", "perplexity", "Δ ppl vs fp32", "next-token agreement", "greedy identical", "tokens/s"],
        [[p, r["ppl"], f"{100 * r['ppl_change']:+.2f}%", f"{100 * r['next_token_agreement']:.1f}%",
          f"{100 * r['greedy_identical']:.0f}%", r["tokens_per_s"]] for p, r in rows.items()], digits=2)
    best = result["headline"]["recommended_default"]
    md = write_markdown(json_path.with_suffix(".md"), "Weight precision: quality and speed", [
        ("", f"Fastest precision within {100 * c['tolerance']:.0f}% of fp32 perplexity: **{best}**."),
        ("Results", table),
        ("Method", f"Perplexity over {c['n_texts']} real passages (Spec-Bench summarization and RAG turns, up to "
                   f"{c['max_len']} tokens each); next-token agreement = share of positions whose argmax equals "
                   f"fp32's; greedy identical = share of {len(DEMO_PROMPTS)} demo prompts whose "
                   f"{c['greedy_tokens']}-token greedy continuation equals fp32's; tokens/s = median of "
                   f"{c['repeats']} runs of {c['speed_tokens']} tokens on one prompt; "
                   f"{result['machine']['threads']} threads."),
        ("Reproduce", f"`leaninfer bench precision --json {json_path}`"),
    ])

    def draw(ax):
        for p, r in rows.items():
            ax.scatter(r["tokens_per_s"], 100 * r["ppl_change"], s=60)
            ax.annotate(p, (r["tokens_per_s"], 100 * r["ppl_change"]), textcoords="offset points", xytext=(5, 5))
        ax.axhline(100 * c["tolerance"], color="red", ls="--", lw=1, label="1% budget")
        ax.set_xlabel("tokens/s")
        ax.set_ylabel("perplexity change vs fp32 (%)")
        ax.legend()

    return json_path, md, write_plot(json_path.with_suffix(".png"), draw)
