"""Token log-probabilities for the API's `logprobs` (pure functions over logits; the prompt's in chunks, so a
262k vocabulary never needs the whole (T, V) logits at once)."""

from __future__ import annotations

import torch

LOGPROB_FLOOR = -9999.0  # -inf is sent as this (as vLLM does)

Entry = tuple[float, list[tuple[int, float]]]  # (log p of the token, [(id, log p) of the top n])


def token_logprobs(logits: torch.Tensor, targets: list[int], top_n: int) -> list[Entry]:
    """logits (N, V) -> for each row: log p of targets[i] and the top `top_n` (id, log p), both read from one
    log-softmax tensor (so a greedy token's log p equals the top-1 value exactly)."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    chosen = lp.gather(-1, torch.tensor(targets, device=lp.device)[:, None])[:, 0].clamp_min(LOGPROB_FLOOR)
    out = []
    if top_n > 0:
        vals, ids = lp.topk(top_n, dim=-1)
        vals = vals.clamp_min(LOGPROB_FLOOR)
    for i in range(lp.shape[0]):
        top = list(zip(ids[i].tolist(), vals[i].tolist())) if top_n > 0 else []
        out.append((float(chosen[i]), top))
    return out


def prompt_logprobs(model, hidden: torch.Tensor, ids: list[int], top_n: int, chunk: int = 64) -> list[Entry | None]:
    """hidden (1, T, dim) of the prompt `ids` (before the final norm) -> one entry per prompt token; the first
    is None (nothing predicts it)."""
    out: list[Entry | None] = [None]
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, chunk):
            e = min(s + chunk, len(ids) - 1)
            logits = model.head(hidden[:, s:e])[0]  # (e - s, V) predicts ids[s+1 .. e]
            out += token_logprobs(logits, ids[s + 1 : e + 1], top_n)
    return out
