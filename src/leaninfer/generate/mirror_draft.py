"""The draft side of Mirror-SD: draft windows and branch-complete rollouts with an EAGLE-style feature draft.

The draft reads the target's fused features for verified context (`observe`, as the EAGLE proposer does) and
its own output features for tokens it drafted. Draft KV cache layout during a step:

    [0, ctx)            context pairs (target feature at position t, token t + 1), verified
    [ctx, ctx + g)      window pairs: (draft feature, window token w_i) at position P + i - 1 (P = pending)
    [ctx + g, ...)      rollout slots: step s of branch b at ctx + g + (s - 1) * B + b

A window is the chain the target verifies next: g tokens after the pending token, the features entered with
them (`prevs`) and, in sampling mode, the draft distributions `q` they were drawn from. A branch starts from
window depth j (after w_1..w_j) with an early-exit candidate c in place of w_{j+1} and rolls out a full
g-token window after c. Only token ids cross from the target to this side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator
from leaninfer.models.eagle import EagleDraft


def pick_tokens(logits: torch.Tensor, d2t: torch.Tensor, sampling: SamplingConfig,
                gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Q, Vd) draft-vocabulary logits -> target ids (Q,) (argmax, or sampled with `gen`) and the draft
    distributions q (Q, Vd) when sampling (None when greedy)."""
    if sampling.greedy:
        return d2t[logits.argmax(-1)], None
    q = logits_to_probs(logits, sampling)
    return d2t[torch.multinomial(q, 1, generator=gen)[:, 0]], q


@dataclass
class Window:
    tokens: list[int]  # w_1..w_g, target ids
    prevs: torch.Tensor  # (g, d) draft features entered with each w_i
    q: torch.Tensor | None = None  # (g, Vd) draft distributions (sampling mode), None for greedy


@dataclass
class Branch:
    prefix: tuple[int, ...]  # window tokens before the branch point, then the early-exit candidate
    window: Window  # the g-token rollout after the candidate


def branch_heads(window: list[int], candidates: list[list[int]]) -> list[tuple[int, int]]:
    """(depth j, candidate c) pairs to roll out: row j of `candidates` holds the early-exit ids for the token
    after w_j (w_0 = pending); a candidate equal to the window's own token there, or repeated, is skipped (a
    correction never equals the rejected draft token)."""
    heads: list[tuple[int, int]] = []
    for j, row in enumerate(candidates):
        for c in row:
            if (j < len(window) and c == window[j]) or (j, c) in heads:
                continue
            heads.append((j, c))
    return heads


class MirrorDraft:
    """Drafts windows and branch rollouts for `decode_mirror`. embed: the target's token embedding
    (ids (1, T) -> (1, T, d)); max_len: draft cache slots (context + window + rollouts)."""

    def __init__(self, draft: EagleDraft, embed, max_len: int, sampling: SamplingConfig) -> None:
        self.draft, self.embed, self.max_len, self.sampling = draft, embed, max_len, sampling
        self.taps = tuple(draft.cfg.feature_layers)
        self.d2t = draft.d2t
        self.dtype = draft.norm.weight.dtype
        self.gen = make_generator(None if sampling.seed is None else sampling.seed + 1, draft.d2t.device)

    def begin(self, prompt: list[int]) -> None:
        self.cache = self.draft.new_cache(self.max_len)
        self.ctx = 0  # filled context slots
        self.pos = 0  # position of the next context pair (= the pending token's position once caught up)
        self.queue: list[tuple[torch.Tensor, list[int]]] = []
        self.root: torch.Tensor | None = None  # (1, d) draft feature predicting the token after the pending one
        self.states: torch.Tensor | None = None  # (g + 1, d) h_0..h_g after `refresh`

    def observe(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        """feats (n, n_feat * d): target features of n verified positions; next_tokens: the tokens after them."""
        self.queue.append((feats, list(next_tokens)))

    # --- helpers ---------------------------------------------------------------------------------
    def _emb(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor([ids], device=self.d2t.device)).to(self.dtype)  # (1, T, d)

    def _pick(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Q, d) draft features -> next target ids (Q,) and draft distributions (Q, Vd) when sampling."""
        return pick_tokens(self.draft.logits(h), self.d2t, self.sampling, self.gen)

    def _pending(self) -> tuple[torch.Tensor | None, list[int]]:
        if not self.queue:
            return None, []
        feats = torch.cat([f for f, _ in self.queue]).to(self.dtype)  # (n, n_feat * d)
        toks = [t for _, ts in self.queue for t in ts]
        self.queue = []
        return feats, toks

    # --- drafting --------------------------------------------------------------------------------
    def draft_window(self, g: int) -> Window:
        """Serial drafting (a miss): take in the verified context, then draft a g-token chain."""
        feats, toks = self._pending()
        self.cache.truncate(self.ctx)
        if feats is not None:
            pos = torch.arange(self.pos, self.pos + len(toks), device=feats.device)[None]
            h = self.draft.extend(self._emb(toks), feats[None], pos, self.cache)[0, -1:]  # (1, d)
            self.ctx, self.pos, self.root = self.cache.length, self.pos + len(toks), h
        h, tokens, prevs, qs = self.root, [], [], []
        for i in range(g):
            tok, q = self._pick(h)
            tokens.append(int(tok[0]))
            prevs.append(h)
            qs.append(q)
            if i + 1 < g:
                mask = torch.ones(1, self.cache.length + 1, dtype=torch.bool, device=h.device)
                pos = torch.tensor([[self.pos + i]], device=h.device)
                h = self.draft.step(self._emb(tokens[-1:]), h[None], pos, self.cache, mask)[0]
        self.cache.truncate(self.ctx)
        return Window(tokens, torch.cat(prevs), None if self.sampling.greedy else torch.cat(qs))

    def refresh(self, window: Window) -> None:
        """Take in the verified context (a hit's pending pairs) and the window's pairs in one forward, giving the
        features h_0..h_g the branches start from. Runs while the target computes its prefix."""
        feats, toks = self._pending()
        self.cache.truncate(self.ctx)
        device = window.prevs.device
        n, g = len(toks), len(window.tokens)
        parts = []
        if n:
            parts.append(self.draft.inputs(self._emb(toks), self.draft.fuse(feats[None])))
        parts.append(self.draft.inputs(self._emb(window.tokens), window.prevs[None].to(self.dtype)))
        x = torch.cat(parts, dim=1)  # (1, n + g, d)
        pos = torch.arange(self.pos, self.pos + n + g, device=device)[None]
        L = self.cache.length
        mask = torch.ones(n + g, L + n + g, dtype=torch.bool, device=device)
        mask[:, L:] = torch.ones(n + g, n + g, dtype=torch.bool, device=device).tril()
        h = self.draft.layer(x, pos, self.cache, mask)[0]  # (n + g, d)
        if n:
            self.root = h[n - 1 : n]
        self.ctx, self.pos = self.ctx + n, self.pos + n
        self.states = torch.cat([self.root, h[n:]])  # (g + 1, d)

    def rollouts(self, window: Window, candidates: torch.Tensor) -> list[Branch]:
        """Branch-complete rollouts, all branches batched. candidates: (g + 1, kappa) early-exit ids for the
        window's g + 1 positions (row j: the token after w_j, w_0 = pending). Candidates equal to the window's own
        token are skipped (a correction never equals the rejected draft token)."""
        g = len(window.tokens)
        heads = branch_heads(window.tokens, candidates.tolist())
        if not heads or self.states is None:
            return []
        device, B, base = self.states.device, len(heads), self.ctx + g
        self.cache.truncate(base)
        depth = torch.tensor([j for j, _ in heads], device=device)  # (B,)
        prev = self.states[depth][None]  # (1, B, d)
        toks = [c for _, c in heads]
        out_tok, out_prev, out_q = [], [], []
        own = torch.eye(B, dtype=torch.bool, device=device)
        for s in range(g):
            L = self.cache.length
            mask = torch.zeros(B, L + B, dtype=torch.bool, device=device)
            mask[:, : self.ctx] = True
            mask[:, self.ctx : base] = torch.arange(g, device=device)[None] < depth[:, None]  # w_1..w_j
            for r in range(s + 1):  # own earlier rollout slots and the new one
                mask[:, base + r * B : base + (r + 1) * B] = own
            pos = (self.pos + depth + s)[None]  # (1, B)
            h = self.draft.step(self._emb(toks), prev, pos, self.cache, mask)[0]  # (B, d)
            nxt, q = self._pick(h)
            out_tok.append(nxt)
            out_prev.append(h)
            out_q.append(q)
            toks, prev = nxt.tolist(), h[None]
        self.cache.truncate(self.ctx)
        tok_t = torch.stack(out_tok, 1).tolist()  # (B, g)
        prev_t = torch.stack(out_prev, 1)  # (B, g, d)
        q_t = None if self.sampling.greedy else torch.stack(out_q, 1)  # (B, g, Vd)
        return [Branch(tuple(window.tokens[:j]) + (c,), Window(tok_t[b], prev_t[b], None if q_t is None else q_t[b]))
                for b, (j, c) in enumerate(heads)]
