"""The press interface: how a KV eviction method scores cached entries during block-wise prefill.

A press may (1) ask the cache to record attention during the block's own forward (`observe`, SnapKV's
observation window), (2) name a patched prompt that is run after the block only to score (`scoring_prompt`,
KVzip's repeat prompt, EpiCache's medoid windows; its KV is dropped afterwards), and (3) turn what was
recorded into one score per cached entry per head (`score`; higher = keep). `layer_budgets` may redistribute
the total budget over layers (PyramidKV). `headwise=True` selects the top entries over all KV heads of a layer
together (AdaKV-style non-uniform heads) instead of a fixed number per head; every press has it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaninfer.cache.compressed import CompressedKVCache, ScoreSpec

PROMPT_SPEC = ScoreSpec(queries="all", keys="past", reduce="max")


@dataclass
class Press:
    headwise: bool = False
    sinks: int = 0  # the first `sinks` positions are never evicted (the prompt header / attention sinks)

    name = "press"

    def observe(self) -> ScoreSpec | None:
        """Attention to record during the block's forward, or None."""
        return None

    def scoring_prompt(self, block_ids: list[int]) -> list[int] | None:
        """Token ids of a scoring-only prompt run after the block, or None."""
        return None

    def prompt_spec(self) -> ScoreSpec:
        return PROMPT_SPEC

    def score(self, cache: CompressedKVCache, layer: int, attn: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """One score per entry of each head of `layer` (list of (n_h,) tensors). `attn`: recorded attention
        aligned with the entries (None when the press records nothing)."""
        raise NotImplementedError

    def protected(self) -> int:
        """How many leading positions eviction never removes."""
        return self.sinks

    def keep_scores(self, cache: CompressedKVCache, layer: int, attn: list[torch.Tensor] | None
                    ) -> list[torch.Tensor]:
        """`score`, with the first `protected()` positions raised to +inf so that eviction never removes them."""
        scores, n = self.score(cache, layer, attn), self.protected()
        if n <= 0:
            return scores
        return [torch.where(p < n, torch.full_like(s, float("inf")), s)
                for s, p in zip(scores, cache.pos[layer], strict=True)]

    def layer_budgets(self, budgets: list[int], caps: list[int]) -> list[int]:
        """Per-layer budgets from the uniform ones (same total); default: unchanged."""
        return list(budgets)


def require_attn(name: str, attn: list[torch.Tensor] | None) -> list[torch.Tensor]:
    if attn is None:
        raise RuntimeError(f"{name}: no attention was recorded for this layer")
    return attn
