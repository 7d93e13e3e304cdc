"""Speculative-streaming draft (Bhendawade et al. 2024, arXiv 2402.11131): a draft LM whose top layers carry
multi-stream attention, so one forward emits several tokens.

The body is a `DraftLM` (a few target layers, reduced vocabulary). At a position t chosen to carry streams, S
*stream* tokens enter its top `stream_layers` layers: stream s starts from the main stream's hidden state at t
(after the lower layers) plus a learned stream embedding P_s, sits at position pos(t) + s, and attends to
what the main token at t attends to (its context) and to streams 1..s of the same position, never to a later
stream, another position's streams or a future token. The main stream never sees a stream. The head reads
every stream: the main stream at t predicts token t + 1, stream s predicts token t + 1 + s, so one forward over
a context emits 1 + S tokens. Trained with the future n-gram objective (`train/draft_losses.py:stream_loss`).

Stream keys never stay in a KV cache: a cached call rolls them back, so the cache holds main-stream keys only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from leaninfer.models.draft_lm import DraftLM, DraftLMConfig
from leaninfer.models.transformer import ForwardOut


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


def stream_layout(positions: torch.Tensor, block: torch.Tensor, rows: torch.Tensor,
                  n_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and mask of N main tokens followed by S streams for each of the R `rows` (row-major: stream s
    of row r at index N + r * S + s - 1). Pure function.

    positions: (B, N); block: (B, N, N) mask among the main tokens; rows: (R,) indices into N.
    Returns positions (B, N + R*S) (stream s of row r at positions[r] + s; -1 where the row is padding) and the
    mask (B, N + R*S, N + R*S): main rows keep `block` and see no stream; stream (r, s) sees the main tokens row
    r sees and streams (r, 1..s)."""
    B, N = positions.shape
    R, S = rows.numel(), n_streams
    base = positions[:, rows]  # (B, R)
    off = torch.arange(1, S + 1, device=positions.device)
    spos = torch.where(base[..., None] >= 0, base[..., None] + off, -1).reshape(B, R * S)  # (B, R*S)
    T = N + R * S
    mask = torch.zeros(B, T, T, dtype=torch.bool, device=positions.device)
    mask[:, :N, :N] = block
    mask[:, N:, :N] = block[:, rows].repeat_interleave(S, dim=1)  # (B, R*S, N)
    own = torch.ones(S, S, dtype=torch.bool, device=positions.device).tril()
    mask[:, N:, N:] = torch.block_diag(*[own] * R) if R else mask[:, N:, N:]
    return torch.cat([positions, spos], dim=1), mask


class StreamDraft(nn.Module):
    def __init__(self, cfg: StreamDraftConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = DraftLM(cfg.lm)
        self.streams = nn.Parameter(torch.zeros(cfg.n_streams, cfg.lm.body.dim))  # P_1..P_S

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
        """Train only the stream embeddings and the top `stream_layers` layers (the embeddings, lower layers,
        final norm and head keep a trained draft LM's weights; lower layers then run without autograd)."""
        split = self.cfg.lm.body.n_layers - self.cfg.stream_layers
        for name, p in self.lm.named_parameters():
            upper = name.startswith("body.layers.") and int(name.split(".")[2]) >= split
            p.requires_grad_(upper)

    # --- multi-stream forward ---------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
            block: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over N new tokens with streams at `rows`.

        tokens: (B, N) target ids; positions: (B, N) (default: continue the cache); block: (B, N, N) or (N, N)
        mask among the new tokens (default causal by position; trees pass their own); rows: (R,) indices of
        the tokens that carry streams (default: the last). With a cache, main keys are appended at its end and
        stream keys are rolled back. Returns main hidden (B, N, dim) and stream hidden (B, R, S, dim), both
        before the final norm (`logits` reads them)."""
        body, S = self.lm.body, self.cfg.n_streams
        B, N = tokens.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            first = int(cache.pos[0, :start].max()) + 1 if start else 0
            positions = torch.arange(first, first + N, device=tokens.device).expand(B, N)
        block = causal_block(positions) if block is None else (block if block.dim() == 3 else block[None].expand(
            B, N, N))
        rows = torch.tensor([N - 1], device=tokens.device) if rows is None else rows
        start = cache.length if cache is not None else None
        split = body.cfg.n_layers - self.cfg.stream_layers
        ids = self.lm.t2d[tokens]
        if split:
            x = body(ids, positions=positions, cache=cache, start=start, layers=(0, split), block_mask=block,
                     logits=False).hidden  # (B, N, d)
        else:
            x = body.embed_tokens(ids)
        R = rows.numel()
        streams = x[:, rows, None, :] + self.streams.to(x.dtype)  # (B, R, S, d)
        pos2, mask2 = stream_layout(positions, block, rows, S)
        h = body(hidden=torch.cat([x, streams.flatten(1, 2)], dim=1), positions=pos2, cache=cache, start=start,
                 layers=(split, body.cfg.n_layers), block_mask=mask2, logits=False).hidden  # (B, N + R*S, d)
        if cache is not None:
            cache.rollback(R * S)
        return h[:, :N], h[:, N:].reshape(B, R, S, h.shape[-1])


def build_stream_draft(config: dict) -> StreamDraft:
    return StreamDraft(StreamDraftConfig(**config))


def init_stream_draft(base: DraftLM, n_streams: int, stream_layers: int, seed: int = 0) -> StreamDraft:
    """A streaming draft around a copy of `base` (a fresh `init_draft_lm` or a trained draft LM). Stream
    embeddings start small and distinct: random rows at 1/10 of the embedding rows' RMS (times the embedding
    scale), so the streams differ from the main stream and from each other before training."""
    cfg = StreamDraftConfig(base.cfg, n_streams, stream_layers)
    draft = StreamDraft(cfg)
    draft.lm.load_state_dict(base.state_dict())
    emb = base.body.embed.weight.detach().float()
    scale = float(emb.pow(2).mean().sqrt()) * base.cfg.body.embed_scale * 0.1
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draft.streams.copy_(torch.randn(n_streams, emb.shape[1], generator=gen) * scale)
    return draft
