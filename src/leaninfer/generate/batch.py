"""`BatchDecoder`: independent sequences decoded together in one left-padded batch that they join and leave
between steps (continuous batching of plain decoding).

All rows share one static `KVCache` and its write slot. Row r's filled slots hold its own tokens at its own
positions; every other slot of the row carries position -1, so the position-based attention masks skip it. A
joining prompt is prefilled alone (batch 1, exactly as `Engine.generate` prefills it) and copied into a free row
so that it ends at the current write slot; each step then feeds one token per row at that slot. Active rows are
kept packed in rows [0, n): a leaving row's place is taken by the last row, and the forward runs on a view of the
first n rows. When the slots run out, `KVCache.compact` left-pads the rows again.
"""

from __future__ import annotations

import torch

from leaninfer.models.transformer import Decoder


class BatchDecoder:
    def __init__(self, model: Decoder, max_batch: int, max_len: int) -> None:
        if max_batch < 1 or max_len < 2:
            raise ValueError("max_batch must be >= 1 and max_len >= 2")
        self.model = model
        self.cache = model.new_cache(max_batch, max_len)
        self.next_pos: list[int] = []  # per active row: position of the token it feeds next

    @property
    def size(self) -> int:
        """Active rows (they are rows 0..size-1)."""
        return len(self.next_pos)

    @property
    def full(self) -> bool:
        return self.size == self.cache.batch

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def join(self, prompt: list[int], hidden: bool = False) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """Prefill `prompt` into a new row. Returns (row, next-token logits (1, V), and with `hidden` the hidden
        states (1, T, dim) of every prompt position before the final norm, for prompt log-probabilities)."""
        T = len(prompt)
        if self.full:
            raise ValueError("the batch is full")
        if not 0 < T < self.cache.max_len:
            raise ValueError(f"prompt of {T} tokens does not fit a cache of {self.cache.max_len} slots")
        tmp = self.model.new_cache(1, T)
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt], device=self.device), cache=tmp, logits=False)
            logits = self.model.head(out.hidden[:, -1:])[:, -1]  # (1, V)
        row = self.size
        self.cache.load_row(row, max(self.cache.length - T, 0), tmp)
        self.next_pos.append(T)
        return row, logits, out.hidden if hidden else None

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per active row (in row order); returns next-token logits (n, V)."""
        n = self.size
        if len(tokens) != n or n == 0:
            raise ValueError(f"need one token per active row ({n}), got {len(tokens)}")
        if self.cache.length >= self.cache.max_len:
            self.cache.compact()
            if self.cache.length >= self.cache.max_len:
                raise ValueError("the batch cache is full: a row outgrew max_len")
        view = self.cache.rows_view(n)
        tok = torch.tensor(tokens, device=self.device)[:, None]  # (n, 1)
        pos = torch.tensor(self.next_pos, device=self.device)[:, None]  # (n, 1)
        with torch.inference_mode():
            logits = self.model(tok, positions=pos, cache=view, last_only=True).logits[:, -1]  # (n, V)
        self.cache.length = view.length
        self.next_pos = [p + 1 for p in self.next_pos]
        return logits

    def leave(self, row: int) -> int | None:
        """Drop `row`. The last row moves into its place: returns that row's old index (None if none moved)."""
        last = self.size - 1
        if not 0 <= row <= last:
            raise ValueError(f"no active row {row}")
        moved = None
        if row != last:
            self.cache.move_row(last, row)
            self.next_pos[row] = self.next_pos[last]
            moved = last
        else:
            self.cache.clear_row(row)
        self.next_pos.pop()
        if not self.next_pos:
            self.cache.reset()
        return moved
