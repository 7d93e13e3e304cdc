"""KV budgets: what "full KV" holds per layer, uniform budgets at a compression ratio, and allocation of a total
budget over layers by weight with per-layer floors and caps (pure functions).

Budgets are in tokens per KV head per layer. A sliding-window layer never needs more than `window - 1` past
tokens (older keys are invisible to every future query), so its full size is min(history, window - 1); a
global layer's full size is the history length. Compression ratio r means every method holds
sum_l full_l / r entries in total.
"""

from __future__ import annotations

import math

import torch


def full_lengths(layer_types: list[str], window: int | None, history: int) -> list[int]:
    """Entries per head that an uncompressed cache must keep after `history` tokens, per layer."""
    if history < 0:
        raise ValueError("history must be >= 0")
    return [min(history, window - 1) if t == "sliding" and window else history for t in layer_types]


def uniform_budgets(layer_types: list[str], window: int | None, history: int, ratio: float,
                    compress_sliding: bool = False) -> list[int]:
    """Global layers keep 1/ratio of the history (at least 1 token). Sliding-window layers keep their whole
    window (a constant that does not grow with the conversation) unless `compress_sliding`, then 1/ratio of it."""
    if ratio < 1:
        raise ValueError(f"compression ratio must be >= 1, got {ratio}")
    full = full_lengths(layer_types, window, history)
    return [n if t == "sliding" and window and not compress_sliding else max(1, math.ceil(n / ratio))
            for n, t in zip(full, layer_types)]


def allocate_compressed(weights: list[float], budgets: list[int], caps: list[int],
                        floors: list[int] | None = None) -> list[int]:
    """Re-split the total budget of the compressed layers (budget < cap) by `weights`; the others keep theirs."""
    idx = [i for i, (b, c) in enumerate(zip(budgets, caps)) if b < c]
    out = list(budgets)
    if not idx:
        return out
    got = allocate([weights[i] for i in idx], sum(budgets[i] for i in idx), [caps[i] for i in idx],
                   None if floors is None else [floors[i] for i in idx])
    for i, b in zip(idx, got):
        out[i] = b
    return out


def allocate(weights: list[float], total: int, caps: list[int], floors: list[int] | None = None) -> list[int]:
    """Split `total` over layers proportionally to `weights`, each between its floor and cap (water-filling);
    integers that sum exactly to min(total, sum(caps)) (largest remainders)."""
    n = len(weights)
    if len(caps) != n or any(w < 0 for w in weights):
        raise ValueError("need one non-negative weight and one cap per layer")
    floors = [min(f, c) for f, c in zip(floors or [0] * n, caps)]
    total = min(total, sum(caps))
    if sum(floors) > total:
        raise ValueError(f"floors ({sum(floors)}) exceed the total budget ({total})")
    alloc = [float(f) for f in floors]
    free = [i for i in range(n) if alloc[i] < caps[i]]
    left = total - sum(alloc)
    while left > 1e-9 and free:
        w = [weights[i] if sum(weights[j] for j in free) > 0 else 1.0 for i in free]
        share = {i: left * wi / sum(w) for i, wi in zip(free, w)}
        capped = [i for i in free if alloc[i] + share[i] >= caps[i]]
        if not capped:
            for i in free:
                alloc[i] += share[i]
            break
        for i in capped:
            left -= caps[i] - alloc[i]
            alloc[i] = float(caps[i])
        free = [i for i in free if i not in capped]
    out = [int(math.floor(a)) for a in alloc]
    order = sorted(range(n), key=lambda i: alloc[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def select_keep(scores: list[torch.Tensor], budget: int, headwise: bool = False) -> list[torch.Tensor]:
    """Indices to keep per head: the top-`budget` entries of each head, or (headwise=True, AdaKV-style
    non-uniform) the top `budget * H` entries over all heads of the layer. Higher score = keep."""
    if budget < 0:
        raise ValueError("budget must be >= 0")
    if not headwise:
        return [s.topk(min(budget, s.numel())).indices.sort().values for s in scores]
    flat = torch.cat([s.float() for s in scores])
    top = flat.topk(min(budget * len(scores), flat.numel())).indices
    bounds = torch.tensor([0] + [s.numel() for s in scores]).cumsum(0)
    return [top[(top >= bounds[h]) & (top < bounds[h + 1])].sort().values - bounds[h] for h in range(len(scores))]
