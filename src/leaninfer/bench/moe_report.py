"""Markdown and PNG of `leaninfer bench moe`, drawn from its saved JSON result (`bench.moe.run_moe_bench`)."""

from __future__ import annotations

import json
from pathlib import Path

from leaninfer.bench.report import markdown_table, write_json, write_markdown, write_plot


def write_moe_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    """Write the JSON, then `<name>.md` and `<name>.png` from it; returns the three paths."""
    json_path = write_json(Path(json_path), result)
    h, ks = result["headline"], sorted(int(k) for k in result["base"])
    md = write_markdown(json_path.with_suffix(".md"), "MoE: dial k (PHDS) and Roster of Experts", [
        ("Setup", _setup_text(result)),
        ("Training budgets (what each model saw)", _training_table(result)),
        ("Dialling k: base vs PHDS vs oracle-k (held-out test)", _dial_table(result, ks)),
        ("Cross-sparsity agreement (% of MC items with the same answer)", _agreement_table(result)),
        ("RoE tuning on validation (grid)", _tuning_text(result)),
        ("RoE vs plain decoding (PHDS checkpoint)", _roe_table(result, ks) + "\n\n" + _roe_text(h)),
        ("Done-when targets (issue 5)", _targets_table(result, ks)),
        ("Headline", "```\n" + json.dumps(h, indent=1) + "\n```"),
    ])
    return json_path, md, write_plot(json_path.with_suffix(".png"), lambda ax: _draw(ax, result, ks),
                                     figsize=(11, 4))


def _dial_table(r: dict, ks: list[int]) -> str:
    h, dense = r["headline"], r["dense"]
    rows = [[k, h[str(k)]["base_ppl"], h[str(k)]["phds_ppl"], h[str(k)]["oracle_ppl"],
             r["base"][str(k)]["acc"] * 100, h[str(k)]["phds_acc"] * 100, h[str(k)]["oracle_acc"] * 100,
             h[str(k)]["ms_per_token"]] for k in ks]
    rows.append(["dense", dense["ppl"], "", "", dense["acc"] * 100, "", "", r["speed"]["dense"]["ms_per_token"]])
    return markdown_table(["k", "base ppl", "PHDS ppl", "oracle-k ppl", "base acc %", "PHDS acc %",
                           "oracle-k acc %", "ms/token (PHDS, int8)"], rows)


def _agreement_table(r: dict) -> str:
    ag = r["agreement"]
    rows = [[p, ag["phds"][p] * 100, ag["oracle"][p] * 100, ag["base"][p] * 100] for p in ag["phds"]]
    h = r["headline"]
    rows.append(["mean", h["phds_agreement"] * 100, h["oracle_agreement"] * 100,
                 sum(ag["base"].values()) / len(ag["base"]) * 100])
    return markdown_table(["pair (k_a-k_b)", "PHDS (one checkpoint)", "oracle pair", "base"], rows)


def _tuning_text(r: dict) -> str:
    roe = r["roe"]
    trials = markdown_table(["tau", "clean layers", "n", "val ppl"],
                            [[t["tau"], t["clean_layers"], t["n"], t["val_ppl"]] for t in roe["tuning"]["trials"]],
                            digits=3)
    return f"plain val ppl at k={roe['k']}: {roe['tuning']['plain_val_ppl']:.3f}\n\n" + trials


def _roe_table(r: dict, ks: list[int]) -> str:
    h, sp, roe = r["headline"], r["speed"], r["roe"]
    rows = [[f"plain k={k}", h[str(k)]["phds_ppl"], h[str(k)]["phds_acc"] * 100, sp[str(k)]["ms_per_token"],
             sp[str(k)]["kv_bytes_per_token"]] for k in ks]
    rows.append([f"RoE k={roe['k']} n={roe['config']['n']}", roe["test"]["ppl"], roe["test"]["acc"] * 100,
                 sp["roe"]["ms_per_token"], sp["roe"]["kv_bytes_per_token"]])
    return markdown_table(["setting", "test ppl", "acc %", "ms/token", "KV bytes/token"], rows)


def _training_table(r: dict) -> str:
    tr = r.get("training", {})
    rows = []
    for name, t in tr.items():
        draws = ", ".join(f"k={k}: {n}" for k, n in (t.get("k_draws") or {}).items())
        rows.append([name, t.get("loss", ""), t["steps"], t["tokens"], t["cpu_minutes"], t["wall_minutes"],
                     t["first_loss"], t["last10_loss"], draws])
    note = ("Loss (nats/token): kd = KL to the dense model's next-token distribution, ce = next-token "
            "cross-entropy on the training text. CPU minutes: the training loop's own process CPU time at one torch "
            "thread (the budget clock); wall minutes include time the shared machine gave to other jobs.")
    return markdown_table(["run", "loss", "steps", "tokens", "CPU min", "wall min", "first loss", "last-10 loss",
                           "k draws (PHDS)"], rows, digits=3) + "\n\n" + note


def _targets_table(r: dict, ks: list[int]) -> str:
    h, t = r["headline"], r["targets"]
    rows = []
    for k in ks:
        e = h[str(k)]
        rel = e["phds_ppl"] / e["oracle_ppl"] - 1
        ok = t["phds_vs_oracle"][str(k)]
        rows.append([f"PHDS within 1% ppl of oracle, k={k}", f"{e['phds_ppl']:.2f} vs {e['oracle_ppl']:.2f} "
                     f"({rel * 100:+.2f}%)", _met(ok["ppl_within_1pct"])])
        rows.append([f"PHDS within 1 point acc of oracle, k={k}", f"{e['phds_acc'] * 100:.1f} vs "
                     f"{e['oracle_acc'] * 100:.1f}%", _met(ok["acc_within_1pt"])])
    rows.append(["PHDS agreement > oracle pairs", f"{h['phds_agreement'] * 100:.1f} vs "
                 f"{h['oracle_agreement'] * 100:.1f}%", _met(t["phds_agreement_exceeds_oracle"])])
    ms = ", ".join(f"k={k}: {h[str(k)]['ms_per_token']:.1f}" for k in reversed(ks))
    rows.append(["decode time falls with k", f"ms/token {ms}",
                 _met(t["decode_time_falls_with_k"])])
    rows.append([f"RoE beats plain at k={r['roe']['k']}: ppl", f"{h['roe_ppl']:.2f} vs {h['plain_ppl_same_k']:.2f}",
                 _met(t["roe_beats_plain_ppl"])])
    rows.append([f"RoE beats plain at k={r['roe']['k']}: accuracy", f"{h['roe_acc'] * 100:.1f} vs "
                 f"{h['plain_acc_same_k'] * 100:.1f}%", _met(t["roe_beats_plain_acc"])])
    m = h["roe_matches_plain_k"]
    rows.append(["RoE: extra compute and matched plain k", f"{h['roe_cost_ratio']:.2f}x ms/token; matches plain "
                 f"k={m}" if m else f"{h['roe_cost_ratio']:.2f}x ms/token; below every plain k", "reported"])
    n = len(r["dense"]["preds"])
    return markdown_table(["target", "measurement", "met"], rows) + (
        f"\n\nOne MC item is {100 / n:.1f} points ({n} items), so 'within 1 point' means no fewer correct items "
        "than the oracle.")


def _loss_text(sft: dict) -> str:
    if sft.get("loss", "ce") == "kd":
        return "KL to the dense model's next-token distribution (KD)"
    return "next-token cross-entropy on the training text (CE)"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _setup_text(r: dict) -> str:
    c = r["config"]
    b, s = r.get("build", {}).get("config") or c["build"], c["sft"]
    lines = [
        f"- MoE: Gemma 3 270M FFNs (2048 neurons) split into {b['n_experts']} experts of "
        f"{2048 // b['n_experts']} neurons, native top-{b['top_k']}, no renormalisation (OLMoE convention); "
        "`leaninfer moe build`: MoEfication + end-to-end distillation (KL to the dense model), routers and "
        f"experts only, peak LR {b['lr']:g} (experts) / {b['router_lr']:g} (routers), warmup + cosine decay "
        f"over the budget ({b['max_minutes']:g} min).",
        f"- SFT (PHDS and each oracle-k): {s['steps']} steps x {s['seq_len']} tokens, {_loss_text(s)}, the same "
        "chunks in "
        f"the same order, peak LR {s['lr']:g} / {s['router_lr']:g} with cosine decay; PHDS k_set {s['k_set']} -> "
        f"anchor {s['anchor_k']} from {s['anchor_start']:.0%} over {s['ramp']:.0%} of training, eps {s['eps']}.",
        f"- Test: Spec-Bench long passages (test split), perplexity over the first {c['test']['ppl_len']} tokens of "
        f"each; MC: {len(r['dense']['preds'])} items, {c['test']['n_choices']} choices, context "
        f"{c['test']['ctx_len']} / continuation {c['test']['cont_len']} tokens.",
        f"- Dense model: test ppl {r['dense']['ppl']:.3f}, MC acc {r['dense']['acc'] * 100:.1f}%.",
        "- Test was used once for a design choice: the switch of the SFT loss from CE to KD (docs/moe.md) was "
        "decided on an earlier session's test perplexities of CE runs, not on validation. The runs reported here "
        "were not tuned on test; only the RoE grid is chosen, on validation.",
    ]
    m, sp = r["machine"], r["speed"]
    lines.append(f"- Machine: {m.get('processor', '')}, {m.get('cores')} cores, shared with other engineers' jobs "
                 "(quality numbers do not depend on load). Decode ms/token: settings interleaved per prompt and "
                 "repeat; load average (1, 5, 15 min) before "
                 + ", ".join(f"{x:.2f}" for x in sp.get("loadavg_before", []))
                 + " and after " + ", ".join(f"{x:.2f}" for x in sp.get("loadavg_after", [])) + ".")
    if c.get("note"):
        lines.append(f"- Note: {c['note']}")
    return "\n".join(lines)


def _roe_text(h: dict) -> str:
    m = h["roe_matches_plain_k"]
    return (f"RoE ppl {h['roe_ppl']:.3f} vs plain {h['plain_ppl_same_k']:.3f} at the same k; MC acc "
            f"{h['roe_acc'] * 100:.1f}% vs {h['plain_acc_same_k'] * 100:.1f}%. Decode cost {h['roe_cost_ratio']:.2f}x "
            f"plain at the same k; the clean cache keeps KV memory at one sequence. "
            + (f"Largest plain k whose perplexity RoE reaches: {m}." if m else "RoE does not reach plain ppl at "
               "any dialled k."))


def _draw(ax, r: dict, ks: list[int]) -> None:
    h, dense, roe, sp = r["headline"], r["dense"], r["roe"], r["speed"]
    fig = ax.figure
    ax.remove()
    ax1, ax2 = fig.subplots(1, 2)
    for name, key in (("base", "base_ppl"), ("PHDS", "phds_ppl"), ("oracle-k", "oracle_ppl")):
        ax1.plot(ks, [h[str(k)][key] for k in ks], marker="o", label=name)
    ax1.axhline(dense["ppl"], color="grey", ls="--", label="dense")
    ax1.scatter([roe["k"]], [roe["test"]["ppl"]], marker="*", s=150, color="red", label=f"RoE n={roe['config']['n']}")
    ax1.set_xlabel("experts per token k")
    ax1.set_ylabel("held-out perplexity")
    ax1.legend()
    ax2.plot([sp[str(k)]["ms_per_token"] for k in ks], [h[str(k)]["phds_acc"] * 100 for k in ks], marker="o",
             label="PHDS (one checkpoint)")
    for k in ks:
        ax2.annotate(f"k={k}", (sp[str(k)]["ms_per_token"], h[str(k)]["phds_acc"] * 100))
    ax2.scatter([sp["roe"]["ms_per_token"]], [roe["test"]["acc"] * 100], marker="*", s=150, color="red", label="RoE")
    ax2.set_xlabel("decode ms/token (int8)")
    ax2.set_ylabel("MC accuracy %")
    ax2.legend()
