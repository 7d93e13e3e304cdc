"""Draft-then-verify decoding, lossless by construction: chain drafts (`decode_speculative`) and token trees
(`decode_tree`) share one loop (`speculate`) that prefills, emits tokens and stops on EOS / stop / length."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from leaninfer.cache.kv import KVCache
from leaninfer.generate.context import DecodeContext
from leaninfer.generate.loop import DecodeOut
from leaninfer.generate.proposers.base import Proposer
from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator, next_token
from leaninfer.generate.tree import verify_tree_greedy, verify_tree_sampling, verify_tree_typical
from leaninfer.generate.verify import verify_greedy, verify_sampling
from leaninfer.models.attention import check_exact_block
from leaninfer.models.transformer import Decoder

# step(cache, context, pending, budget, generator) -> (emitted tokens, drafts proposed, drafts accepted)
Step = Callable[[KVCache, list[int], int, int, torch.Generator], tuple[list[int], int, int]]


def speculate(
    model: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None,
    step: Step,
    extra_slots: int,
    prefill_taps: tuple[int, ...] = (),
    on_prefill: Callable | None = None,
    timing: dict[str, float] | None = None,
    ctx: DecodeContext | None = None,
) -> DecodeOut:
    """Prefill, then call `step` until EOS, a stop string or `max_new_tokens`. `context` passed to step is the
    prompt plus every emitted token except the pending one (the first token not yet in the target cache).
    `on_prefill(out, first_token)` receives the prefill's `ForwardOut` (with `prefill_taps` hidden states).
    `ctx` (optional) brings the cache (which may already hold `ctx.cached` prompt tokens) and the routing."""
    check_exact_block(extra_slots)  # extra_slots = the longest block one step verifies
    device = model.embed.weight.device
    gen = make_generator(sampling.seed, device)
    ctx = ctx or DecodeContext(model)
    if ctx.cache is None:
        ctx.cache = model.new_cache(1, len(prompt) + max_new_tokens + extra_slots)
    cache = ctx.cache
    t0 = time.perf_counter()
    out: list[int] = []
    proposed = accepted = 0
    with torch.inference_mode():
        pre = model(torch.tensor([prompt[ctx.cached :]], device=device), cache=cache, last_only=True,
                    taps=prefill_taps, routing=ctx.routing)
        emitted = [int(next_token(pre.logits[0, -1], sampling, gen))]
        if on_prefill is not None:
            on_prefill(pre, emitted[0])
        ttft = time.perf_counter() - t0
        forwards = 1
        while not (reason := _emit(emitted, out, eos_ids, on_token, max_new_tokens)):
            emitted, n_prop, n_acc = step(cache, prompt + out[:-1], out[-1], max_new_tokens - len(out), gen)
            forwards += 1
            proposed += n_prop
            accepted += n_acc
    stats = {"draft_tokens_proposed": proposed, "draft_tokens_accepted": accepted,
             "acceptance_rate": accepted / proposed if proposed else 0.0, **(timing or {})}
    return DecodeOut(out, forwards, ttft, reason, stats)


def decode_speculative(
    model: Decoder,
    proposer: Proposer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    k: int = 4,
    ctx: DecodeContext | None = None,
) -> DecodeOut:
    """Chain drafts: each step feeds [pending, d_1..d_k] to the target, keeps the verified prefix and rolls
    back the rest of the cache. Runs on any cache with `rollback` (static or compressed: `ctx.cache`) and with
    `ctx.routing` (a MoE k)."""
    proposer.begin(prompt)
    ctx = ctx or DecodeContext(model)
    timing = {"draft_s": 0.0, "verify_s": 0.0, "other_s": 0.0}

    def step(cache, context, pending, budget, gen):
        t0 = time.perf_counter()
        draft = proposer.propose(context + [pending], min(k, budget))
        t1 = time.perf_counter()
        d = draft.tokens.to(model.embed.weight.device)
        block = torch.cat([torch.tensor([pending], device=d.device), d])[None]
        logits = model(block, cache=cache, routing=ctx.routing).logits[0]  # (n_draft + 1, V)
        t2 = time.perf_counter()
        if sampling.greedy:
            n, nxt = verify_greedy(logits, d)
        else:
            n, nxt = verify_sampling(logits_to_probs(logits, sampling), d, draft.probs, gen)
        cache.rollback(d.numel() - n)
        emitted = d[:n].tolist() + [nxt]
        proposer.accept(emitted, n)
        timing["draft_s"] += t1 - t0
        timing["verify_s"] += t2 - t1
        timing["other_s"] += time.perf_counter() - t2
        return emitted, d.numel(), n

    return speculate(model, prompt, max_new_tokens, sampling, eos_ids, on_token, step, k + 1, timing=timing, ctx=ctx)


def decode_tree(
    model: Decoder,
    proposer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    depth: int = 4,
    max_nodes: int = 64,
) -> DecodeOut:
    """Tree speculation: each step scores a token tree rooted at the pending token in one target forward
    (tree mask, positions by depth), keeps the verified path in the KV cache and drops the other branches.
    `proposer.propose_tree(context, root, depth) -> TokenTree` with deterministic draft tokens."""
    proposer.begin(prompt)
    timing = {"draft_s": 0.0, "verify_s": 0.0, "other_s": 0.0}

    def step(cache, context, pending, budget, gen):
        t0 = time.perf_counter()
        tree = proposer.propose_tree(context, pending, min(depth, budget))
        t1 = time.perf_counter()
        if tree.size > max_nodes:
            raise ValueError(f"the drafter proposed {tree.size} nodes, more than max_nodes={max_nodes}")
        start = cache.length
        logits = _score_tree(model, cache, tree).logits[0]  # (N, V)
        t2 = time.perf_counter()
        path, emitted = _accept_tree(cache, start, tree, logits, sampling, gen)
        proposer.accept(emitted, len(path))
        timing["draft_s"] += t1 - t0
        timing["verify_s"] += t2 - t1
        timing["other_s"] += time.perf_counter() - t2
        return emitted, tree.size - 1, len(path)

    return speculate(model, prompt, max_new_tokens, sampling, eos_ids, on_token, step, max_nodes, timing=timing)


def decode_feature_tree(
    model: Decoder,
    proposer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    depth: int = 4,
    max_nodes: int = 8,
    typical: tuple[float, float] | None = None,
) -> DecodeOut:
    """Tree speculation for drafters that read the target's hidden states (EAGLE, Medusa, Hydra).

    The proposer declares `taps` (target layer counts whose outputs it reads) and receives them through
    `observe(features (n, len(taps) * dim), next_tokens)` after prefill and after every verification, for the
    root and the accepted nodes. `typical=(eps, delta)` switches greedy verification to Medusa's typical
    acceptance (lossy)."""
    taps = proposer.taps
    proposer.begin(prompt)

    def features(out, rows) -> torch.Tensor:
        return torch.cat([out.taps[n][0, rows] for n in taps], dim=-1)  # (n, len(taps) * dim)

    def on_prefill(out, first):
        proposer.observe(features(out, slice(None)), prompt[1:] + [first])

    timing = {"draft_s": 0.0, "verify_s": 0.0, "other_s": 0.0}  # where the decode steps' time goes

    def step(cache, context, pending, budget, gen):
        t0 = time.perf_counter()
        tree = proposer.propose_tree(min(depth, budget), max_nodes)
        t1 = time.perf_counter()
        start = cache.length
        out = _score_tree(model, cache, tree, taps)
        t2 = time.perf_counter()
        path, emitted = _accept_tree(cache, start, tree, out.logits[0], sampling, gen, typical)
        proposer.observe(features(out, [0] + path), emitted)
        t3 = time.perf_counter()
        timing["draft_s"] += t1 - t0
        timing["verify_s"] += t2 - t1
        timing["other_s"] += t3 - t2
        return emitted, tree.size - 1, len(path)

    return speculate(model, prompt, max_new_tokens, sampling, eos_ids, on_token, step, max_nodes,
                     prefill_taps=taps, on_prefill=on_prefill, timing=timing)


def _score_tree(model: Decoder, cache: KVCache, tree, taps: tuple[int, ...] = ()):
    """One target forward over a token tree rooted at the pending token (positions by depth, tree mask)."""
    device = cache.pos.device
    pos = (int(cache.pos[0, cache.length - 1]) + 1 + tree.depths()).to(device)[None]
    return model(tree.tokens.to(device)[None], positions=pos, cache=cache, block_mask=tree.mask().to(device),
                 taps=taps)


def _accept_tree(cache: KVCache, start: int, tree, logits: torch.Tensor, sampling: SamplingConfig,
                 gen: torch.Generator, typical: tuple[float, float] | None = None) -> tuple[list[int], list[int]]:
    """Verify the tree's (N, V) logits, keep only the root and the accepted path in the cache from `start`;
    returns (accepted node indices, emitted tokens = accepted drafts + the target's next token)."""
    if typical is not None:
        path, nxt = verify_tree_typical(tree, logits, *typical)
    elif sampling.greedy:
        path, nxt = verify_tree_greedy(tree, logits)
    else:
        path, nxt = verify_tree_sampling(tree, logits_to_probs(logits, sampling), gen)
    cache.keep_path(start, torch.tensor([start] + [start + i for i in path]))
    return path, [int(tree.tokens[i]) for i in path] + [nxt]


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
