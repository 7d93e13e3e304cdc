"""A KV cache that really shrinks: per-layer, per-head variable-length key/value tensors (batch 1).

Layout: for layer l and KV head h, `k[l][h]` and `v[l][h]` are (n_lh, D) tensors and `pos[l][h]` (n_lh,) holds
each entry's *original* position id. Eviction (`keep`) replaces the tensors with compacted copies, so the
memory of evicted entries is released; positions survive eviction, keys are never re-rotated.

Sliding-window layers are trimmed to the keys a future query can still see (positions > next - window), which
is lossless. The `Decoder` runs on this cache through `begin` / `attend` / `end` (the `varlen` contract); a
scoring forward (`scoring=ScoreSpec(...)`) additionally records, per layer and head, the attention that chosen
queries pay to the cached keys, which eviction scorers ("presses") turn into keep decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaninfer.cache.protocol import CacheProtocol

TRIM_SLACK = 64  # sliding layers are trimmed lazily during decoding (see trim_windows)


@dataclass(frozen=True)
class ScoreSpec:
    """Which attention a forward records.

    queries: "all" queries of the forward or the "last" `window` ones. keys: "past" = only the entries that
    were cached before this forward (the softmax runs over those alone, as EpiCache/KVzip do), "all" = every
    visible key including the new tokens (SnapKV's observation window). reduce: "max" or "mean" over the
    chosen queries and the query heads of the KV group.
    """

    queries: str = "all"
    keys: str = "past"
    reduce: str = "max"
    window: int = 64

    def __post_init__(self) -> None:
        bad = self.queries not in ("all", "last") or self.keys not in ("past", "all")
        if bad or self.reduce not in ("max", "mean"):
            raise ValueError(f"bad ScoreSpec {self}")
        if self.window < 1:
            raise ValueError("window must be >= 1")


def head_attention(q, k, v, q_pos, k_pos, window, scale) -> torch.Tensor:
    """Attention of one KV group. q: (G, T, D); k, v: (n, D); q_pos (T,), k_pos (n,). Returns (G, T, D)."""
    mask = k_pos[None, :] <= q_pos[:, None]  # (T, n)
    if window is not None:
        mask &= (q_pos[:, None] - k_pos[None, :]) < window
    if q.shape[1] == 1 and bool(mask.all()):
        mask = None
    out = F.scaled_dot_product_attention(q[None], k[None, None].to(q.dtype), v[None, None].to(q.dtype),
                                         attn_mask=None if mask is None else mask[None, None], scale=scale)
    return out[0]


def attention_scores(q, k, q_pos, k_pos, window, scale, reduce: str) -> torch.Tensor:
    """Softmax attention of queries q (G, T, D) over keys k (n, D) only, reduced over G and T -> (n,)."""
    logits = torch.einsum("gtd,nd->gtn", q.float(), k.float()) * scale  # (G, T, n)
    mask = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= (q_pos[:, None] - k_pos[None, :]) < window
    logits = logits.masked_fill(~mask[None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows that see nothing -> 0
    probs = probs.flatten(0, 1)  # (G*T, n)
    return probs.amax(0) if reduce == "max" else probs.mean(0)


class CompressedKVCache(CacheProtocol):
    """Per-layer, per-head variable-length KV cache for one sequence (see the module docstring)."""

    varlen = True  # the Decoder/Attention contract: begin / attend / end

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, windows: list[int | None],
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if len(windows) != n_layers:
            raise ValueError(f"need one window entry per layer ({n_layers}), got {len(windows)}")
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.windows = list(windows)
        self.dtype, self.device = dtype, torch.device(device)
        e = lambda: torch.empty(0, head_dim, dtype=dtype, device=self.device)  # noqa: E731
        self.k = [[e() for _ in range(n_kv_heads)] for _ in range(n_layers)]
        self.v = [[e() for _ in range(n_kv_heads)] for _ in range(n_layers)]
        self.pos = [[torch.empty(0, dtype=torch.long, device=self.device) for _ in range(n_kv_heads)]
                    for _ in range(n_layers)]
        self._next = 0  # original position of the next token
        self.scoring: ScoreSpec | None = None
        self.transient = False  # set while scoring prompts / questions run: they do not count as context
        self.scores: dict[int, list[torch.Tensor]] = {}
        self.peak_bytes = 0  # everything held, transient scoring prompts / questions included
        self.peak_context_bytes = 0  # context entries only (the paper's "peak cache": budget + block)
        self.peak_tokens = [0] * n_layers  # max entries of one head, outside transient forwards
        self._q_pos: torch.Tensor | None = None
        self._n_past: list[list[int]] = []

    @classmethod
    def for_model(cls, model) -> CompressedKVCache:
        cfg = model.cfg
        dtype = model.embed.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.float32
        windows = [cfg.sliding_window if t == "sliding" else None for t in cfg.layer_types]
        return cls(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, windows, dtype, model.embed.weight.device)

    # --- size ---------------------------------------------------------------------------------------
    def lengths(self, layer: int) -> list[int]:
        return [int(p.numel()) for p in self.pos[layer]]

    def n_entries(self) -> int:
        """Total (layer, head, token) entries held."""
        return sum(sum(self.lengths(layer)) for layer in range(self.n_layers))

    def nbytes(self) -> int:
        """Bytes of the tensors actually held (keys, values, positions)."""
        return sum(t.nbytes for rows in (self.k, self.v, self.pos) for row in rows for t in row)

    def _track(self) -> None:
        held = self.nbytes()
        self.peak_bytes = max(self.peak_bytes, held)
        if not self.transient:
            self.peak_context_bytes = max(self.peak_context_bytes, held)
            for layer in range(self.n_layers):
                self.peak_tokens[layer] = max(self.peak_tokens[layer], max(self.lengths(layer)))

    # --- the Decoder contract ---------------------------------------------------------------------
    def begin(self, positions: torch.Tensor) -> None:
        """Start a forward over new tokens at `positions` (1, T): trim sliding layers, remember past sizes."""
        if positions.dim() != 2 or positions.shape[0] != 1:
            raise ValueError(f"a compressed cache holds one sequence; positions must be (1, T), "
                             f"got {tuple(positions.shape)}")
        self.trim_windows(int(positions.min()), slack=TRIM_SLACK)
        self._q_pos = positions[0].to(self.device)
        self._n_past = [self.lengths(layer) for layer in range(self.n_layers)]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
               scale: float) -> torch.Tensor:
        """Append k, v (1, Hkv, T, D) to `layer`, attend q (1, H, T, D) over each head's entries -> (1, H, T, D)."""
        if self._q_pos is None:
            raise RuntimeError("attend() outside a forward: call begin(positions) first")
        H, T = q.shape[1], q.shape[2]
        G = H // self.n_heads
        spec = self.scoring
        outs, scores = [], []
        for h in range(self.n_heads):
            kh = torch.cat([self.k[layer][h], k[0, h].to(self.dtype)])
            vh = torch.cat([self.v[layer][h], v[0, h].to(self.dtype)])
            ph = torch.cat([self.pos[layer][h], self._q_pos])
            self.k[layer][h], self.v[layer][h], self.pos[layer][h] = kh, vh, ph
            qh = q[0, h * G : (h + 1) * G]  # (G, T, D)
            outs.append(head_attention(qh, kh, vh, self._q_pos, ph, window, scale))
            if spec is not None:
                sel = slice(max(T - spec.window, 0), T) if spec.queries == "last" else slice(0, T)
                n = self._n_past[layer][h] if spec.keys == "past" else kh.shape[0]
                scores.append(attention_scores(qh[:, sel], kh[:n], self._q_pos[sel], ph[:n], window, scale,
                                               spec.reduce))
        if spec is not None:
            self.scores[layer] = scores
        return torch.cat(outs, 0)[None]  # (1, H, T, D): query head h*G + g belongs to KV head h

    def end(self) -> None:
        """Finish a forward: entries only grew during it, so this is when the held size peaks."""
        self._track()
        if self._q_pos is not None and self._q_pos.numel():
            self.next_position = max(self.next_position, int(self._q_pos.max()) + 1)
        self._q_pos = None

    # --- eviction ------------------------------------------------------------------------------------
    def trim_windows(self, next_pos: int | None = None, slack: int = 0) -> None:
        """Drop sliding-layer keys no query at position >= next_pos can see (lossless). With `slack`, only trim
        once more than `slack` such keys have piled up (decoding then copies a layer every `slack` tokens, not
        every token; the attention mask hides them meanwhile)."""
        nxt = self.next_position if next_pos is None else next_pos
        for layer, w in enumerate(self.windows):
            if w is None:
                continue
            for h in range(self.n_heads):
                p = self.pos[layer][h]
                if p.numel() and int(p.min()) <= nxt - w - slack:
                    self.keep_entries(layer, h, torch.nonzero(p > nxt - w).flatten())

    def keep_entries(self, layer: int, head: int, idx: torch.Tensor) -> None:
        """Keep entries `idx` (indices into the head's current entries) in their original order; free the rest."""
        idx = idx.to(self.device).sort().values
        self.k[layer][head] = self.k[layer][head][idx].contiguous()
        self.v[layer][head] = self.v[layer][head][idx].contiguous()
        self.pos[layer][head] = self.pos[layer][head][idx].contiguous()

    def rollback(self, n: int) -> None:
        """Forget the last n tokens (rejected speculative tokens): every entry at a position >= next - n."""
        if not 0 <= n <= self.next_position:
            raise ValueError(f"cannot roll back {n} of {self.next_position} positions")
        if n == 0:
            return
        cut = self.next_position - n
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                p = self.pos[layer][h]
                if p.numel() and int(p.max()) >= cut:
                    self.keep_entries(layer, h, torch.nonzero(p < cut).flatten())
        self.next_position = cut

    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        raise NotImplementedError("a compressed cache cannot keep a tree path (siblings share positions); "
                                  "use chain speculation (ngram, sd) with a KV policy")

    def reset(self) -> None:
        for rows in (self.k, self.v, self.pos):
            for row in rows:
                row[:] = [t[:0] for t in row]
        self._next = 0

    @property
    def next_position(self) -> int:
        return self._next

    @next_position.setter
    def next_position(self, value: int) -> None:
        self._next = int(value)

    # --- temporary tokens (scoring prompts, questions) --------------------------------------------------
    def mark(self) -> tuple:
        """A snapshot to `restore` later (tensor references: entries are never modified in place)."""
        return ([row[:] for row in self.k], [row[:] for row in self.v], [row[:] for row in self.pos],
                self.next_position)

    def restore(self, snapshot: tuple) -> None:
        k, v, pos, nxt = snapshot
        self.k, self.v, self.pos = [row[:] for row in k], [row[:] for row in v], [row[:] for row in pos]
        self.next_position = nxt

    def take_scores(self) -> dict[int, list[torch.Tensor]]:
        scores, self.scores = self.scores, {}
        return scores

    def to(self, device: torch.device | str) -> CompressedKVCache:
        """Move every tensor (e.g. park an episode's cache on CPU)."""
        self.device = torch.device(device)
        for rows in (self.k, self.v, self.pos):
            for row in rows:
                row[:] = [t.to(self.device) for t in row]
        return self
