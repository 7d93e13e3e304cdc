"""`leaninfer draft train`: train an EAGLE / Medusa / Hydra draft or a separate draft LM on a self-distillation
set, on the CPU, within a time budget, with checkpoints (resumable) and a curve of offline τ against training tokens.

Every draft predicts over a reduced vocabulary (the most frequent tokens of the target's own continuations)
and starts from the target: its output matrix is the target's tied embedding rows for that vocabulary and
its final norm the target's, so a fresh draft already "speaks" the target's output space.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.io.cachefs import atomic_torch_save, safe_torch_load
from leaninfer.io.drafts import save_draft
from leaninfer.models.draft_lm import init_draft_lm
from leaninfer.models.eagle import EagleConfig, EagleDraft
from leaninfer.models.heads import DraftHeads, HeadsConfig
from leaninfer.train.distill import check_distill_set, load_distill_set
from leaninfer.train.draft_losses import (
    Batch,
    chain_tau,
    collate,
    draft_lm_loss,
    eagle_loss,
    hydra_loss,
    medusa_loss,
    stream_loss,
)
from leaninfer.train.vocab import DraftVocab

log = logging.getLogger(__name__)


KINDS = ("eagle", "medusa", "hydra", "draft-lm", "mirror")


@dataclass
class DraftTrainConfig:
    kind: str = "eagle"
    minutes: float = 30.0  # wall-clock budget for the optimisation loop
    max_steps: int | None = None
    batch_tokens: int = 4096
    lr: float = 1e-3
    warmup: int = 30
    ttt_steps: int = 3  # EAGLE training-time-test depth
    n_heads: int = 4  # Medusa / Hydra
    draft_vocab: int = 16384
    feature_layers: tuple[int, ...] = (2, 9, 15)  # EAGLE fuses these target layer outputs
    lm_layers: tuple[int, ...] = (0, 6, 11, 17)  # target layers a draft LM starts from
    n_streams: int = 3  # mirror: speculative streams (one forward drafts 1 + n_streams tokens)
    stream_layers: int = 2  # mirror: top draft layers with multi-stream attention
    init_from: str | None = None  # mirror: a trained draft-lm folder to start from (else the target's layers)
    stream_rows: float = 0.5  # mirror: fraction of positions carrying streams in a training batch
    heldout: int = 24  # examples kept out for the offline τ curve
    eval_every: int = 50
    eval_depth: int = 5
    bf16: bool = True  # bf16 autocast for the matmuls (AVX512-BF16 / AMX CPUs run them ~2.5x faster)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.minutes <= 0 or self.batch_tokens < 64 or self.lr <= 0:
            raise ValueError("minutes, batch_tokens and lr must be positive (batch_tokens >= 64)")
        self.feature_layers = tuple(self.feature_layers)
        self.lm_layers = tuple(self.lm_layers)


def init_draft(kind: str, target, vocab: DraftVocab, cfg: DraftTrainConfig, n_layers: int) -> torch.nn.Module:
    """A draft initialised from the target's output space (see the module docstring)."""
    tc = target.cfg
    if kind == "draft-lm":
        return init_draft_lm(target, vocab.d2t, [i for i in cfg.lm_layers if i < tc.n_layers])
    if kind == "mirror":
        from leaninfer.models.stream_draft import init_stream_draft

        draft = init_stream_draft(_base_lm(target, vocab, cfg), cfg.n_streams, cfg.stream_layers, cfg.seed)
        draft.freeze_base()  # the main stream is the draft LM as given; only the streams train
        return draft
    rows = target.embed.weight.detach()[vocab.d2t].float()  # (Vd, d) tied output rows
    norm_w = target.norm.weight.detach().float() + target.norm.offset
    if kind == "eagle":
        module = EagleDraft(EagleConfig(tc.dim, tc.vocab_size, vocab.size, list(cfg.feature_layers)))
        module.norm.weight.data.copy_(norm_w)
    else:
        module = DraftHeads(HeadsConfig(kind, tc.dim, tc.vocab_size, vocab.size, cfg.n_heads, n_layers,
                                        tc.norm_eps, 0.0))
        module.target_norm.weight.data.copy_(norm_w)
        module.head.weight.requires_grad_(False)  # Medusa/Hydra keep the target's head (frozen)
    module.head.weight.data.copy_(rows)
    module.d2t.copy_(vocab.d2t)
    return module


def _base_lm(target, vocab: DraftVocab, cfg: DraftTrainConfig):
    """The draft LM a streaming draft is built on (its main stream): the trained one in `cfg.init_from` when it
    exists and speaks the same draft vocabulary, else a fresh one made of the target's `lm_layers`."""
    from leaninfer.io.drafts import DraftNotFoundError, load_draft

    if cfg.init_from:
        try:
            kind, lm, _ = load_draft(Path(cfg.init_from))
        except DraftNotFoundError:
            log.warning("no trained draft LM in %s; starting from the target's layers", cfg.init_from)
        else:
            if kind == "draft-lm" and torch.equal(lm.d2t.cpu(), vocab.d2t.cpu()):
                log.info("streaming draft starts from the trained draft LM in %s", cfg.init_from)
                return lm
            log.warning("%s has another draft vocabulary; starting from the target's layers", cfg.init_from)
    log.warning("the streaming draft's main stream is then an untrained draft LM: train --kind draft-lm first")
    return init_draft_lm(target, vocab.d2t, [i for i in cfg.lm_layers if i < target.cfg.n_layers])


def _batches(examples: list[dict], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Length-sorted buckets of examples, at most `batch_tokens` padded tokens each, in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["tokens"]))
    out, cur = [], []
    for i in order:
        L = len(examples[i]["tokens"])
        if cur and (len(cur) + 1) * L > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


class DraftTrainer:
    def __init__(self, target, data_dir: Path, out_dir: Path, cfg: DraftTrainConfig) -> None:
        self.target, self.cfg, self.out_dir = target, cfg, Path(out_dir)
        meta = json.loads((check_distill_set(data_dir) / "config.json").read_text())
        stored = list(meta["feature_layers"])
        layers = list(cfg.feature_layers) if cfg.kind == "eagle" else [target.cfg.n_layers]
        missing = [n for n in layers if n not in stored]
        if missing:
            raise ValueError(f"the distillation set stores layers {stored}; the draft needs {missing} too")
        self.index = [stored.index(n) for n in layers]
        data = load_distill_set(data_dir)
        if len(data) <= cfg.heldout:
            raise ValueError(f"{len(data)} examples are too few for {cfg.heldout} held-out ones")
        random.Random(cfg.seed).shuffle(data)
        self.heldout, self.train = data[: cfg.heldout], data[cfg.heldout :]
        conts = [ex["tokens"][ex["prompt_len"] :] for ex in self.train]
        eos = [t for t in target.cfg.eos_token_ids if t < target.cfg.vocab_size]
        self.vocab = DraftVocab.from_counts(conts, target.cfg.vocab_size, cfg.draft_vocab, always=eos)
        self.coverage = self.vocab.coverage([ex["tokens"][ex["prompt_len"] :] for ex in self.heldout])
        torch.manual_seed(cfg.seed)
        self.module = init_draft(cfg.kind, target, self.vocab, cfg, target.cfg.n_layers)
        self.teacher = None
        if cfg.kind in ("draft-lm", "mirror"):  # the target's own distribution over the draft vocabulary
            rows = target.head_weight().detach()[self.vocab.d2t].float()
            self.teacher = lambda h: torch.nn.functional.linear(target.norm(h.to(rows.dtype)), rows)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.state = {"step": 0, "tokens": 0, "elapsed": 0.0, "planned": None, "epoch": 0, "pos": 0, "curve": []}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.target.embed_tokens(ids)

    def loss(self, batch: Batch, depth: int | None = None):
        """(loss, correct (B, T, S), valid (B, T)); matmuls in bf16 autocast (fp32 master weights)."""
        t2d, cfg = self.vocab.t2d, self.cfg
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if cfg.kind == "eagle":
                return eagle_loss(self.module, self.embed, batch, t2d, depth or cfg.ttt_steps)
            if cfg.kind == "medusa":
                return medusa_loss(self.module, batch, t2d)
            if cfg.kind == "draft-lm":
                return draft_lm_loss(self.module, self.teacher, batch, t2d, depth or cfg.ttt_steps)
            if cfg.kind == "mirror":
                return stream_loss(self.module, self.teacher, batch, t2d, depth or cfg.n_streams + 1,
                                   rows=cfg.stream_rows if self.module.training else 1.0)
            return hydra_loss(self.module, self.embed, batch, t2d)

    def evaluate(self) -> dict:
        """Offline greedy chain τ and per-depth top-1 accuracy on the held-out examples."""
        self.module.eval()
        rows_c, rows_v = [], []
        with torch.no_grad():
            for ex in self.heldout:
                _, c, v = self.loss(collate([ex], self.index), depth=self.cfg.eval_depth)
                rows_c.append(c[v])
                rows_v.append(v[v])
        self.module.train()
        correct = torch.cat(rows_c)  # (N, S)
        acc = correct.float().mean(0).tolist()
        ones = torch.ones(correct.shape[0], dtype=torch.bool)
        taus = {g: chain_tau(correct[None], ones[None], g) for g in range(1, correct.shape[1] + 1)}
        return {"acc_by_depth": acc, "chain_tau": taus}

    def _ckpt(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def resume(self) -> bool:
        if not self._ckpt().exists():
            return False
        ck = safe_torch_load(self._ckpt())
        budget = ("minutes", "max_steps")  # a resumed run may get a different budget
        if {k: v for k, v in ck["config"].items() if k not in budget} != {
                k: v for k, v in asdict(self.cfg).items() if k not in budget}:
            raise ValueError(f"{self._ckpt()} was written with another configuration; delete it to restart")
        self.module.load_state_dict(ck["module"])
        self.opt.load_state_dict(ck["opt"])
        self.state = ck["state"]
        return True

    def save_checkpoint(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"config": asdict(self.cfg), "module": self.module.state_dict(),
                           "opt": self.opt.state_dict(), "state": self.state}, self._ckpt())

    def _lr(self) -> float:
        s, cfg = self.state["step"], self.cfg
        if s < cfg.warmup:
            return cfg.lr * (s + 1) / cfg.warmup
        total = self.state["planned"] or (s + 1)
        frac = min(1.0, (s - cfg.warmup) / max(1, total - cfg.warmup))
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    def run(self, progress: bool = True) -> dict:
        cfg, st = self.cfg, self.state
        budget = cfg.minutes * 60
        bar = tqdm(total=int(budget), initial=int(st["elapsed"]), desc=f"train {cfg.kind}", unit="s",
                   disable=not progress)
        while st["elapsed"] < budget and (cfg.max_steps is None or st["step"] < cfg.max_steps):
            batches = _batches(self.train, cfg.batch_tokens, random.Random(cfg.seed + st["epoch"]))
            if st["pos"] >= len(batches):
                st["epoch"], st["pos"] = st["epoch"] + 1, 0
                continue
            t0 = time.perf_counter()
            batch = collate([self.train[i] for i in batches[st["pos"]]], self.index)
            for g in self.opt.param_groups:
                g["lr"] = self._lr()
            loss, correct, valid = self.loss(batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
            self.opt.step()
            dt = time.perf_counter() - t0
            st["step"], st["pos"], st["elapsed"] = st["step"] + 1, st["pos"] + 1, st["elapsed"] + dt
            st["tokens"] += int(valid.sum())
            if st["planned"] is None and st["step"] == min(10, cfg.max_steps or 10):  # plan the cosine schedule
                st["planned"] = cfg.max_steps or int(budget / (st["elapsed"] / st["step"]))
            bar.update(int(st["elapsed"]) - bar.n)
            acc0 = float(correct[..., 0][valid].float().mean())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc0=f"{acc0:.2f}")
            if st["step"] % cfg.eval_every == 0:
                self._record()
        bar.close()
        self._record()
        return self.finish()

    def _record(self) -> None:
        st = self.state
        if st["curve"] and st["curve"][-1]["step"] == st["step"]:
            return
        ev = self.evaluate()
        st["curve"].append({"step": st["step"], "train_tokens": st["tokens"], "elapsed_s": round(st["elapsed"], 1),
                            **ev})
        log.info("step %d: chain tau %s", st["step"], ev["chain_tau"])
        self.save_checkpoint()

    def finish(self) -> dict:
        info = {"train_config": asdict(self.cfg), "train_examples": len(self.train), "steps": self.state["step"],
                "train_tokens": self.state["tokens"], "train_seconds": round(self.state["elapsed"], 1),
                "draft_vocab_coverage": self.coverage, "curve": self.state["curve"],
                "threads": torch.get_num_threads()}
        cfg = self.module.cfg.to_dict()
        save_draft(self.out_dir, self.cfg.kind, cfg, self.module, info)
        return info
