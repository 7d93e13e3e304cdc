"""`leaninfer bench mtp`: MTP (mask tokens + gated LoRA) on Spec-Bench through the shared runner (bench/spec.py),
beside plain decoding and the other drafters in the same run, plus the base-perplexity drift of gated vs plain
(ungated) LoRA -> reports/mtp.{json,md,png}."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from leaninfer.bench.report import markdown_table, write_json, write_markdown, write_plot
from leaninfer.bench.spec import SpecBenchConfig, category_plot, category_table, run_spec_bench

HEADLINE = "mtp"  # label of the headline configuration: k=4, quadratic decoding, sampler on


@dataclass
class MTPBenchConfig:
    model: str = "default"
    precision: str | None = None
    questions: Path | None = None  # Spec-Bench question file (default: ../shared/data/spec_bench)
    per_category: int | None = 3
    max_new_tokens: int = 96
    k: int = 4
    others: list[str] = field(default_factory=lambda: ["ngram", "eagle", "medusa", "hydra", "sd"])
    ablations: bool = True
    ppl_texts: int = 6
    ppl_max_len: int = 256

    @classmethod
    def quick(cls, **kw) -> MTPBenchConfig:
        return cls(per_category=1, max_new_tokens=32, others=["ngram"], ablations=False, ppl_texts=2, **kw)

    def methods(self) -> list[str]:
        head = [f"{HEADLINE}=mtp:k={self.k},decoding=quadratic,sampler=on"]
        if not self.ablations:
            return head + self.others
        ks = [f"mtp_k{k}=mtp:k={k},decoding=quadratic,sampler=on" for k in (1, 2) if k < self.k]
        return head + ks + [f"mtp_linear=mtp:k={self.k},decoding=linear,sampler=on",
                            f"mtp_nosampler=mtp:k={self.k},decoding=quadratic,sampler=off"] + self.others


def base_ppl_drift(engine, adapter, texts: list[str], max_len: int, anchor_every: int = 4) -> dict:
    """Perplexity of the real rows of blocks that carry mask slots (a block of k masks after every
    `anchor_every`-th token, the training layout): the base model on that block (LoRA off), the gated LoRA, and
    the same LoRA ungated (plain). Gated real rows are the base model's rows, so its delta is exactly 0.
    `no_masks` is the ordinary forward over the text alone (equal to `base` on row-invariant precisions)."""
    from leaninfer.train.mtp import build_layout

    model = engine.model
    k = adapter.cfg.n_masks
    modes = {"base": torch.zeros(0, dtype=torch.long), "gated": None, "plain_lora": "all"}
    nll = dict.fromkeys([*modes, "no_masks"], 0.0)
    n = 0
    with torch.inference_mode():
        for text in texts:
            ids = engine.encode(text)[:max_len]
            L = len(ids)
            target = torch.tensor(ids[1:])
            nll["no_masks"] += float(F.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], target,
                                                     reduction="sum"))
            lay = build_layout(ids, list(range(0, L - 2, anchor_every)), k)
            for mode, gate in modes.items():
                with adapter.attached(model, max_rows=lay.tokens.numel(), lossless=False):  # scoring, not verifying
                    adapter.gate(lay.mask_rows if gate is None else gate)
                    h = adapter.embed(model, lay.tokens[None], lay.slot[None])
                    hid = model(hidden=h, positions=lay.positions[None], block_mask=lay.block, logits=False).hidden
                logits = torch.cat([model.head(c) for c in hid[:, : L - 1].split(16, dim=1)], 1)[0]
                nll[mode] += float(F.cross_entropy(logits, target, reduction="sum"))
            n += L - 1
    ppl = {m: math.exp(v / n) for m, v in nll.items()}
    return {"tokens": n, "ppl": ppl, "delta_gated": ppl["gated"] - ppl["base"],
            "delta_plain_lora": ppl["plain_lora"] - ppl["base"], "gated_bit_identical": nll["gated"] == nll["base"]}


def run_mtp_bench(cfg: MTPBenchConfig) -> dict:
    import leaninfer
    from leaninfer.eval.perplexity import text_corpus
    from leaninfer.generate.proposers.mtp import engine_adapter

    spec_cfg = SpecBenchConfig(model=cfg.model, precision=cfg.precision, questions=cfg.questions,
                               methods=cfg.methods(), per_category=cfg.per_category, max_new_tokens=cfg.max_new_tokens)
    spec = run_spec_bench(spec_cfg)
    engine = leaninfer.load(cfg.model, precision=cfg.precision)
    adapter = engine_adapter(engine)
    if cfg.questions is None:
        texts = text_corpus(limit=cfg.ppl_texts)
    else:
        from leaninfer.eval.specbench import load_questions

        texts = [q.text for q in load_questions(cfg.questions)][: cfg.ppl_texts]
    drift = base_ppl_drift(engine, adapter, texts, cfg.ppl_max_len)
    table = spec["table"]
    n_q = len(spec["per_question"]["ar"])

    def summary(label: str) -> dict:
        rows = spec["per_question"][label]
        same = sum(r["identical"] for r in rows)
        acc = [r.get("accept_by_position") for r in rows if r.get("accept_by_position")]
        by_pos = [sum(a[j] for a in acc) / len(acc) for j in range(len(acc[0]))] if acc else []
        o = table[label]["overall"]
        return {"tokens_per_step": o["tau"], "speedup": o["speedup"], "tokens_per_s": o["tokens_per_s"],
                "lossless": f"{same}/{len(rows)}", "accept_by_position": by_pos}

    mtp_labels = [m for m in table if m.startswith("mtp")]
    per_k = {str(cfg.k): summary(HEADLINE)}
    per_k.update({lab.removeprefix("mtp_k"): summary(lab) for lab in mtp_labels if lab.startswith("mtp_k")})
    head = summary(HEADLINE)
    return {
        "benchmark": "mtp", "config": {**asdict(cfg), "questions": str(cfg.questions or "default")},
        "spec": spec, "manifest": _manifest(),
        "tokens_per_step": head["tokens_per_step"], "speedup": head["speedup"], "lossless": head["lossless"],
        "questions": n_q, "base_ppl_delta_gated": drift["delta_gated"],
        "base_ppl_delta_plain_lora": drift["delta_plain_lora"], "ppl": drift,
        "per_k": dict(sorted(per_k.items(), key=lambda kv: int(kv[0]))),
        "methods": {m: summary(m) for m in table if m != "ar"},
    }


def _manifest() -> dict:
    import json

    from leaninfer.models.mtp import asset_dir

    path = asset_dir() / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_mtp_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(Path(json_path), result)
    spec, c = result["spec"], result["config"]
    methods = markdown_table(["method", "tokens/step (τ)", "speedup", "tokens/s", "lossless (greedy = plain)",
                              "acceptance by position"],
                             [[m, s["tokens_per_step"], s["speedup"], s["tokens_per_s"], s["lossless"],
                               " / ".join(f"{a:.2f}" for a in s["accept_by_position"])]
                              for m, s in result["methods"].items()])
    per_k = markdown_table(["k", "tokens/step", "speedup", "lossless"],
                           [[k, v["tokens_per_step"], v["speedup"], v["lossless"]] for k, v in result["per_k"].items()])
    p = result["ppl"]
    drift = markdown_table(["model", "perplexity", "delta vs base"], [
        ["base (same block, LoRA off)", p["ppl"]["base"], 0.0],
        ["gated LoRA (masks in the block)", p["ppl"]["gated"], p["delta_gated"]],
        ["same LoRA ungated (plain)", p["ppl"]["plain_lora"], p["delta_plain_lora"]],
        ["base, ordinary forward without masks", p["ppl"]["no_masks"], p["ppl"]["no_masks"] - p["ppl"]["base"]]],
        digits=4)
    man = result.get("manifest", {})
    budget = man.get("budget", {})
    train = (f"Adapter: {man.get('file', '?')} ({man.get('bytes', 0) / 1e6:.1f} MB), rank "
             f"{man.get('config', {}).get('rank')}, {man.get('config', {}).get('n_masks')} mask slots, "
             f"{budget.get('steps')} steps, {budget.get('train_cpu_seconds', 0) / 60:.1f} CPU-min of training "
             f"({budget.get('total_cpu_seconds', 0) / 60:.1f} CPU-min with data); command: "
             f"`{man.get('command', '?')}`")
    others = " ".join(f"--others {m}" for m in c["others"])
    md = write_mtp_report_md(json_path, result, methods, per_k, drift, train, others, spec)
    png = write_plot(json_path.with_suffix(".png"), category_plot(spec["table"], spec["categories"]), figsize=(10, 4))
    return json_path, md, png


def write_mtp_report_md(json_path, result, methods, per_k, drift, train, others, spec) -> Path:
    c = result["config"]
    head = (f"tokens/step {result['tokens_per_step']:.2f}, speedup {result['speedup']:.2f}x, lossless "
            f"{result['lossless']}, base perplexity delta: gated {result['base_ppl_delta_gated']:+.4f}, plain "
            f"LoRA {result['base_ppl_delta_plain_lora']:+.4f}")
    return write_markdown(json_path.with_suffix(".md"), "MTP: mask tokens + gated LoRA on Spec-Bench", [
        ("Headline (k = 4, quadratic decoding, sampler on)", head),
        ("Methods in the same run", methods), ("Tokens per step by k (quadratic, sampler on)", per_k),
        ("Per category (speedup / τ)", category_table(spec["table"], spec["categories"])),
        ("Base-model drift: gated vs plain LoRA", drift + "\n\nPerplexity of the real rows of blocks that carry "
         "a block of mask slots after every 4th token (Spec-Bench summarisation / RAG passages). The plain row "
         "applies the trained gated LoRA to every row; it measures drift, it is not a separately trained adapter."),
        ("Training", train),
        ("Method", f"First turn of {c['per_category'] or 'every'} question(s) per Spec-Bench category, greedy, "
                   f"{c['max_new_tokens']} new tokens max, precision {spec['precision']}, all methods in one run; "
                   "τ = new tokens per target forward after prefill (plain = 1.00)."),
        ("Reproduce", f"`leaninfer bench mtp --per-category {c['per_category']} --max-new-tokens "
                      f"{c['max_new_tokens']} {others} --json {json_path}`"),
    ])
