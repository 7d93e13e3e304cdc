"""Medusa and Hydra draft heads on the target's last hidden state, over a reduced draft vocabulary.

Both read h_t, the target's final hidden state at the last verified position (after the target's final norm,
copied here), whose LM head already gave the pending token x_{t+1}. Head k predicts x_{t+1+k}.
- Medusa: head k = shared output matrix (frozen, the target's tied embedding rows of the draft vocabulary)
  applied to a residual SiLU block of h_t; heads are independent of each other's guesses.
- Hydra: head k also reads the embeddings of x_{t+1} and the k-1 tokens drafted before it, so its guess is
  conditioned on the path (sequentially dependent heads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models.attention import RMSNorm


@dataclass
class HeadsConfig:
    kind: str  # "medusa" | "hydra"
    dim: int
    target_vocab: int
    draft_vocab: int
    n_heads: int = 4
    feature_layer: int = 0  # the target layer count whose output is h_t (its last layer)
    norm_eps: float = 1e-6
    norm_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("medusa", "hydra"):
            raise ValueError(f"kind must be 'medusa' or 'hydra', got {self.kind!r}")
        if self.n_heads < 1:
            raise ValueError("n_heads must be >= 1")
        if not 0 < self.draft_vocab <= self.target_vocab:
            raise ValueError(f"draft vocabulary {self.draft_vocab} must be in (0, {self.target_vocab}]")

    def to_dict(self) -> dict:
        return asdict(self)


class DraftHeads(nn.Module):
    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.target_norm = RMSNorm(d, cfg.norm_eps, cfg.norm_offset)  # copy of the target's final norm
        self.head = nn.Linear(d, cfg.draft_vocab, bias=False)  # shared, frozen during training
        self.register_buffer("d2t", torch.arange(cfg.draft_vocab))
        if cfg.kind == "medusa":
            self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.n_heads))
        else:
            self.emb_norm = RMSNorm(d, cfg.norm_eps)
            self.blocks = nn.ModuleList(nn.Linear((k + 2) * d, d) for k in range(cfg.n_heads))
            self.outs = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(cfg.n_heads))
        for b in self.blocks:  # start as "predict what the target would" (the residual path alone)
            nn.init.zeros_(b.weight)
            nn.init.zeros_(b.bias)

    def base(self, feat: torch.Tensor) -> torch.Tensor:
        """Target's final hidden (before its norm) -> normalised h (.., d)."""
        return self.target_norm(feat)

    def medusa(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Head k (0-based, predicts x_{t+2+k}): (.., d) -> (.., Vd) fp32 logits."""
        return self.head(h + F.silu(self.blocks[k](h))).float()

    def hydra(self, h: torch.Tensor, embs: torch.Tensor, k: int) -> torch.Tensor:
        """Head k (0-based): h (.., d) and embeddings of the k+1 tokens after t, (.., k+1, d) -> (.., Vd)."""
        x = torch.cat([h, self.emb_norm(embs).flatten(-2)], dim=-1)
        return self.head(h + self.outs[k](F.silu(self.blocks[k](x)))).float()
