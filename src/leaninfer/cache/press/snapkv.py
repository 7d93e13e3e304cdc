"""SnapKV (Li et al., arXiv:2404.14469): the attention that the last `window` queries of each block pay to the
cached keys, averaged over those queries and the KV group, smoothed by 1-D average pooling; the observation
window itself is always kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaninfer.cache.compressed import ScoreSpec
from leaninfer.cache.press.base import Press, require_attn


@dataclass
class SnapKVPress(Press):
    window: int = 64
    kernel: int = 5

    name = "snapkv"

    def __post_init__(self) -> None:
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("window must be >= 1 and kernel a positive odd number")

    def observe(self) -> ScoreSpec:
        return ScoreSpec(queries="last", keys="all", reduce="mean", window=self.window)

    def score(self, cache, layer, attn):
        out = []
        for p, a in zip(cache.pos[layer], require_attn(self.name, attn)):
            s = F.avg_pool1d(a[None, None].float(), self.kernel, stride=1, padding=self.kernel // 2)[0, 0]
            recent = p >= cache.next_position - self.window
            out.append(torch.where(recent, torch.full_like(s, float("inf")), s))
        return out
