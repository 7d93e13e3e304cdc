"""Block-wise prefill with eviction after every block: the cache never holds more than budget + block entries
per head (plus a press's transient scoring prompt), whatever the history length."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from leaninfer.cache.budget import select_keep
from leaninfer.cache.compressed import CompressedKVCache
from leaninfer.cache.press.base import Press


@dataclass
class PrefillStats:
    tokens: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0  # max bytes held at any time (incl. scoring prompts)
    peak_context_bytes: int = 0  # max bytes of context entries (budget + block), scoring prompts excluded
    peak_tokens: list[int] = field(default_factory=list)  # per layer: max entries of one head (context only)
    trace: list[tuple[int, int, int]] = field(default_factory=list)  # (tokens done, bytes before, after eviction)
    evictions: int = 0


def _over(cache: CompressedKVCache, layer: int, budget: int, headwise: bool) -> bool:
    n = cache.lengths(layer)
    return sum(n) > budget * len(n) if headwise else max(n) > budget


def evict(model, cache: CompressedKVCache, press: Press, budgets: list[int], block_ids: list[int],
          observed: dict[int, list[torch.Tensor]]) -> bool:
    """Score and evict every layer over its budget (per head, or over all heads when press.headwise)."""
    cache.trim_windows()
    layers = [i for i, b in enumerate(budgets) if _over(cache, i, b, press.headwise)]
    if not layers:
        return False
    attn = observed
    prompt = press.scoring_prompt(block_ids)
    if prompt:
        snap = cache.mark()
        cache.scoring, cache.transient = press.prompt_spec(), True
        try:
            model(torch.tensor([prompt], device=cache.device), cache=cache, logits=False)
            attn = cache.take_scores()
        finally:
            cache.scoring, cache.transient = None, False
            cache.restore(snap)
    for layer in layers:
        a = attn.get(layer)
        if a is not None:  # align: a sliding-layer trim after the block removes a prefix of the entries
            a = [x[x.numel() - n :] for x, n in zip(a, cache.lengths(layer))]
        keep = select_keep(press.keep_scores(cache, layer, a), budgets[layer], press.headwise)
        for h, idx in enumerate(keep):
            cache.keep_entries(layer, h, idx)
    return True


def block_prefill(model, ids: list[int], press: Press | None = None, budgets: list[int] | None = None,
                  block: int = 512, cache: CompressedKVCache | None = None, progress: bool = False,
                  ) -> tuple[CompressedKVCache, PrefillStats]:
    """Prefill `ids` in blocks of `block` tokens into `cache` (new if None; positions continue from
    cache.next_position), evicting to `budgets` (tokens per head per layer) after each block.

    press=None or budgets=None keeps everything (the uncompressed reference; sliding layers are still trimmed
    to their window, which is lossless)."""
    if block < 1:
        raise ValueError("block must be >= 1")
    if not ids:
        raise ValueError("nothing to prefill")
    cache = cache or CompressedKVCache.for_model(model)
    if budgets is not None and len(budgets) != cache.n_layers:
        raise ValueError(f"need one budget per layer ({cache.n_layers}), got {len(budgets)}")
    stats = PrefillStats(tokens=len(ids))
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc="prefill", unit="tok", disable=not progress, leave=False)
    with torch.inference_mode():
        for s in range(0, len(ids), block):
            chunk = ids[s : s + block]
            cache.scoring = press.observe() if press is not None and budgets is not None else None
            try:
                model(torch.tensor([chunk], device=cache.device), cache=cache, logits=False)
            finally:
                cache.scoring = None
            observed = cache.take_scores()
            before = cache.nbytes()
            if press is not None and budgets is not None:
                stats.evictions += evict(model, cache, press, budgets, chunk, observed)
            else:
                cache.trim_windows()
            stats.trace.append((s + len(chunk), before, cache.nbytes()))
            bar.update(len(chunk))
    bar.close()
    stats.seconds = time.perf_counter() - t0
    stats.peak_bytes, stats.peak_tokens = cache.peak_bytes, list(cache.peak_tokens)
    stats.peak_context_bytes = cache.peak_context_bytes
    return cache, stats
