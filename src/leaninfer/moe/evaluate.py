"""`leaninfer moe eval`: held-out perplexity and multiple-choice accuracy of an MoE at each dialled k, with or
without RoE; cross-sparsity agreement; decode ms/token per k; the RoE hyper-parameter grid on validation.

Evaluation text is the Spec-Bench `test` split (never trained or tuned on); RoE is tuned on `val`. Results of
one (model, k, RoE, data) setting are cached as JSON beside the model's other caches, so a long benchmark
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from leaninfer.bench.report import median
from leaninfer.engine import Engine, load
from leaninfer.eval.choice import ChoiceItem, accuracy, build_items, predictions
from leaninfer.moe.data import passages
from leaninfer.moe.roe import RoEConfig
from leaninfer.moe.score import Scorer, perplexity
from leaninfer.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    ppl: list[list[int]]  # token lists for perplexity
    items: list[ChoiceItem]  # multiple-choice continuation items


@dataclass
class EvalConfig:
    split: str = "test"
    ppl_len: int = 128
    ctx_len: int = 64
    cont_len: int = 16
    n_choices: int = 4
    offsets: tuple[int, ...] = (0, 128)  # one MC item per passage per offset (test: 40 passages -> 80 items)
    max_passages: int | None = None
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def eval_data(encode, cfg: EvalConfig) -> EvalData:
    texts = passages(cfg.split)[: cfg.max_passages]
    ids = [encode(t) for t in texts]
    items = build_items(ids, cfg.ctx_len, cfg.cont_len, cfg.n_choices, cfg.offsets, cfg.seed)
    return EvalData([x[: cfg.ppl_len] for x in ids], items)


def _cache_file(model_dir: Path, tag: str, cfg: EvalConfig) -> Path:
    stamp = int((Path(model_dir) / "model.safetensors").stat().st_mtime) if Path(model_dir).is_dir() else 0
    key = hashlib.sha1(f"{Path(model_dir).resolve()}|{stamp}|{tag}|{cfg.key()}".encode()).hexdigest()[:12]
    return cache_dir("moe", "evals") / f"{Path(model_dir).name}-{tag}-{key}.json"


def evaluate(engine: Engine, model_dir: Path, data: EvalData, cfg: EvalConfig, top_k: int | None,
             roe: RoEConfig | None = None, mc: bool = True) -> dict:
    """{"ppl", "nll", "tokens", "acc", "preds", "seconds"} at top-k (None = native), cached per setting."""
    tag = f"k{top_k}" + ("" if roe is None else f"-roe{roe.n}-{_roe_key(roe)}") + ("" if mc else "-ppl")
    path = _cache_file(model_dir, tag, cfg)
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    scorer = Scorer(engine.model, top_k, roe)
    out = perplexity(scorer, data.ppl)
    if mc:
        out["preds"] = predictions(data.items, scorer.choice_scores)
        out["acc"] = accuracy(data.items, out["preds"])
    out["seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(out))
    log.info("%s %s: %s", Path(model_dir).name, tag, {k: v for k, v in out.items() if k != "preds"})
    return out


def _roe_key(roe: RoEConfig) -> str:
    return hashlib.sha1(json.dumps([roe.n, roe.tau_per_layer, roe.clean_layers, roe.seed]).encode()).hexdigest()[:8]


@dataclass
class RoEGrid:
    """The documented RoE search: one tau for every noisy layer x the number of clean layers at each end."""

    taus: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.35, 0.5])
    clean_layers: list[int] = field(default_factory=lambda: [1, 4])
    n: int = 4
    seed: int = 0


def tune_roe(engine: Engine, model_dir: Path, top_k: int, grid: RoEGrid, val: EvalData, cfg: EvalConfig) -> dict:
    """Validation perplexity for every grid point; returns {"trials": [...], "best": {...}}."""
    trials = []
    for L in grid.clean_layers:
        for tau in grid.taus:
            roe = RoEConfig(grid.n, tau, L, grid.seed)
            r = evaluate(engine, model_dir, val, cfg, top_k, roe, mc=False)
            trials.append({"tau": tau, "clean_layers": L, "n": grid.n, "val_ppl": r["ppl"]})
    plain = evaluate(engine, model_dir, val, cfg, top_k, None, mc=False)
    best = min(trials, key=lambda t: t["val_ppl"])
    return {"trials": trials, "best": best, "plain_val_ppl": plain["ppl"]}


def decode_ms_per_token(engine: Engine, prompts: list[str], top_k: int | None, roe: RoEConfig | None = None,
                        new_tokens: int = 32, repeats: int = 1) -> dict:
    """Median TPOT (ms) of greedy decoding over the prompts at top-k (RoE when given), and the KV bytes."""
    tpots = []
    for _ in range(repeats):
        for p in prompts:
            r = engine.generate(p, max_new_tokens=new_tokens, eos=False, moe_k=top_k, roe=roe)
            tpots.append(r.stats["tpot_s"] * 1000)
    cfg = engine.cfg
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4  # bytes per cached token (fp32), batch 1
    return {"ms_per_token": median(tpots), "kv_bytes_per_token": kv, "runs": len(tpots)}


def load_fp32(model_dir: Path) -> Engine:
    torch.manual_seed(0)
    return load(model_dir, precision="fp32")
