"""Train an MTP adapter (mask rows + gated LoRA + sampler head) on the target's self-distillation set.

Layout (paper §2.1): a sequence of L tokens carries mask blocks after A anchor positions i, all in one forward:
rows [x_0..x_{L-1}, m_1..m_K (after i_1), ..., m_1..m_K (after i_A)]. Real tokens attend causally to real
tokens only (so their outputs are the base model's), mask j of block a attends to real tokens <= i_a and to
masks <= j of its own block; mask j sits at position i_a + j and predicts token i_a + j + 1.
Losses: base-head CE at mask rows on the future tokens, the sampler head's CE (teacher-forced previous token),
and the latent-consistency loss (mask latent -> stop-gradient latent of the real position predicting the
same token), each over the reduced draft vocabulary.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from leaninfer.models.mtp import MTPAdapter, MTPConfig
from leaninfer.models.transformer import Decoder
from leaninfer.train.vocab import DraftVocab

log = logging.getLogger(__name__)


@dataclass
class MTPTrainConfig:
    n_masks: int = 4
    rank: int = 8
    alpha: float = 16.0
    draft_vocab: int = 16384
    sampler: bool = True
    distill: bool = True  # labels = the target's own top-1 at the twin real row (see mtp_losses)
    gated: bool = True  # False: plain LoRA on every row (the ablation that drifts the base model)
    lcm: float = 1.0  # weight of the latent-consistency loss (0 = off)
    anchors: int = 8  # mask blocks per sequence
    max_len: int = 128  # sequence length cap (the prompt is cut from the left)
    prompt_anchors: int = 32  # anchors may start this many tokens before the continuation (teacher-forced text)
    lr: float = 3e-3
    warmup: int = 20
    minutes: float = 30.0
    max_steps: int | None = None
    eval_every: int = 200
    bf16: bool = False  # bf16 autocast: only on CPUs with native bf16 (emulated it is ~10x slower)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_masks < 1 or self.rank < 1 or self.anchors < 1 or self.lr <= 0 or self.minutes <= 0:
            raise ValueError("n_masks, rank, anchors, lr and minutes must be positive")


@dataclass
class Layout:
    tokens: torch.Tensor  # (T,) ids (0 at mask rows)
    slot: torch.Tensor  # (T,) -1 real token, j in [0, K) for mask j+1
    positions: torch.Tensor  # (T,)
    block: torch.Tensor  # (T, T) bool attention mask among the rows
    mask_rows: torch.Tensor  # (M,) row indices of the masks
    labels: torch.Tensor  # (M,) target ids the masks predict (-1: past the end)
    prev: torch.Tensor  # (M,) id of the token before the label (the sampler's teacher-forced input)
    twin: torch.Tensor  # (M,) real row that predicts the same label (for the LCM loss)


def build_layout(seq: list[int], anchors: list[int], k: int) -> Layout:
    """The one-forward training layout of `seq` with a block of `k` masks after each anchor index."""
    L, A = len(seq), len(anchors)
    T = L + A * k
    tokens = torch.zeros(T, dtype=torch.long)
    tokens[:L] = torch.tensor(seq)
    slot = torch.full((T,), -1, dtype=torch.long)
    positions = torch.arange(T)
    block = torch.zeros(T, T, dtype=torch.bool)
    block[:L, :L] = torch.ones(L, L, dtype=torch.bool).tril()
    anc = torch.tensor(anchors, dtype=torch.long)  # (A,)
    j = torch.arange(k)
    rows = (L + torch.arange(A)[:, None] * k + j[None]).flatten()  # (A*k,)
    slot[rows] = j.repeat(A)
    positions[rows] = (anc[:, None] + 1 + j[None]).flatten()
    for a, i in enumerate(anchors):
        r = L + a * k
        block[r : r + k, : i + 1] = True
        block[r : r + k, r : r + k] = torch.ones(k, k, dtype=torch.bool).tril()
    target = (anc[:, None] + 2 + j[None]).flatten()  # index of the token each mask predicts
    twin = (target - 1).clamp(max=L - 1)  # the real row predicting the same token
    labels = torch.where(target < L, torch.tensor(seq + [0])[target.clamp(max=L)], torch.tensor(-1))
    labels = torch.where(target - 1 < L, labels, torch.tensor(-2))  # -2: no real row predicts it (ignored)
    return Layout(tokens, slot, positions, block, rows, labels, torch.tensor(seq)[twin], twin)


def mtp_losses(model: Decoder, adapter: MTPAdapter, lay: Layout, t2d: torch.Tensor, gated: bool = True,
               lcm: float = 1.0, distill: bool = True) -> dict[str, torch.Tensor]:
    """One forward over the layout; returns {"base", "sampler", "lcm", "total"} and top-1 hits by depth.
    distill: the label of a mask is the base model's own top-1 (over the draft vocabulary) at the real row that
    predicts the same token, i.e. what greedy verification will accept; otherwise the text's next token."""
    device = model.embed.weight.device
    rows = lay.mask_rows.to(device)
    with adapter.attached(model):
        adapter.gate(rows if gated else "all")
        h = adapter.embed(model, lay.tokens[None].to(device), lay.slot[None].to(device))
        out = model(hidden=h, positions=lay.positions[None].to(device), block_mask=lay.block.to(device),
                    logits=False)
    z = adapter.latent(model, out.hidden[0])  # (T, d)
    zm = z[rows]  # (M, d)
    lab = lay.labels.to(device)
    lab_d = torch.where(lab >= 0, t2d.to(device)[lab.clamp_min(0)], torch.tensor(-1, device=device))
    twin = z[lay.twin.to(device)].detach()  # (M, d)
    if distill:
        with torch.no_grad():
            top1 = adapter.draft_logits(model, twin).argmax(-1)
            lab_d = torch.where(lab > -2, top1, torch.tensor(-1, device=device))
    base_logits = adapter.draft_logits(model, zm)  # (M, Vd)
    losses = {"base": F.cross_entropy(base_logits, lab_d, ignore_index=-1)}
    if adapter.sampler is not None:
        s_logits = adapter.sampler_logits(model, lay.prev.to(device), zm)
        losses["sampler"] = F.cross_entropy(s_logits, lab_d, ignore_index=-1)
    else:
        s_logits = base_logits
    valid = (lab_d >= 0).float()
    rel = ((zm - twin) ** 2).mean(-1) / (twin**2).mean(-1).clamp_min(1e-6)
    losses["lcm"] = (rel * valid).sum() / valid.sum().clamp_min(1)
    losses["total"] = losses["base"] + losses.get("sampler", 0.0) + lcm * losses["lcm"]
    k = adapter.cfg.n_masks
    with torch.no_grad():
        hit_b = (base_logits.argmax(-1) == lab_d).float().view(-1, k)
        hit_s = (s_logits.argmax(-1) == lab_d).float().view(-1, k)
        ok = (lab_d >= 0).float().view(-1, k)
    losses["hits"] = torch.stack([hit_b.sum(0), hit_s.sum(0), ok.sum(0)])  # (3, K)
    return losses


def pick_anchors(n: int, prompt_len: int, count: int, back: int, rng: random.Random) -> list[int]:
    lo, hi = max(0, prompt_len - 1 - back), n - 3
    cand = list(range(lo, hi + 1))
    return sorted(rng.sample(cand, min(count, len(cand)))) if cand else []


def crop(ex: dict, max_len: int) -> tuple[list[int], int]:
    toks, p = ex["tokens"], ex["prompt_len"]
    cut = max(0, len(toks) - max_len)
    return toks[cut:], max(1, p - cut)


class MTPTrainer:
    def __init__(self, model: Decoder, train: list[dict], valid: list[dict], cfg: MTPTrainConfig,
                 eos_ids: set[int] = frozenset()) -> None:
        self.model, self.train, self.valid, self.cfg = model.eval().requires_grad_(False), train, valid, cfg
        torch.manual_seed(cfg.seed)
        seqs = [torch.tensor(ex["tokens"][ex["prompt_len"] - cfg.prompt_anchors :]) for ex in train]
        self.vocab = DraftVocab.from_counts(seqs, model.cfg.vocab_size, cfg.draft_vocab, always=eos_ids)
        mcfg = MTPConfig.for_model(model.cfg, n_masks=cfg.n_masks, rank=cfg.rank, alpha=cfg.alpha,
                                   draft_vocab=self.vocab.size, sampler=cfg.sampler)
        self.adapter = MTPAdapter(mcfg, self.vocab.d2t).to(model.embed.weight.device)
        with torch.no_grad():  # mask rows start at the mean token embedding, as scaled by the model
            mean = model.embed_tokens(self.vocab.d2t.to(model.embed.weight.device)).mean(0)
            self.adapter.mask_embed.copy_(mean + 0.1 * mean.std() * torch.randn_like(self.adapter.mask_embed))
        self.opt = torch.optim.AdamW([p for p in self.adapter.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=0.0)
        self.rng = random.Random(cfg.seed)
        self.curve: list[dict] = []

    def _loss(self, ex: dict) -> dict:
        seq, p = crop(ex, self.cfg.max_len)
        anchors = pick_anchors(len(seq), p, self.cfg.anchors, self.cfg.prompt_anchors, self.rng)
        lay = build_layout(seq, anchors, self.cfg.n_masks)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return mtp_losses(self.model, self.adapter, lay, self.vocab.t2d, self.cfg.gated, self.cfg.lcm,
                              self.cfg.distill)

    def evaluate(self) -> dict:
        """Top-1 accuracy of the base head and of the sampler at each mask depth on the validation set."""
        hits = torch.zeros(3, self.cfg.n_masks)
        rng, self.rng = self.rng, random.Random(1234)
        with torch.no_grad():
            for ex in self.valid:
                hits += self._loss(ex)["hits"].cpu()
        self.rng = rng
        n = hits[2].clamp_min(1)
        return {"acc_base": (hits[0] / n).tolist(), "acc_sampler": (hits[1] / n).tolist()}

    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        t0, cpu0 = time.perf_counter(), time.process_time()
        step, order = 0, []
        limit = cfg.max_steps or 10**9
        bar = tqdm(total=None if cfg.max_steps is None else cfg.max_steps, desc="mtp train", disable=not progress)
        ema: dict[str, float] = {}
        while step < limit and time.perf_counter() - t0 < 60 * cfg.minutes:
            if not order:
                order = list(range(len(self.train)))
                self.rng.shuffle(order)
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
            for g in self.opt.param_groups:
                g["lr"] = lr
            losses = self._loss(self.train[order.pop()])
            self.opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), 1.0)
            self.opt.step()
            step += 1
            for key in ("total", "base", "sampler", "lcm"):
                if key in losses:
                    v = float(losses[key].detach())
                    ema[key] = 0.95 * ema.get(key, v) + 0.05 * v
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
            if step % cfg.eval_every == 0:
                self.curve.append({"step": step, "seconds": time.perf_counter() - t0, **ema, **self.evaluate()})
                log.info("mtp step %d: %s", step, self.curve[-1])
        bar.close()
        final = self.evaluate()
        self.curve.append({"step": step, "seconds": time.perf_counter() - t0, **ema, **final})
        return {"steps": step, "train_seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - cpu0, "curve": self.curve, "final": final,
                "config": asdict(cfg), "draft_vocab_coverage": self.vocab.coverage(
                    torch.tensor(ex["tokens"][ex["prompt_len"]:]) for ex in self.valid),
                "lr_schedule": "linear warm-up then constant", "threads": torch.get_num_threads(),
                "tokens_seen_estimate": step * math.ceil(cfg.anchors * cfg.n_masks)}


def text_examples(engine, n: int, max_len: int, seed: int = 1) -> list[dict]:
    """Teacher-forced T0 prompt texts (train split, a different shuffle from the continuation prompts): with
    `distill` labels the masks learn the target's own top-1 on real text too."""
    from leaninfer.train.mtp_data import t0_prompts

    out = []
    for p in t0_prompts("train", n, seed):
        ids = engine.encode(p)[:max_len]
        if len(ids) >= 16:
            out.append({"tokens": ids, "prompt_len": 1})
    return out


def train_mtp(target: str, out_dir, cfg: MTPTrainConfig, data_prompts: int = 256, data_minutes: float = 10.0,
              text_prompts: int = 2000, progress: bool = True) -> dict:
    """The whole recipe behind `leaninfer draft train --kind mtp`: self-distillation continuations by the target
    at its inference precision (cached, resumable, capped at `data_minutes`), teacher-forced T0 text, then
    training on the fp32 target within `cfg.minutes`; saves the adapter (safetensors + manifest) to `out_dir`."""
    import leaninfer
    from leaninfer.models.mtp import save_adapter
    from leaninfer.paths import cache_dir
    from leaninfer.train.mtp_data import build_mtp_data

    cpu0, t0 = time.process_time(), time.perf_counter()
    engine = leaninfer.load(target)
    folder = cache_dir("mtp")
    valid = build_mtp_data(engine, folder / "data-validation.jsonl", "validation", 24, 96)[:24]
    train = build_mtp_data(engine, folder / "data-train.jsonl", "train", data_prompts, 96, minutes=data_minutes)
    text = text_examples(engine, text_prompts, cfg.max_len)
    data_s = time.perf_counter() - t0
    del engine
    model = leaninfer.load(target, precision="fp32")
    trainer = MTPTrainer(model.model, train + text, valid, cfg, model.eos_ids)
    info = trainer.run(progress)
    manifest = {
        "target": {"name": Path(model.source).name, "vocab_size": model.cfg.vocab_size, "dim": model.cfg.dim,
                   "n_layers": model.cfg.n_layers},
        "data": {"continuations": len(train), "continuation_tokens": 96, "teacher_forced_texts": len(text),
                 "validation": len(valid), "source": "../shared/data/t0_prompts (train split; validation for "
                 "evaluation only; no Spec-Bench)", "data_seconds": data_s},
        "budget": {"train_seconds": info["train_seconds"], "train_cpu_seconds": info["cpu_seconds"],
                   "total_cpu_seconds": time.process_time() - cpu0, "wall_seconds": time.perf_counter() - t0,
                   "threads": torch.get_num_threads(), "steps": info["steps"]},
        "final": info["final"], "train_config": asdict(cfg),
    }
    save_adapter(out_dir, trainer.adapter, manifest)
    return {**manifest, "curve": info["curve"], "folder": str(out_dir)}
