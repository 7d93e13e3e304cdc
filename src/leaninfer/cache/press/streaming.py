"""StreamingLLM (Xiao et al., arXiv:2309.17453): keep the first `n_sink` tokens and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaninfer.cache.press.base import Press


@dataclass
class StreamingLLMPress(Press):
    n_sink: int = 4

    name = "streaming_llm"

    def __post_init__(self) -> None:
        if self.n_sink < 0:
            raise ValueError("n_sink must be >= 0")

    def score(self, cache, layer, attn):
        out = []
        for p in cache.pos[layer]:
            s = p.float()  # recency: later positions score higher
            out.append(torch.where(p < self.n_sink, torch.full_like(s, float("inf")), s))
        return out
