"""PyramidKV (Cai et al., arXiv:2406.02069): SnapKV scores with budgets that shrink linearly with depth
(lower layers keep more); the total over layers equals the uniform total."""

from __future__ import annotations

from dataclasses import dataclass

from leaninfer.cache.budget import allocate_compressed
from leaninfer.cache.press.snapkv import SnapKVPress


@dataclass
class PyramidKVPress(SnapKVPress):
    beta: float = 20.0

    name = "pyramidkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 1:
            raise ValueError("beta must be > 1")

    def layer_budgets(self, budgets, caps):
        """Over the compressed layers (budget < cap), weights fall linearly with depth from 2 - 1/beta to
        1/beta (mean 1), times each layer's uniform budget; the total is kept and no layer exceeds its cap."""
        idx = [i for i, (b, c) in enumerate(zip(budgets, caps)) if b < c]
        lo = 1.0 / self.beta
        hi = 2.0 - lo
        weights = [0.0] * len(budgets)
        for rank, i in enumerate(idx):
            weights[i] = budgets[i] * (hi - (hi - lo) * rank / max(len(idx) - 1, 1))
        return allocate_compressed(weights, budgets, caps)
