"""`Decoder`: embeddings, blocks, final norm and head, for every supported family.

It can run any range of layers (early exit) and return the hidden state there, take explicit position
ids and a custom mask over the new tokens (trees, mask blocks), run left-padded batches, and read/write
a preallocated `KVCache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.cache.kv import KVCache
from leaninfer.models import kernels
from leaninfer.models.attention import Attention, RMSNorm, build_mask, rope_table
from leaninfer.models.config import ModelConfig
from leaninfer.models.moe import MoE, Routing, act_fn


class MLP(nn.Module):
    """Gated FFN: down(act(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = act_fn(act)

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        if hasattr(self, "gate_up"):  # fused projection (quantised models)
            g, u = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(self.act(g) * u)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        norm = lambda: RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_offset)  # noqa: E731
        self.input_norm = norm()
        self.attn = Attention(cfg, layer)
        self.ffn_norm = norm()
        self.ffn = MoE(cfg) if cfg.is_moe else MLP(cfg.dim, cfg.intermediate_size, cfg.act)
        self.sandwich = cfg.sandwich_norm
        if cfg.sandwich_norm:
            self.post_attn_norm = norm()
            self.post_ffn_norm = norm()

    def forward(self, x, cos, sin, mask, cache=None, start=0, routing=None) -> torch.Tensor:
        h = self.attn(self.input_norm(x), cos, sin, mask, cache, start)
        x = _add_norm(x, h, self.post_attn_norm) if self.sandwich else x + h
        h = self.ffn(self.ffn_norm(x), routing)
        return _add_norm(x, h, self.post_ffn_norm) if self.sandwich else x + h


def _add_norm(x: torch.Tensor, h: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """x + norm(h), fused into one C++ op on the inference fast path."""
    fused = kernels.rmsnorm(h, norm.weight, norm.offset, norm.eps, residual=x)
    return fused if fused is not None else x + norm(h)


@dataclass
class ForwardOut:
    hidden: torch.Tensor  # (B, T, dim) after the last layer run (before the final norm)
    logits: torch.Tensor | None  # (B, T, V) when the head ran
    taps: dict[int, torch.Tensor] | None = None  # layer count -> (B, T, dim) hidden after that many layers


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_offset)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._rope: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- helpers -------------------------------------------------------------------------------
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: (B, T, dim) -> (B, T, V) logits in fp32."""
        h = self.norm(h)
        out = F.linear(h, self.head_weight()) if self.lm_head is None else self.lm_head(h)
        return out.float()

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        if self.cfg.embed_scale != 1.0:
            h = h * torch.tensor(self.cfg.embed_scale, dtype=h.dtype)
        return h

    def _rope_at(self, base: float, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(positions.max()) + 1 if positions.numel() else 1
        table = self._rope.get(base)
        if table is None or table[0].shape[0] < need or table[0].device != positions.device:
            n = max(need, min(self.cfg.max_seq_len, 4096))
            llama3 = self.cfg.rope_llama3 if base == self.cfg.rope_theta else None  # global base only
            cos, sin = rope_table(base, self.cfg.head_dim, n, self.cfg.rope_scaling_factor, llama3)
            table = self._rope[base] = (cos.to(positions.device), sin.to(positions.device))
        p = positions.clamp_min(0)
        return table[0][p], table[1][p]  # (B, T, D)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        cfg = self.cfg
        dtype = dtype or self.embed.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.float32
        return KVCache(cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype, self.embed.weight.device)

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int | None = None,
        hidden: torch.Tensor | None = None,
        layers: tuple[int, int] | None = None,
        block_mask: torch.Tensor | None = None,
        logits: bool = True,
        last_only: bool = False,
        routing: Routing | list[Routing] | None = None,
        taps: tuple[int, ...] = (),
    ) -> ForwardOut:
        """Run layers [a, b) over new tokens.

        tokens: (B, T) ids (needed when the range starts at layer 0); hidden: (B, T, dim) to resume from an
        early exit. positions: (B, T) position ids (default: continue from the cache); -1 marks padding.
        cache/start: write keys/values at cache slots [start, start+T) (default start = cache.length).
        block_mask: (T, T) or (B, T, T) mask among the new tokens (default causal by position).
        logits: run the final norm + head when the range ends at the last layer; last_only: only for the
        last position. routing: MoE routing options for all layers, or one per layer. taps: layer counts n
        whose hidden states (after n layers) are returned in `.taps` (features for EAGLE-style drafts).
        """
        cfg = self.cfg
        a, b = layers or (0, cfg.n_layers)
        if not 0 <= a < b <= cfg.n_layers:
            raise ValueError(f"layer range {a}..{b} outside 0..{cfg.n_layers}")
        if hidden is None:
            if tokens is None or a != 0:
                raise ValueError("tokens are needed to start at layer 0; pass hidden= to resume at a later layer")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
                raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
            hidden = self.embed_tokens(tokens)
        B, T, _ = hidden.shape
        if getattr(cache, "varlen", False):
            return self._forward_varlen(hidden, positions, cache, a, b, block_mask, logits, last_only, routing, taps)
        if start is None:
            start = cache.length if cache is not None else 0
        if positions is None:
            base = int(cache.pos[0, :start].max()) + 1 if cache is not None and start > 0 else 0
            positions = torch.arange(base, base + T, device=hidden.device).expand(B, T)
        k_pos = cache.reserve(start, positions) if cache is not None else positions
        masks = {}
        for kind in set(cfg.layer_types[a:b]):
            window = cfg.sliding_window if kind == "sliding" else None
            masks[kind] = build_mask(positions, k_pos, window, block_mask)
        ropes, tapped = {}, {}
        for i in range(a, b):
            base = cfg.rope_base(i)
            if base not in ropes:
                ropes[base] = self._rope_at(base, positions, hidden.dtype)
            cos, sin = ropes[base]
            r = routing[i] if isinstance(routing, list) else routing
            hidden = self.layers[i](hidden, cos, sin, masks[cfg.layer_types[i]], cache, start, r)
            if i + 1 in taps:
                tapped[i + 1] = hidden
        out_logits = None
        if logits and b == cfg.n_layers:
            out_logits = self.head(hidden[:, -1:] if last_only else hidden)
        return ForwardOut(hidden=hidden, logits=out_logits, taps=tapped if taps else None)

    def _forward_varlen(self, hidden, positions, cache, a, b, block_mask, logits, last_only, routing, taps):
        """Forward over a per-head variable-length cache (`CompressedKVCache`): the cache builds each head's mask
        from its own entry positions, so the shared masks are not used."""
        if block_mask is not None:
            raise ValueError("block_mask is not supported with a compressed (variable-length) cache")
        B, T, _ = hidden.shape
        if B != 1:
            raise ValueError(f"a compressed cache holds one sequence; got a batch of {B}")
        if positions is None:
            positions = torch.arange(cache.next_position, cache.next_position + T, device=hidden.device)[None]
        cache.begin(positions)
        ropes, tapped = {}, {}
        for i in range(a, b):
            base = self.cfg.rope_base(i)
            if base not in ropes:
                ropes[base] = self._rope_at(base, positions, hidden.dtype)
            cos, sin = ropes[base]
            r = routing[i] if isinstance(routing, list) else routing
            hidden = self.layers[i](hidden, cos, sin, None, cache, 0, r)
            if i + 1 in taps:
                tapped[i + 1] = hidden
        cache.end()
        out_logits = None
        if logits and b == self.cfg.n_layers:
            out_logits = self.head(hidden[:, -1:] if last_only else hidden)
        return ForwardOut(hidden=hidden, logits=out_logits, taps=tapped if taps else None)
