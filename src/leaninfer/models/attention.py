"""Attention pieces: RMSNorm, RoPE tables, attention masks from positions, GQA attention.

Masks are built from *positions*, not slot order, so one rule covers causal decoding, sliding windows,
left-padded batches, rolled-back caches and custom masks (token trees, mask blocks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models import kernels
from leaninfer.models.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; scales by (offset + weight) (Gemma uses offset 1)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = kernels.rmsnorm(x, self.weight, self.offset, self.eps)  # C++ fast path (inference, fp32, CPU)
        if fused is not None:
            return fused
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (self.offset + self.weight.float())).to(x.dtype)


def rope_table(base: float, head_dim: int, max_len: int, scaling: float = 1.0,
               llama3: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (max_len, head_dim) in fp32 for the rotate-half RoPE convention; `scaling` divides positions
    (linear interpolation), `llama3` rescales the frequencies as Llama 3.x does (`llama3_inv_freq`)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if llama3 is not None:
        inv_freq = llama3_inv_freq(inv_freq, **llama3)
    t = torch.arange(max_len, dtype=torch.float32) / scaling
    freqs = torch.outer(t, inv_freq)  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D)
    return emb.cos(), emb.sin()


def llama3_inv_freq(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_max_position_embeddings: float) -> torch.Tensor:
    """Llama 3.x RoPE scaling: wavelengths longer than original_len / low_freq_factor are stretched by `factor`,
    those shorter than original_len / high_freq_factor are kept, and the band between is interpolated."""
    old_len = original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq  # (D/2,)
    low_wavelen, high_wavelen = old_len / low_freq_factor, old_len / high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D) gathered at each token's position."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def build_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None = None,
    block_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean attention mask (B, 1, T, S), True = attend; None when a single query sees every key
    (the common decode step), which lets attention skip the mask.

    q_pos: (B, T) positions of the new tokens (-1 marks padding).
    k_pos: (B, S) positions of every key slot (-1 marks empty or padded slots); the last T slots are the
        new tokens themselves.
    window: sliding window; a query sees keys with q - k < window.
    block_mask: optional (T, T) or (B, T, T) mask among the new tokens (trees, mask blocks); it replaces the
        causal rule inside the new block. Keys before the block follow the position rule.
    """
    T, S = q_pos.shape[1], k_pos.shape[1]
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]  # (B, T, 1), (B, 1, S)
    mask = (kp >= 0) & (kp <= qp)
    if window is not None:
        mask &= (qp - kp) < window
    if block_mask is not None:
        block = block_mask if block_mask.dim() == 3 else block_mask[None]
        new = (k_pos[:, None, S - T:] >= 0) & block.to(torch.bool)
        if window is not None:
            new &= (qp - k_pos[:, None, S - T:]) < window
        mask = torch.cat([mask[:, :, : S - T], new.expand(mask.shape[0], T, T)], dim=-1)
    # a padded query attends to itself only, so no row is empty (its output is ignored)
    pad = (q_pos < 0)[:, :, None]
    if bool(pad.any()):
        eye = torch.zeros(1, T, S, dtype=torch.bool, device=mask.device)
        eye[0, torch.arange(T), torch.arange(S - T, S)] = True
        mask = torch.where(pad, eye, mask)
    if T == 1 and bool(mask.all()):
        return None
    return mask[:, None]


EXACT_MAX_T = 64
"""Blocks of at most this many new tokens are computed exactly as one-token decoding computes them (attention
here, MoE experts in models/moe.py), at every precision. Longer blocks are prompt prefills, which no decoding
path recomputes token by token; they take the fast fused kernels. Speculation refuses longer verification blocks
(`check_exact_block`)."""


def check_exact_block(n: int, what: str = "a verification block") -> None:
    """Raise when `n` new tokens in one target forward exceed what the exact (row-invariant) path covers."""
    if n > EXACT_MAX_T:
        raise ValueError(f"{what} of {n} tokens is longer than {EXACT_MAX_T}, the longest block the target verifies "
                         "exactly as plain decoding (lossless); use fewer draft tokens or tree nodes")


def row_invariant_attention(q, k, v, mask, scale) -> torch.Tensor:
    """Attention whose result for a query does not depend on how many queries are computed together, nor on
    how many masked keys its row carries.

    q: (B, H, T, D); k, v: (B, Hkv, S, D); mask: (B, 1, T, S) bool or None. Low-precision models need this
    for lossless speculation: a last-bit difference from a shape-dependent kernel can flip a bf16 rounding
    downstream, so verifying a block (or a tree, whose rows carry masked sibling keys) must compute what plain
    decoding computes. Everything runs in float64: the order in which a kernel sums then changes results
    only around 1e-16 relative, far below the float32/bf16 rounding the output gets, so a tree node or a chain
    query computes what plain decoding of its path computes (tests check bit equality).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    qd = q.double().reshape(B, Hkv, G * T, D)  # query heads of one KV group share its keys
    scores = (qd @ k.double().transpose(-1, -2)) * scale  # (B, Hkv, G*T, S)
    if mask is not None:
        m = mask[:, :, None].expand(B, 1, G, T, S).reshape(B, 1, G * T, S)
        scores = scores.masked_fill(~m, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = probs @ v.double()  # (B, Hkv, G*T, D)
    return out.to(q.dtype).view(B, H, T, D)


class Attention(nn.Module):
    """Grouped-query attention with optional QK-norm, QKV bias and a per-layer RoPE base."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        self.q_proj = nn.Linear(cfg.dim, nh * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, nkv * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, nkv * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(nh * hd, cfg.dim, bias=False)
        if cfg.qk_norm == "head":
            self.q_norm = RMSNorm(hd, cfg.norm_eps, cfg.norm_offset)
            self.k_norm = RMSNorm(hd, cfg.norm_eps, cfg.norm_offset)
        elif cfg.qk_norm == "full":
            self.q_norm = RMSNorm(nh * hd, cfg.norm_eps, cfg.norm_offset)
            self.k_norm = RMSNorm(nkv * hd, cfg.norm_eps, cfg.norm_offset)
        self.sliding = cfg.layer_types[layer] == "sliding"
        self.split = [nh * hd, nkv * hd, nkv * hd]
        self.row_invariant = True  # blocks up to EXACT_MAX_T: see row_invariant_attention

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache=None,
        start: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, dim); cos/sin: (B, T, D); mask: (B, 1, T, S). Returns (B, T, dim)."""
        cfg = self.cfg
        B, T, _ = x.shape
        fast = None
        if hasattr(self, "qkv") and cfg.qk_norm in (None, "head"):  # fused projection (quantised models)
            qkv = self.qkv(x)
            norms = (self.q_norm, self.k_norm) if cfg.qk_norm == "head" else (None, None)
            fast = kernels.qk_prep(qkv, cfg.n_heads, cfg.n_kv_heads, *norms, cos, sin)  # C++ norm + RoPE
            if fast is None:
                q, k, v = qkv.split(self.split, dim=-1)
        elif hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(self.split, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if fast is not None:
            q, k, v = (t.transpose(1, 2) for t in fast)  # (B, H, T, D) views of (B, T, H, D)
        else:
            if cfg.qk_norm == "full":
                q, k = self.q_norm(q), self.k_norm(k)
            q = q.view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            v = v.view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
            if cfg.qk_norm == "head":
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if getattr(cache, "varlen", False):  # per-head variable-length cache (cache/compressed.py)
            window = cfg.sliding_window if self.sliding else None
            out = cache.attend(self.layer, q, k, v, window, cfg.scale)  # (B, H, T, D)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim))
        if cache is not None:
            k, v = cache.write(self.layer, start, k, v)  # (B, Hkv, S, D)
        fast = kernels.row_attention(q, k, v, mask, cfg.scale) if self.row_invariant else None
        if fast is not None:  # C++ row-invariant fp32 attention, any block length
            out = fast
        elif self.row_invariant and T <= EXACT_MAX_T:
            out = row_invariant_attention(q, k.to(q.dtype), v.to(q.dtype), mask, cfg.scale)
        else:
            out = F.scaled_dot_product_attention(
                q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=cfg.scale,
                enable_gqa=cfg.n_heads != cfg.n_kv_heads,
            )  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim))
