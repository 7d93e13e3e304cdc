"""Lossless verification of draft tokens (pure functions).

Chain verification: the target scores a block [pending, d_1, ..., d_k] in one forward, giving k + 1
next-token distributions p_0..p_k. Draft d_i is checked against p_{i-1}.
- Greedy: accept while d_i equals argmax p_{i-1}; the next token is argmax p_n at the first mismatch (or
  the bonus after all k are accepted). The output equals plain greedy decoding exactly.
- Sampling (speculative sampling): accept d_i with probability min(1, p(d_i) / q(d_i)); on rejection draw from
  norm(max(0, p - q)); after all k are accepted draw the bonus from p_k. Output tokens are distributed exactly
  as the target's. Deterministic drafters (n-gram lookup) have q = one-hot(d_i).
"""

from __future__ import annotations

import torch


def verify_greedy(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[int, int]:
    """target_logits: (k+1, V); draft: (k,) ids. Returns (accepted count n, next token)."""
    best = target_logits.argmax(-1)  # (k+1,)
    k = draft.numel()
    match = (best[:k] == draft).int()
    n = int(match.cumprod(0).sum()) if k else 0
    return n, int(best[n])


def verify_sampling(
    target_probs: torch.Tensor,
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """target_probs: (k+1, V) after temperature/top-k/top-p; draft: (k,); draft_probs: (k, V) or None for a
    deterministic drafter. Returns (accepted count n, next token)."""
    k = draft.numel()
    for i in range(k):
        p = target_probs[i]
        d = int(draft[i])
        q_d = 1.0 if draft_probs is None else float(draft_probs[i, d])
        u = float(torch.rand((), generator=generator, device=p.device))
        if q_d > 0 and u < min(1.0, float(p[d]) / q_d):
            continue
        if draft_probs is None:
            residual = p.clone()
            residual[d] = 0.0
        else:
            residual = (p - draft_probs[i]).clamp_min(0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else p
        return i, int(torch.multinomial(residual, 1, generator=generator))
    return k, int(torch.multinomial(target_probs[k], 1, generator=generator))
