"""`leaninfer draft report`: the trained drafts' training summaries and their offline τ curves (greedy chain
τ on held-out self-distillation examples against training tokens), from each draft's saved `config.json`."""

from __future__ import annotations

import json
from pathlib import Path

from leaninfer.bench.report import machine_info, markdown_table, write_json, write_markdown, write_plot
from leaninfer.io.drafts import KINDS, draft_dir


def collect(source: str) -> dict:
    drafts = {}
    for kind in KINDS:
        f = draft_dir(source, kind) / "config.json"
        if f.is_file():
            info = json.loads(f.read_text())["info"]
            drafts[kind] = {k: info[k] for k in ("train_config", "train_examples", "steps", "train_tokens",
                                                 "train_seconds", "draft_vocab_coverage", "curve", "threads")
                            if k in info}
    return {"benchmark": "drafts", "machine": machine_info(), "drafts": drafts}


def _tau(point: dict, gamma: int | None = None) -> float:
    """Offline chain τ of a curve point at `gamma` drafts (default: the deepest measured)."""
    taus = {int(k): v for k, v in point["chain_tau"].items()}
    return taus[min(gamma or max(taus), max(taus))]


def write_draft_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = write_json(json_path, result)
    rows, starts = [], []
    for kind, d in result["drafts"].items():
        last = d["curve"][-1]
        init = d["train_config"].get("init_from")
        if init:  # its minutes are on top of the draft it started from
            base = Path(init).name
            starts.append(f"`{kind}` starts from the trained `{base}` draft"
                          + (f" ({result['drafts'][base]['train_seconds'] / 60:.0f} min, its row)"
                             if base in result["drafts"] else "")
                          + "; its own row counts only the training after that.")
        rows.append([kind, d["steps"], d["train_tokens"], d["train_seconds"] / 60,
                     f"{100 * d['draft_vocab_coverage']:.1f}%", last["acc_by_depth"][0], _tau(last, 3),
                     _tau(last), len(last["acc_by_depth"])])
    table = markdown_table(["draft", "steps", "training tokens", "minutes", "draft-vocab coverage",
                            "top-1 acc (depth 1)", "offline chain τ (3 drafts)", "offline chain τ (all)",
                            "depths"], rows)
    md = write_markdown(json_path.with_suffix(".md"), "Draft training (self-distillation, CPU)", [
        ("Trained drafts", table),
        ("Method", "Offline chain τ: on held-out self-distillation examples, 1 + the mean number of leading "
                   "draft guesses (teacher-forced on the true earlier tokens) that equal the target's greedy "
                   "token, i.e. what greedy chain drafting would accept. It is measured at every checkpoint, "
                   "so the curve shows what more training buys. Decoding speed is in reports/spec.md."
                   + "".join(f" {x}" for x in starts)
                   + f" Every draft trains on the same {d['train_examples']} self-distillation examples and is "
                   f"scored on {d['train_config']['heldout']} held-out ones."),
        ("Reproduce", "`leaninfer draft data` then `leaninfer draft train --kind KIND`, then "
                      f"`leaninfer draft report --json {json_path}`"),
    ])

    def draw(ax):
        for kind, d in result["drafts"].items():
            xs = [c["train_tokens"] / 1e3 for c in d["curve"]]
            ys = [_tau(c) for c in d["curve"]]
            ax.plot(xs, ys, marker="o", label=kind)
        ax.set_xlabel("training tokens (thousands)")
        ax.set_ylabel("offline chain τ (all draft depths)")
        ax.legend()

    return json_path, md, write_plot(json_path.with_suffix(".png"), draw)
