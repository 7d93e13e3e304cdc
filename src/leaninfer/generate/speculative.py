"""Draft-then-verify decoding over one target forward per step (chain drafts), lossless by construction."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from leaninfer.generate.loop import DecodeOut
from leaninfer.generate.proposers.base import Proposer
from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator, next_token
from leaninfer.generate.verify import verify_greedy, verify_sampling
from leaninfer.models.transformer import Decoder


def decode_speculative(
    model: Decoder,
    proposer: Proposer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    k: int = 4,
) -> DecodeOut:
    """Each step feeds [pending, drafts...] to the target, keeps the verified prefix and rolls back the rest."""
    device = model.embed.weight.device
    gen = make_generator(sampling.seed, device)
    cache = model.new_cache(1, len(prompt) + max_new_tokens + k + 1)
    t0 = time.perf_counter()
    out: list[int] = []
    proposed = accepted_total = 0
    with torch.inference_mode():
        logits = model(torch.tensor([prompt], device=device), cache=cache, last_only=True).logits[0, -1]
        pending = int(next_token(logits, sampling, gen))
        ttft = time.perf_counter() - t0
        forwards, reason = 1, "length"
        proposer.begin(prompt)
        emitted = [pending]
        while True:
            stop = None
            for tok in emitted:
                out.append(tok)
                if tok in eos_ids:
                    stop = "eos"
                elif on_token is not None and on_token(tok):
                    stop = "stop"
                elif len(out) >= max_new_tokens:
                    stop = "length"
                if stop:
                    break
            if stop:
                reason = stop
                break
            budget = min(k, max_new_tokens - len(out))
            draft = proposer.propose(prompt + out, budget)
            d = draft.tokens.to(device)
            block = torch.cat([torch.tensor([pending], device=device), d])[None]
            logits = model(block, cache=cache).logits[0]  # (n_draft + 1, V)
            forwards += 1
            if sampling.greedy:
                n, nxt = verify_greedy(logits, d)
            else:
                n, nxt = verify_sampling(logits_to_probs(logits, sampling), d, draft.probs, gen)
            cache.rollback(d.numel() - n)
            proposed += d.numel()
            accepted_total += n
            emitted = d[:n].tolist() + [nxt]
            proposer.accept(emitted, n)
            pending = nxt
    return DecodeOut(out, forwards, ttft, reason, {"draft_tokens_proposed": proposed, "draft_tokens_accepted": accepted_total,
                    "acceptance_rate": accepted_total / proposed if proposed else 0.0})
