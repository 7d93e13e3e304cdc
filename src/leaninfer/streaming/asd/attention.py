"""Band-limited self-attention: frame i may attend to frames j with i - P <= j <= i + F.

`None` means unbounded (P = inf or F = inf). Positions enter only through a learned per-head bias on the
clipped relative offset j - i, so the same weights run offline (whole clip, band mask) and in streaming
(a window of cached keys) with identical results.

Look-ahead accounting across layers: if every layer could look F frames ahead, a stack of L layers would
look L*F frames ahead. `layer_reaches` therefore gives the future allowance to one layer only
(`future_layer`, default the first) and keeps the other layers causal, so the model's total look-ahead is
exactly F frames. Each layer keeps its own past allowance P (its cache holds at most P past frames), so the
receptive field into the past is L*P frames while the memory per layer stays bounded by P. With F = None
(unbounded latency) every layer is bidirectional, so P = F = None is the ordinary unconstrained transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Reach = tuple[int | None, int | None]  # (past, future) in frames; None = unbounded


def band_mask(n_q: int, n_k: int, past: int | None, future: int | None, q_offset: int = 0,
              device: torch.device | str | None = None) -> torch.Tensor:
    """(n_q, n_k) bool, True = may attend. Query row r is frame q_offset + r; key column c is frame c."""
    i = torch.arange(n_q, device=device)[:, None] + q_offset
    j = torch.arange(n_k, device=device)[None, :]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if past is not None:
        allowed &= j >= i - past
    if future is not None:
        allowed &= j <= i + future
    return allowed


def layer_reaches(n_layers: int, past: int | None, future: int | None, future_layer: int = 0) -> list[Reach]:
    """Per-layer (past, future) allowances; the future allowance goes to `future_layer` only (see module doc)."""
    if not 0 <= future_layer < n_layers:
        raise ValueError(f"future_layer {future_layer} outside 0..{n_layers - 1}")
    if past is not None and past < 0 or future is not None and future < 0:
        raise ValueError("past and future must be >= 0 or None")
    if future is None:
        return [(past, None)] * n_layers
    return [(past, future if layer == future_layer else 0) for layer in range(n_layers)]


class BandAttention(nn.Module):
    """Multi-head self-attention with a relative-position bias and an optional band mask.

    forward(x (B, T, D), past, future) -> (B, T, D). `attend_window` is the streaming form: one query against
    a window of cached keys/values whose frame positions are given.
    """

    def __init__(self, d_model: int, heads: int, max_rel: int = 64):
        super().__init__()
        if d_model % heads:
            raise ValueError("d_model must be divisible by heads")
        self.heads, self.head_dim, self.max_rel = heads, d_model // heads, max_rel
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_rel + 1))

    def bias(self, offsets: torch.Tensor) -> torch.Tensor:
        """offsets (...,) long = key frame - query frame -> (H, ...) additive bias."""
        return self.rel_bias[:, offsets.clamp(-self.max_rel, self.max_rel) + self.max_rel]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, Dh)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, past: int | None = None, future: int | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.split(x)  # (B, H, T, Dh)
        pos = torch.arange(t, device=x.device)
        bias = self.bias(pos[None, :] - pos[:, None])  # (H, T, T)
        mask = band_mask(t, t, past, future, device=x.device)
        bias = bias.masked_fill(~mask, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def attend_window(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """q (H, Dh) for one frame; k, v (H, W, Dh) cached; offsets (W,) key frame - query frame -> (D,)."""
        scores = torch.einsum("hd,hwd->hw", q, k) / self.head_dim**0.5 + self.bias(offsets)  # (H, W)
        y = torch.einsum("hw,hwd->hd", scores.softmax(dim=-1), v)  # (H, Dh)
        return self.out(y.reshape(-1))


def reference_attention(x: torch.Tensor, attn: BandAttention, past: int | None, future: int | None) -> torch.Tensor:
    """Plain loop-over-queries version of BandAttention.forward (used by tests as the reference)."""
    b, t, d = x.shape
    q, k, v = attn.split(x)
    out = torch.zeros(b, t, d)
    for i in range(t):
        lo = 0 if past is None else max(0, i - past)
        hi = t if future is None else min(t, i + future + 1)
        offsets = torch.arange(lo, hi) - i
        for n in range(b):
            out[n, i] = attn.attend_window(q[n, :, i], k[n, :, lo:hi], v[n, :, lo:hi], offsets)
    return out
