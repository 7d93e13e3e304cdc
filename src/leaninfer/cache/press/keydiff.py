"""KeyDiff (Park et al., arXiv:2504.15364): keep keys that differ most from the mean key direction
(score = -cos(key, mean of the normalised keys)); needs no attention scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from leaninfer.cache.press.base import Press


@dataclass
class KeyDiffPress(Press):
    name = "keydiff"

    def score(self, cache, layer, attn):
        out = []
        for k in cache.k[layer]:
            kn = F.normalize(k.float(), dim=-1)  # (n, D)
            anchor = F.normalize(kn.mean(0), dim=-1)
            out.append(-(kn @ anchor))
        return out
