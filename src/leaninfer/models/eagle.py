"""EAGLE-3-style feature-level draft: fuses the target's low/middle/high hidden states, runs one decoder
layer, and predicts over a reduced draft vocabulary (ids mapped to the target's with `d2t`).

Input at position t: the target embedding of token t+1 and a feature for position t, each RMS-normed,
concatenated and projected to `dim`. The feature is the fused target hidden states (context positions) or
the draft's own previous output (positions it drafts itself). Training-time test (`ttt`) unrolls the draft on
its own outputs exactly as drafting does, so step j of training sees what depth j of drafting sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from leaninfer.models.attention import RMSNorm
from leaninfer.models.draft_layer import DraftKV, DraftLayer, DraftLayerConfig, ttt_attention


@dataclass
class EagleConfig:
    dim: int
    target_vocab: int
    draft_vocab: int
    feature_layers: list[int] = field(default_factory=lambda: [2, 9, 15])
    layer: DraftLayerConfig | dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, dict):
            self.layer = DraftLayerConfig(**self.layer)
        if self.layer is None:
            self.layer = DraftLayerConfig(dim=self.dim)
        if self.layer.dim != self.dim:
            raise ValueError(f"layer dim {self.layer.dim} != draft dim {self.dim}")
        if not 0 < self.draft_vocab <= self.target_vocab:
            raise ValueError(f"draft vocabulary {self.draft_vocab} must be in (0, {self.target_vocab}]")
        if not self.feature_layers:
            raise ValueError("feature_layers must name at least one target layer")

    def to_dict(self) -> dict:
        return asdict(self)


class EagleDraft(nn.Module):
    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.fuse = nn.Linear(len(cfg.feature_layers) * d, d, bias=False)
        self.norm_emb = RMSNorm(d, 1e-6)
        self.norm_feat = RMSNorm(d, 1e-6)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.layer = DraftLayer(cfg.layer)
        self.norm = RMSNorm(d, 1e-6)
        self.head = nn.Linear(d, cfg.draft_vocab, bias=False)
        self.register_buffer("d2t", torch.arange(cfg.draft_vocab))

    def inputs(self, emb: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, d) embeddings and features -> (B, T, d) layer input."""
        return self.proj(torch.cat([self.norm_emb(emb), self.norm_feat(feat)], dim=-1))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(.., d) draft hidden -> (.., Vd) logits over the draft vocabulary (fp32)."""
        return self.head(self.norm(h)).float()

    # --- training --------------------------------------------------------------------------------
    def ttt(self, emb: torch.Tensor, feats: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Training-time test. feats: (B, T, n_feat * d) target features at positions 0..T-1; emb:
        (B, T + steps - 1, d) target embeddings of tokens 1..T+steps-1. Returns `steps` hidden states
        (B, T, d); `logits` of step j at index t predict token t + 2 + j."""
        B, T = feats.shape[:2]
        rep = self.cfg.layer.n_heads // self.cfg.layer.n_kv_heads
        pos = torch.arange(T, device=feats.device).expand(B, T)
        x = self.inputs(emb[:, :T], self.fuse(feats))
        q, k0, v0 = self.layer.qkv(x, pos)
        h = self.layer.finish(x, ttt_attention(q, k0, v0, [], [], rep))
        outs, ks, vs = [h], [], []
        for j in range(1, steps):
            x = self.inputs(emb[:, j : j + T], h)
            q, k, v = self.layer.qkv(x, pos + j)
            ks.append(k)
            vs.append(v)
            h = self.layer.finish(x, ttt_attention(q, k0, v0, ks, vs, rep))
            outs.append(h)
        return outs

    # --- drafting --------------------------------------------------------------------------------
    def new_cache(self, max_len: int) -> DraftKV:
        return DraftKV(self.cfg.layer, max_len, self.norm.weight.device, self.norm.weight.dtype)

    def extend(self, emb: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor, cache: DraftKV) -> torch.Tensor:
        """Context step: tokens whose target features are known. emb (1, T, d), feats (1, T, n_feat * d),
        positions (1, T). Attends to every cached key and causally within the block; returns (1, T, d)."""
        T, L = emb.shape[1], cache.length
        mask = torch.ones(T, L + T, dtype=torch.bool, device=emb.device)
        mask[:, L:] = torch.ones(T, T, dtype=torch.bool, device=emb.device).tril()
        x = self.inputs(emb, self.fuse(feats.to(emb.dtype)))
        return self.layer(x, positions, cache, mask)

    def step(self, emb: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, cache: DraftKV,
             mask: torch.Tensor) -> torch.Tensor:
        """Drafting step on the draft's own features. emb/prev (1, Q, d), positions (1, Q), mask (Q, L + Q)."""
        return self.layer(self.inputs(emb, prev), positions, cache, mask)
