"""Per-block SPD sensitivity and the paper's three tiers.

Cumulative (as in the SPD paper): drop the sync point of the last block, then of the last two, ...; a block's
sensitivity is the perplexity increase its addition causes. Isolated: each block alone, against no SPD.
Both run on the single-process simulation (`spd.simulate_spd`), which equals the ranks' computation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from leaninfer.parallel.spd import simulate_spd

log = logging.getLogger(__name__)
TIERS = ("insensitive", "sensitive", "extreme")


def sensitivity(model: nn.Module, world: int, score: Callable[[nn.Module], float],
                mode: str = "cumulative") -> dict:
    """{"base", "sensitivity" (per block, score increase), "order" (least sensitive first), "mode"}.
    `score(model)` is a perplexity (lower is better) on calibration text."""
    if mode not in ("cumulative", "isolated"):
        raise ValueError(f"mode must be cumulative|isolated, got {mode!r}")
    L = len(model.layers)
    base = score(model)
    sens = [0.0] * L
    dropped: list[int] = []
    prev = base
    for j in reversed(range(L)):
        drop = dropped + [j] if mode == "cumulative" else [j]
        with simulate_spd(model, world, drop):
            cur = score(model)
        sens[j] = cur - prev if mode == "cumulative" else cur - base
        log.info("SPD sensitivity block %d: %.4f (score %.4f)", j, sens[j], cur)
        if mode == "cumulative":
            dropped, prev = drop, cur
    return {"base": base, "sensitivity": sens, "order": sorted(range(L), key=lambda j: (sens[j], -j)),
            "mode": mode}


def tiers(sens: list[float], base: float, zero_shot: float = 0.002, distill: float = 0.02) -> dict[str, list[int]]:
    """Insensitive (relative increase < zero_shot: SPD zero-shot), sensitive (< distill: SPD after B2B
    distillation), extreme (keep the sync point)."""
    out: dict[str, list[int]] = {t: [] for t in TIERS}
    for j, s in enumerate(sens):
        rel = s / base
        out["insensitive" if rel < zero_shot else "sensitive" if rel < distill else "extreme"].append(j)
    return out
