"""The draft side of Mirror-SD with a speculative-streaming draft (`models/stream_draft.py`): every window and
every branch rollout comes out of ONE draft forward (the main stream gives the first token, streams 1..S the
next ones), so rollout cost does not grow with the window length g <= 1 + S.

Same interface as the EAGLE-path `MirrorDraft` (`begin`, `observe`, `draft_window`, `refresh`, `rollouts`), but
the draft reads tokens only (no target features: `taps` is empty). Its KV cache holds the main-stream keys of
the verified sequence up to and including the pending token; window and rollout tokens are scored in one
block on top of it and dropped again:

    block = [w_1..w_g | c_1..c_B | streams of c_1..c_B]

w_i (position P + i, P = pending) sees the context and w_1..w_{i-1}; branch candidate c_b at depth j (position
P + j + 1) sees the context, w_1..w_j and itself; its S streams see what c_b sees and the earlier streams of c_b.
The branch's window is (main(c_b), stream_1(c_b), ..., stream_{g-1}(c_b)); in sampling mode each token is drawn
from its stream's distribution, which is recorded as q for exact verification.
"""

from __future__ import annotations

import torch

from leaninfer.generate.mirror_draft import Branch, Window, branch_heads, pick_tokens
from leaninfer.generate.sampling import SamplingConfig, make_generator
from leaninfer.models.stream_draft import StreamDraft


def rollout_block(g: int, depths: list[int], pending_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (g + B,) and mask (g + B, g + B) of [w_1..w_g, c_1..c_B] for candidates at `depths`."""
    B = len(depths)
    pos = torch.tensor([pending_pos + 1 + i for i in range(g)] + [pending_pos + 1 + j for j in depths])
    mask = torch.zeros(g + B, g + B, dtype=torch.bool)
    mask[:g, :g] = torch.ones(g, g, dtype=torch.bool).tril()
    d = torch.tensor(depths, dtype=torch.long)
    mask[g:, :g] = torch.arange(g)[None] < d[:, None]  # w_1..w_j
    mask[g:, g:] = torch.eye(B, dtype=torch.bool)
    return pos, mask


class StreamMirrorDraft:
    """Drafts windows and branch rollouts for `decode_mirror` with a `StreamDraft`. max_len: draft cache slots
    (context + one rollout block)."""

    taps: tuple[int, ...] = ()

    def __init__(self, draft: StreamDraft, max_len: int, sampling: SamplingConfig) -> None:
        self.draft, self.max_len, self.sampling = draft, max_len, sampling
        self.d2t = draft.d2t
        self.device = self.d2t.device
        self.gen = make_generator(None if sampling.seed is None else sampling.seed + 1, self.device)

    def begin(self, prompt: list[int]) -> None:
        self.cache = self.draft.new_cache(1, self.max_len)
        self.seq = list(prompt[:1])  # the known sequence; its last token is the pending one
        self.fed = 0  # tokens of seq whose keys are in the cache

    def observe(self, feats, next_tokens: list[int]) -> None:
        """next_tokens follow the tokens seen so far (features are not used)."""
        self.seq.extend(int(t) for t in next_tokens)

    def _pick(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Q, d) stream hidden states -> target ids (Q,) and draft distributions (Q, Vd) when sampling."""
        return pick_tokens(self.draft.logits(h), self.d2t, self.sampling, self.gen)

    def _feed(self, streams: bool, n_streams: int = 0):
        new = torch.tensor([self.seq[self.fed :]], device=self.device)
        rows = torch.tensor([new.shape[1] - 1] if streams else [], dtype=torch.long, device=self.device)
        out = self.draft.run(new, cache=self.cache, rows=rows, n_streams=n_streams)
        self.fed = len(self.seq)
        return out

    def draft_window(self, g: int) -> Window:
        """A miss: take in the verified tokens and draft a g-token window in one forward."""
        main, streams = self._feed(streams=True, n_streams=g - 1)
        h = torch.cat([main[0, -1:], streams[0, 0]])  # (g, d)
        tokens, q = self._pick(h)
        return Window(tokens.tolist(), h, q)

    def refresh(self, window: Window) -> None:
        """Take in the newly verified tokens (after a hit) while the target computes its prefix."""
        if self.fed < len(self.seq):
            self._feed(streams=False)

    def rollouts(self, window: Window, candidates: torch.Tensor) -> list[Branch]:
        """All branch-complete rollouts in one draft forward. candidates: (g + 1, kappa) early-exit ids."""
        g = len(window.tokens)
        heads = branch_heads(window.tokens, candidates.tolist())
        if not heads:
            return []
        if self.fed < len(self.seq):
            self._feed(streams=False)
        B, start = len(heads), self.cache.length
        pos, block = rollout_block(g, [j for j, _ in heads], len(self.seq) - 1)
        tokens = torch.tensor([window.tokens + [c for _, c in heads]], device=self.device)
        main, streams = self.draft.run(tokens, pos.to(self.device)[None], self.cache, block.to(self.device),
                                       torch.arange(g, g + B, device=self.device), n_streams=g - 1)
        self.cache.rollback(self.cache.length - start)
        h = torch.cat([main[0, g:, None], streams[0]], dim=1)  # (B, g, d): main + the first g - 1 streams
        toks, q = self._pick(h.flatten(0, 1))
        toks = toks.view(B, g).tolist()
        q = None if q is None else q.view(B, g, -1)
        return [Branch(tuple(window.tokens[:j]) + (c,), Window(toks[b], h[b], None if q is None else q[b]))
                for b, (j, c) in enumerate(heads)]
