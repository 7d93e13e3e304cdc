"""StreamingLLM (Xiao et al., arXiv:2309.17453): keep the first `n_sink` tokens and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass

from leaninfer.cache.press.base import Press


@dataclass
class StreamingLLMPress(Press):
    n_sink: int = 4

    name = "streaming_llm"

    def __post_init__(self) -> None:
        if self.n_sink < 0:
            raise ValueError("n_sink must be >= 0")

    def protected(self) -> int:
        return max(self.sinks, self.n_sink)  # its own sinks, through the shared sink mechanism

    def score(self, cache, layer, attn):
        return [p.float() for p in cache.pos[layer]]  # recency: later positions score higher
