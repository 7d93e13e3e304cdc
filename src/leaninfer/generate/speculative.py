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
            stop = _emit(emitted, out, eos_ids, on_token, max_new_tokens)
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


def decode_tree(
    model: Decoder,
    proposer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    depth: int = 4,
) -> DecodeOut:
    """Tree speculation: each step scores a token tree rooted at the pending token in one target forward
    (tree mask, positions by depth), keeps the verified path in the KV cache and drops the other branches.
    `proposer.propose_tree(context, root, depth) -> TokenTree` with deterministic draft tokens."""
    from leaninfer.generate.tree import verify_tree_greedy, verify_tree_sampling

    device = model.embed.weight.device
    gen = make_generator(sampling.seed, device)
    cache = model.new_cache(1, len(prompt) + max_new_tokens + 64 * depth)
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
            stop = _emit(emitted, out, eos_ids, on_token, max_new_tokens)
            if stop:
                reason = stop
                break
            tree = proposer.propose_tree(prompt + out[:-1], pending, min(depth, max_new_tokens - len(out)))
            start = cache.length
            base = int(cache.pos[0, start - 1]) + 1
            pos = (base + tree.depths()).to(device)[None]
            logits = model(tree.tokens.to(device)[None], positions=pos, cache=cache,
                           block_mask=tree.mask().to(device)).logits[0]  # (N, V)
            forwards += 1
            if sampling.greedy:
                path, nxt = verify_tree_greedy(tree, logits)
            else:
                path, nxt = verify_tree_sampling(tree, logits_to_probs(logits, sampling), gen)
            cache.keep(start, torch.tensor([start] + [start + i for i in path]))
            proposed += tree.size - 1
            accepted_total += len(path)
            emitted = [int(tree.tokens[i]) for i in path] + [nxt]
            proposer.accept(emitted, len(path))
            pending = nxt
    return DecodeOut(out, forwards, ttft, reason, {"draft_tokens_proposed": proposed,
                                                   "draft_tokens_accepted": accepted_total})


def _emit(emitted, out, eos_ids, on_token, max_new_tokens) -> str | None:
    """Append emitted tokens to `out`, stopping at EOS, a stop string or the length limit."""
    for tok in emitted:
        out.append(tok)
        if tok in eos_ids:
            return "eos"
        if on_token is not None and on_token(tok):
            return "stop"
        if len(out) >= max_new_tokens:
            return "length"
    return None
