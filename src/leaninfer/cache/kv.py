"""Static, preallocated KV cache with explicit rollback.

Layout: k, v of shape (L, B, H_kv, S, D) and `pos` (B, S), the position id of each slot (-1 = empty or
padding). All rows of a batch share the write slot; rows with shorter prompts are left-padded and their
padded slots carry position -1, so attention masks skip them.
"""

from __future__ import annotations

import torch

from leaninfer.cache.protocol import CacheProtocol


class KVCache(CacheProtocol):
    """Static cache: slots shared by the rows of a batch (see the module docstring); `CacheProtocol` methods."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_len <= 0 or batch <= 0:
            raise ValueError(f"max_len and batch must be positive, got {max_len}, {batch}")
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.pos.shape[1]

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    def reserve(self, start: int, positions: torch.Tensor) -> torch.Tensor:
        """Claim slots [start, start + T) for tokens at `positions` (B, T); returns key positions (B, start+T)."""
        T = positions.shape[1]
        if start < 0 or start > self.length:
            raise ValueError(f"start slot {start} outside the filled cache (length {self.length})")
        if start + T > self.max_len:
            raise ValueError(f"cache overflow: {start + T} slots needed, {self.max_len} allocated")
        self.pos[:, start : start + T] = positions
        self.length = max(self.length, start + T)
        return self.pos[:, : start + T]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) at slots [start, start+T) of `layer`; return views (B, H, start+T, D)."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def rollback(self, n: int) -> None:
        """Forget the last n slots (rejected speculative tokens)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot roll back {n} of {self.length} slots")
        self.length -= n
        self.pos[:, self.length :] = -1

    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        """Compact: keep slots `slots` (sorted, all >= start) of the block from `start` and drop the rest.

        Used after tree verification so that only the accepted path stays in the cache.
        """
        n = slots.numel()
        idx = slots.to(self.pos.device)
        self.k[:, :, :, start : start + n] = self.k[:, :, :, idx]
        self.v[:, :, :, start : start + n] = self.v[:, :, :, idx]
        self.pos[:, start : start + n] = self.pos[:, idx]
        self.length = start + n
        self.pos[:, self.length :] = -1

    # --- rows of a batch that sequences join and leave (continuous batching) ---------------------------------
    def rows_view(self, n: int) -> KVCache:
        """A cache over rows [0, n) that shares this cache's storage (no copy); copy `length` back after use."""
        if not 0 < n <= self.batch:
            raise ValueError(f"rows_view needs 1..{self.batch} rows, got {n}")
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.pos, view.length = self.k[:, :n], self.v[:, :n], self.pos[:n], self.length
        return view

    def load_row(self, row: int, start: int, src: KVCache) -> None:
        """Copy row 0 of `src` (its first src.length slots) into `row` at slots [start, start + src.length)."""
        n = src.length
        if start < 0 or start + n > self.max_len:
            raise ValueError(f"cache overflow: slots {start}..{start + n} of {self.max_len}")
        self.k[:, row, :, start : start + n] = src.k[:, 0, :, :n]
        self.v[:, row, :, start : start + n] = src.v[:, 0, :, :n]
        self.pos[row, start : start + n] = src.pos[0, :n]
        self.length = max(self.length, start + n)

    def clear_row(self, row: int) -> None:
        """Mark every slot of `row` empty (its keys are then never attended)."""
        self.pos[row] = -1

    def move_row(self, src: int, dst: int) -> None:
        """Move row `src` to row `dst` (filled slots only) and clear `src`."""
        end = self.length
        self.k[:, dst, :, :end] = self.k[:, src, :, :end]
        self.v[:, dst, :, :end] = self.v[:, src, :, :end]
        self.pos[dst] = self.pos[src]
        self.clear_row(src)

    def compact(self) -> None:
        """Left-pad every row again: its filled slots, in order, end at the new (smallest possible) length."""
        filled = self.pos[:, : self.length] >= 0  # (B, S)
        new_len = int(filled.sum(1).max()) if self.length else 0
        for row in range(self.batch):
            idx = filled[row].nonzero()[:, 0]
            n = idx.numel()
            k, v, p = self.k[:, row, :, idx], self.v[:, row, :, idx], self.pos[row, idx]
            self.pos[row] = -1
            if n:
                self.k[:, row, :, new_len - n : new_len] = k
                self.v[:, row, :, new_len - n : new_len] = v
                self.pos[row, new_len - n : new_len] = p
        self.length = new_len

    def reset(self) -> None:
        self.length = 0
        self.pos.fill_(-1)

    @property
    def next_position(self) -> int:
        """Position of row 0's next token (1 + its largest position so far)."""
        return int(self.pos[0, : self.length].max()) + 1 if self.length else 0

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes
