"""One pre-norm decoder layer for feature-level drafts (EAGLE-style), with its own small KV cache.

Unlike the target's `Attention`, the draft layer takes an explicit boolean mask over all keys, because draft
trees and training-time test need masks that positions alone do not describe. Two forms compute the same
function: `forward` (explicit keys + mask: inference, trees) and `ttt_attention` (training-time test, where
step j's query at index t sees the step-0 keys at indices <= t and its own earlier steps' keys at index t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models.attention import RMSNorm, apply_rope, rope_table


@dataclass
class DraftLayerConfig:
    dim: int
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 128
    hidden: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")


class DraftKV:
    """Keys/values of one draft layer: (1, H_kv, S, D) buffers; slots [0, length) are filled."""

    def __init__(self, cfg: DraftLayerConfig, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (1, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (1, H_kv, T, D) after the filled slots; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"draft cache overflow: {end} slots needed, {self.k.shape[2]} allocated")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate the draft cache to {n} of {self.length} slots")
        self.length = n


class DraftLayer(nn.Module):
    def __init__(self, cfg: DraftLayerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, hk, hd = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.q = nn.Linear(d, h * hd, bias=False)
        self.k = nn.Linear(d, hk * hd, bias=False)
        self.v = nn.Linear(d, hk * hd, bias=False)
        self.o = nn.Linear(h * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.gate = nn.Linear(d, cfg.hidden, bias=False)
        self.up = nn.Linear(d, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, d, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (B, T, D) at `positions` (B, T)."""
        need = int(positions.max()) + 1
        if self._rope is None or self._rope[0].shape[0] < need or self._rope[0].device != positions.device:
            cos, sin = rope_table(self.cfg.rope_base, self.cfg.head_dim, max(need, 4096))
            self._rope = (cos.to(positions.device), sin.to(positions.device))
        return self._rope[0][positions], self._rope[1][positions]

    def qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """x (B, T, d) -> q (B, H, T, D), k, v (B, H_kv, T, D), RoPE applied."""
        B, T, _ = x.shape
        c = self.cfg
        h = self.attn_norm(x)
        q = self.q(h).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rope(positions)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection + residual + MLP block. attn: (B, H, T, D)."""
        B, _, T, _ = attn.shape
        x = x + self.o(attn.transpose(1, 2).reshape(B, T, -1))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: DraftKV, mask: torch.Tensor) -> torch.Tensor:
        """Append the new tokens' keys to `cache` and attend with `mask` (T, cache.length + T) over all keys."""
        q, k, v = self.qkv(x, positions)
        keys, values = cache.append(k, v)
        rep = self.cfg.n_heads // self.cfg.n_kv_heads
        keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
        attn = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
        return self.finish(x, attn)


def ttt_attention(q: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor, ks: list[torch.Tensor],
                  vs: list[torch.Tensor], n_rep: int) -> torch.Tensor:
    """Training-time-test attention. q: (B, H, T, D) for step j = len(ks) - 1; k0/v0: (B, H_kv, T, D) step-0
    keys (causal); ks/vs: keys of steps 1..j at the same index (diagonal). Returns (B, H, T, D)."""
    T = q.shape[2]
    k0, v0 = k0.repeat_interleave(n_rep, 1), v0.repeat_interleave(n_rep, 1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    s0 = (q @ k0.transpose(-1, -2)) * scale  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s0 = s0.masked_fill(~causal, float("-inf"))
    diag = [(q * k.repeat_interleave(n_rep, 1)).sum(-1, keepdim=True) * scale for k in ks]  # (B, H, T, 1) each
    w = torch.softmax(torch.cat([s0, *diag], dim=-1), dim=-1)
    out = w[..., :T] @ v0
    for i, v in enumerate(vs):
        out = out + w[..., T + i : T + i + 1] * v.repeat_interleave(n_rep, 1)
    return out
