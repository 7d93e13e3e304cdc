"""Speculative-streaming draft (Bhendawade et al. 2024, arXiv 2402.11131): a draft LM whose top layers carry
multi-stream attention, so one forward emits several tokens.

The main stream is a `DraftLM` (a few target layers, reduced vocabulary), run unchanged. At a position t chosen to
carry streams, S *stream* tokens enter the top `stream_layers` layers: stream s starts from the main stream's
hidden state at t (after the lower layers) plus a learned stream embedding P_s, sits at position pos(t) + s, and
attends to the main-stream keys that the token at t sees (its context) and to streams 1..s of the same position,
never to a later stream, another position's streams or a future token. The main stream never sees a stream.
The head reads every stream: the main stream at t predicts token t + 1, stream s predicts token t + 1 + s, so
one forward over a context emits 1 + S tokens.

Streams run through their own copies of the top layers (the paper's "lossless mode"): queries, keys and values
of stream tokens come from the stream layers, the main-stream keys they read come from the draft LM's own layers,
so the main stream stays exactly the trained draft LM while the streams are trained with the future n-gram
objective (`train/draft_losses.py:stream_loss`). Stream keys never enter a KV cache.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from leaninfer.models.draft_lm import DraftLM, DraftLMConfig
from leaninfer.models.transformer import Block, ForwardOut


@dataclass
class StreamDraftConfig:
    lm: DraftLMConfig | dict
    n_streams: int = 3
    stream_layers: int = 2  # top layers with multi-stream attention

    def __post_init__(self) -> None:
        if isinstance(self.lm, dict):
            self.lm = DraftLMConfig(**self.lm)
        if self.n_streams < 1:
            raise ValueError(f"n_streams must be >= 1, got {self.n_streams}")
        if not 1 <= self.stream_layers <= self.lm.body.n_layers:
            raise ValueError(f"stream_layers must be in [1, {self.lm.body.n_layers}], got {self.stream_layers}")

    def to_dict(self) -> dict:
        return asdict(self)


def causal_block(positions: torch.Tensor) -> torch.Tensor:
    """(B, N) positions (-1 = padding) -> (B, N, N) causal mask by position among N new tokens."""
    p = positions
    return (p[:, None, :] <= p[:, :, None]) & (p[:, None, :] >= 0)


def stream_mask(key_pos: torch.Tensor, start: int, block: torch.Tensor, positions: torch.Tensor,
                rows: torch.Tensor, n_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention mask of the streams of `rows` (row-major: stream s of row r at r * S + s - 1)
    over [main keys | stream keys]. Pure function.

    key_pos: (B, n) positions of the main keys (cache slots; the last N are the new tokens, from slot `start`);
    block: (B, N, N) mask among the N new tokens; positions: (B, N); rows: (R,) indices into N.
    Returns stream positions (B, R*S) (positions[r] + s, -1 where the row is padding) and the mask
    (B, R*S, n + R*S): stream (r, s) sees the cached keys at positions <= positions[r], the new tokens row r
    sees, and streams (r, 1..s)."""
    B, N = positions.shape
    R, S = rows.numel(), n_streams
    base = positions[:, rows]  # (B, R)
    off = torch.arange(1, S + 1, device=positions.device)
    spos = torch.where(base[..., None] >= 0, base[..., None] + off, -1).reshape(B, R * S)
    ctx = (key_pos[:, None, :start] >= 0) & (key_pos[:, None, :start] <= base[..., None])  # (B, R, start)
    vis = torch.cat([ctx, block[:, rows]], dim=-1).repeat_interleave(S, dim=1)  # (B, R*S, n)
    own = torch.block_diag(*[torch.ones(S, S, dtype=torch.bool, device=positions.device).tril()] * R)
    return spos, torch.cat([vis, own[None].expand(B, -1, -1)], dim=-1)


class _MainKeys:
    """Stands in for a KV cache inside the stream layers: the main-stream keys/values of `cache` (its first n
    slots) followed by the stream tokens' own; nothing is written (the cache stays main-stream only)."""

    varlen = False

    def __init__(self, cache, n: int) -> None:
        self.cache, self.n = cache, n

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mk = self.cache.k[layer, :, :, : self.n].to(k.dtype)  # (B, Hkv, n, D)
        mv = self.cache.v[layer, :, :, : self.n].to(v.dtype)
        return torch.cat([mk, k], dim=2), torch.cat([mv, v], dim=2)


class StreamDraft(nn.Module):
    def __init__(self, cfg: StreamDraftConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = DraftLM(cfg.lm)
        self.streams = nn.Parameter(torch.zeros(cfg.n_streams, cfg.lm.body.dim))  # P_1..P_S
        n = cfg.lm.body.n_layers
        self.stream_blocks = nn.ModuleList(Block(cfg.lm.body, i) for i in range(n - cfg.stream_layers, n))

    # --- the DraftLM face (so it also serves as a plain draft LM) ---------------------------------
    @property
    def vocab_size(self) -> int:
        return self.cfg.lm.target_vocab

    @property
    def d2t(self) -> torch.Tensor:
        return self.lm.d2t

    @property
    def t2d(self) -> torch.Tensor:
        return self.lm.t2d

    @property
    def n_streams(self) -> int:
        return self.cfg.n_streams

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None):
        return self.lm.new_cache(batch, max_len, dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., Vd) draft-vocabulary logits."""
        return self.lm.logits(h)

    def forward(self, tokens: torch.Tensor, cache=None, last_only: bool = False) -> ForwardOut:
        """Main stream only: exactly the `DraftLM` forward (target-vocabulary logits)."""
        return self.lm(tokens, cache=cache, last_only=last_only)

    def freeze_base(self) -> None:
        """Train only the stream embeddings and the stream layers; the draft LM (the main stream) stays as is."""
        for p in self.lm.parameters():
            p.requires_grad_(False)

    # --- multi-stream forward ---------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
            block: torch.Tensor | None = None, rows: torch.Tensor | None = None,
            n_streams: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over N new tokens with streams at `rows`.

        tokens: (B, N) target ids; positions: (B, N) (default: continue the cache); block: (B, N, N) or (N, N)
        mask among the new tokens (default causal by position; trees pass their own); rows: (R,) indices of
        the tokens that carry streams (default: the last); n_streams: run only streams 1..n_streams (default
        all; a stream never sees a later one, so the first ones are unchanged). With a cache, the main keys of
        the N tokens are appended at its end (the caller rolls them back if they are not context). The main
        stream runs without autograd (it is the draft LM, not trained here). Returns main hidden (B, N, dim)
        and stream hidden (B, R, S, dim), both before the final norm (`logits` reads them)."""
        body, S = self.lm.body, self.cfg.n_streams if n_streams is None else n_streams
        if not 0 <= S <= self.cfg.n_streams:
            raise ValueError(f"n_streams must be in [0, {self.cfg.n_streams}], got {S}")
        cfg = body.cfg
        B, N = tokens.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            first = int(cache.pos[0, :start].max()) + 1 if start else 0
            positions = torch.arange(first, first + N, device=tokens.device).expand(B, N)
        block = causal_block(positions) if block is None else (block if block.dim() == 3 else block[None].expand(
            B, N, N))
        rows = torch.tensor([N - 1], device=tokens.device) if rows is None else rows
        cache = cache if cache is not None else body.new_cache(B, N)
        start, split = cache.length, cfg.n_layers - self.cfg.stream_layers
        ids = self.lm.t2d[tokens]
        with torch.no_grad():
            out = body(ids, positions=positions, cache=cache, start=start, block_mask=block, logits=False,
                       taps=(split,) if split else ())
            x = out.taps[split] if split else body.embed_tokens(ids)  # (B, N, d) stream inputs
        R, n = rows.numel(), start + N
        h = (x[:, rows, None, :] + self.streams[:S].to(x.dtype)).flatten(1, 2)  # (B, R*S, d)
        if R * S == 0:
            return out.hidden, h.view(B, R, S, x.shape[-1])
        spos, mask = stream_mask(cache.pos[:, :n], start, block, positions, rows, S)
        keys = _MainKeys(cache, n)
        for j, blk in enumerate(self.stream_blocks):
            i = split + j
            cos, sin = body._rope_at(cfg.rope_base(i), spos, h.dtype)
            m = mask
            if cfg.layer_types[i] == "sliding":
                kp = torch.cat([cache.pos[:, :n], spos], dim=1)
                m = m & ((spos[:, :, None] - kp[:, None, :]) < cfg.sliding_window)
            h = blk(h, cos, sin, m[:, None], keys, 0)  # (B, R*S, d)
        return out.hidden, h.view(B, R, S, -1)


def build_stream_draft(config: dict) -> StreamDraft:
    return StreamDraft(StreamDraftConfig(**config))


def init_stream_draft(base: DraftLM, n_streams: int, stream_layers: int, seed: int = 0) -> StreamDraft:
    """A streaming draft around a copy of `base` (a trained draft LM, or a fresh `init_draft_lm`). The stream
    layers start as copies of its top layers; stream embeddings start small and distinct: random rows at 1/10
    of the embedding rows' RMS (times the embedding scale), so the streams differ from the main stream and from
    each other before training."""
    cfg = StreamDraftConfig(base.cfg, n_streams, stream_layers)
    draft = StreamDraft(cfg)
    draft.lm.load_state_dict(base.state_dict())
    split = base.cfg.body.n_layers - stream_layers
    for j, blk in enumerate(draft.stream_blocks):
        blk.load_state_dict(copy.deepcopy(base.body.layers[split + j].state_dict()))
    emb = base.body.embed.weight.detach().float()
    scale = float(emb.pow(2).mean().sqrt()) * base.cfg.body.embed_scale * 0.1
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draft.streams.copy_(torch.randn(n_streams, emb.shape[1], generator=gen) * scale)
    return draft
