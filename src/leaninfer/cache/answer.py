"""Answering from a (compressed) cache without changing it: greedy decoding and answer log-likelihood.

The question gets the positions that continue the original sequence (cache.next_position), whatever was
evicted; its KV and the answer's are dropped afterwards, so every question sees the same cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from leaninfer.cache.compressed import CompressedKVCache


def greedy_answer(model, cache: CompressedKVCache, query_ids: list[int], max_new_tokens: int,
                  eos_ids: set[int], stop: Callable[[list[int]], bool] | None = None) -> tuple[list[int], float]:
    """Greedy continuation of `query_ids` over `cache`; returns (new ids without EOS, seconds).

    stop(ids) -> True ends generation after the ids so far (e.g. at the end of the first answer line)."""
    if not query_ids or max_new_tokens < 1:
        raise ValueError("need a non-empty query and max_new_tokens >= 1")
    snap, cache.transient = cache.mark(), True
    t0 = time.perf_counter()
    out: list[int] = []
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([query_ids], device=cache.device), cache=cache, last_only=True).logits
            for _ in range(max_new_tokens):
                tok = int(logits[0, -1].argmax())
                if tok in eos_ids:
                    break
                out.append(tok)
                if len(out) == max_new_tokens or (stop is not None and stop(out)):
                    break
                logits = model(torch.tensor([[tok]], device=cache.device), cache=cache, last_only=True).logits
    finally:
        cache.restore(snap)
        cache.transient = False
    return out, time.perf_counter() - t0


def answer_loglik(model, cache: CompressedKVCache, query_ids: list[int], answer_ids: list[int]) -> float:
    """Mean log-probability per token (nats) of `answer_ids` after `query_ids` over `cache`."""
    if not query_ids or not answer_ids:
        raise ValueError("need a non-empty query and answer")
    snap, cache.transient = cache.mark(), True
    try:
        with torch.inference_mode():
            ids = torch.tensor([query_ids + answer_ids], device=cache.device)
            hidden = model(ids, cache=cache, logits=False).hidden
            logits = model.head(hidden[:, len(query_ids) - 1 : -1])  # (1, A, V)
            logp = torch.log_softmax(logits.float(), -1)[0]
            target = torch.tensor(answer_ids, device=logp.device)
            return float(logp.gather(-1, target[:, None]).mean())
    finally:
        cache.restore(snap)
        cache.transient = False
