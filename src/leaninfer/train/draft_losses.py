"""Losses and teacher-forced acceptance for each draft kind, on padded self-distillation batches.

A batch: tokens (B, L) target ids, feats (B, L, F, d) target hidden states at the stored layers, lens (B,),
plens (B,) prompt lengths. Position t's feature produced token t+1; a draft at depth j (0-based) guesses token
t+2+j. Only guesses of the target's own continuation count (labels at index >= prompt length).

`correct` (B, T, S) marks, per position and depth, whether the draft's top-1 equals the target's token given
the true earlier tokens; its leading run of True is exactly how many tokens greedy chain drafting accepts, so
`chain_tau` computes the offline mean accepted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, L)
    feats: torch.Tensor  # (B, L, F, d) fp32
    lens: torch.Tensor  # (B,)
    plens: torch.Tensor  # (B,)


def collate(examples: list[dict], feature_index: list[int]) -> Batch:
    L = max(len(ex["tokens"]) for ex in examples)
    B, d = len(examples), examples[0]["features"].shape[-1]
    tokens = torch.zeros(B, L, dtype=torch.long)
    feats = torch.zeros(B, L, len(feature_index), d)
    for i, ex in enumerate(examples):
        n = len(ex["tokens"])
        tokens[i, :n] = ex["tokens"]
        feats[i, :n] = ex["features"][:, feature_index].float()
    lens = torch.tensor([len(ex["tokens"]) for ex in examples])
    plens = torch.tensor([int(ex["prompt_len"]) for ex in examples])
    return Batch(tokens, feats, lens, plens)


def _labels(batch: Batch, t2d: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For depth j: draft-vocab labels (B, T) (-1 when outside the draft vocabulary), the mask of positions
    whose label is a continuation token, and the target ids."""
    B, L = batch.tokens.shape
    idx = torch.arange(L - 1) + 2 + depth  # (T,)
    inside = idx[None] < batch.lens[:, None]
    target = batch.tokens.gather(1, idx.clamp(max=L - 1)[None].expand(B, -1))
    valid = inside & (idx[None] >= batch.plens[:, None])
    return t2d[target], valid, target


def _depth_loss(h: torch.Tensor, head, batch: Batch, t2d: torch.Tensor, depth: int):
    """Cross-entropy of depth `depth`; the head runs only where the label is a continuation token.
    h: (B, T, ...) head inputs; head: (N, ...) -> (N, Vd) logits."""
    lab, valid, _ = _labels(batch, t2d, depth)
    logits = head(h[valid])  # (N, Vd)
    lab = lab[valid]
    train = lab >= 0
    loss = F.cross_entropy(logits[train], lab[train]) if bool(train.any()) else logits.sum() * 0.0
    correct = torch.zeros_like(valid)
    correct[valid] = (logits.argmax(-1) == lab) & train
    return loss, correct, valid


def eagle_loss(model, embed, batch: Batch, t2d: torch.Tensor, steps: int, decay: float = 0.8):
    """Training-time test over `steps` depths. embed: ids (B, T) -> (B, T, d) target embeddings."""
    B, L = batch.tokens.shape
    T = L - 1
    with torch.no_grad():
        emb = embed(F.pad(batch.tokens[:, 1:], (0, steps - 1))).float()  # (B, T + steps - 1, d)
    hs = model.ttt(emb, batch.feats[:, :T].flatten(2), steps)
    return _combine([_depth_loss(h, model.logits, batch, t2d, j) for j, h in enumerate(hs)], decay)


def medusa_loss(heads, batch: Batch, t2d: torch.Tensor, decay: float = 0.8):
    T = batch.tokens.shape[1] - 1
    h = heads.base(batch.feats[:, :T, 0])
    return _combine([_depth_loss(h, lambda x, k=k: heads.medusa(x, k), batch, t2d, k)
                     for k in range(heads.cfg.n_heads)], decay)


def hydra_loss(heads, embed, batch: Batch, t2d: torch.Tensor, decay: float = 0.8):
    K, T = heads.cfg.n_heads, batch.tokens.shape[1] - 1
    d = batch.feats.shape[-1]
    with torch.no_grad():
        emb = embed(F.pad(batch.tokens[:, 1:], (0, K))).float()  # emb[:, i] embeds token i + 1
    h = heads.base(batch.feats[:, :T, 0])
    parts = []
    for k in range(K):
        embs = torch.stack([emb[:, i : i + T] for i in range(k + 1)], dim=2)  # tokens t+1..t+1+k
        x = torch.cat([h[..., None, :], embs], dim=2).flatten(2)  # (B, T, (k+2) d): h then the embeddings

        def head(z, k=k):
            z = z.view(-1, k + 2, d)
            return heads.hydra(z[:, 0], z[:, 1:], k)

        parts.append(_depth_loss(x, head, batch, t2d, k))
    return _combine(parts, decay)


def draft_lm_loss(model, teacher, batch: Batch, t2d: torch.Tensor, depths: int):
    """Distillation of a separate draft LM: soft cross-entropy against the target's distribution over the draft
    vocabulary (`teacher`: final target hidden (N, d) -> (N, Vd) logits) at every position that has a next
    token, prompt included. `correct` uses hard labels: the draft reads the true tokens, so while its guesses
    are right its context is exactly the chain-drafting one, and position t+1+j's guess is depth j's."""
    B, L = batch.tokens.shape
    has_next = torch.arange(L)[None] < (batch.lens[:, None] - 1)  # (B, L)
    h = model.hidden(batch.tokens)[has_next]  # (N, d)
    logits = model.logits(h).float()
    with torch.no_grad():
        soft = torch.softmax(teacher(batch.feats[:, :, 0][has_next]).float(), -1)
    loss = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    pred = torch.full((B, L + depths), -2, dtype=torch.long)
    pred[:, :L][has_next] = logits.detach().argmax(-1)
    parts = []
    for j in range(depths):
        lab, valid, _ = _labels(batch, t2d, j)  # label t+2+j, guessed at position t+1+j
        guess = pred[:, 1 + j : L + j]
        parts.append((None, (guess == lab) & (lab >= 0) & valid, valid))
    return loss, torch.stack([p[1] for p in parts], dim=-1), parts[0][2]


def stream_loss(model, teacher, batch: Batch, t2d: torch.Tensor, depths: int, decay: float = 0.8,
                rows: float = 1.0):
    """Future n-gram objective of a speculative-streaming draft (`models/stream_draft.py`) in one forward: stream
    s at position t is trained with cross-entropy to token t + 1 + s of the target's own greedy continuation,
    weighted decay**s. The main stream is the draft LM itself (trained with `draft_lm_loss`, fixed here).
    rows < 1 puts streams on that random fraction of the positions whose stream labels can be continuation
    tokens (cheaper training steps). `correct` depth 0 is the main stream's guess at t + 1, depth j <= S stream
    j's guess at t + 1 (what one streaming forward over the pending token drafts; only positions carrying
    streams can be right); deeper depths are never correct."""
    B, L = batch.tokens.shape
    S = model.n_streams
    ar = torch.arange(L)
    pos = torch.where(ar[None] < batch.lens[:, None], ar[None], -1)  # (B, L)
    idx = _stream_rows(batch, S, rows)  # (R,)
    main, streams = model.run(batch.tokens, pos, rows=idx)  # (B, L, d), (B, R, S, d)
    has_next = ar[None] < (batch.lens[:, None] - 1)
    with torch.no_grad():  # the main stream is the (fixed) draft LM: its distillation loss is reported only
        logits = model.logits(main[has_next]).float()
        soft = torch.softmax(teacher(batch.feats[:, :, 0][has_next]).float(), -1)
        main_loss = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    loss = streams.sum() * 0.0 + main_loss.detach() * 0.0
    preds = [torch.full((B, L + 1), -2, dtype=torch.long)]  # per depth: the guess made at each position
    preds[0][:, :L][has_next] = logits.detach().argmax(-1)
    lab_idx = idx[:, None] + 1 + torch.arange(1, S + 1)  # (R, S) stream s at row r guesses token r + 1 + s
    inside = lab_idx[None] < batch.lens[:, None, None]
    valid = inside & (lab_idx[None] >= batch.plens[:, None, None])  # (B, R, S)
    target = batch.tokens.gather(1, lab_idx.clamp(max=L - 1).flatten()[None].expand(B, -1)).view(B, -1, S)
    labels = t2d[target]
    for s in range(1, S + 1):
        ok = valid[..., s - 1]
        lg = model.logits(streams[:, :, s - 1][ok]).float()  # (N, Vd)
        lab = labels[..., s - 1][ok]
        train = lab >= 0
        if bool(train.any()):
            loss = loss + (decay**s) * F.cross_entropy(lg[train], lab[train])
        pred = torch.full((B, idx.numel()), -2, dtype=torch.long)
        pred[ok] = lg.detach().argmax(-1)
        full = torch.full((B, L + 1), -2, dtype=torch.long)
        full[:, idx] = pred
        preds.append(full)
    cols, first_valid = [], None
    for j in range(depths):
        lab, ok, _ = _labels(batch, t2d, j)  # label t + 2 + j, guessed at position t + 1
        first_valid = ok if first_valid is None else first_valid
        guess = preds[j][:, 1:L] if j <= S else torch.full_like(lab, -2)
        cols.append((guess == lab) & (lab >= 0) & ok)
    return loss, torch.stack(cols, dim=-1), first_valid


def _stream_rows(batch: Batch, n_streams: int, fraction: float) -> torch.Tensor:
    """Positions that carry streams: all (fraction 1), or a random `fraction` of those whose stream labels can
    be continuation tokens (sorted)."""
    L = batch.tokens.shape[1]
    if fraction >= 1.0:
        return torch.arange(L)
    lo = max(0, int(batch.plens.min()) - 1 - n_streams)
    cand = torch.arange(lo, max(lo + 1, L - 2))
    keep = max(1, int(round(fraction * cand.numel())))
    return cand[torch.randperm(cand.numel())[:keep]].sort().values


def _combine(parts, decay: float):
    loss = sum((decay**j) * p[0] for j, p in enumerate(parts))
    correct = torch.stack([p[1] for p in parts], dim=-1)  # (B, T, S)
    valid = parts[0][2]  # positions whose first guess is a continuation token
    return loss, correct, valid


def chain_tau(correct: torch.Tensor, valid: torch.Tensor, gamma: int | None = None) -> float:
    """Offline greedy chain τ: 1 + mean leading run of correct guesses (capped at gamma drafts)."""
    run = correct.long().cumprod(-1).sum(-1)  # (B, T)
    if gamma is not None:
        run = run.clamp(max=gamma)
    return 1.0 + float(run[valid].float().mean()) if bool(valid.any()) else 1.0
