"""The one cache contract every KV cache implements (static `KVCache`, per-head `CompressedKVCache`).

Decode loops only use these methods, so speculation, batching and the server run on either cache:
- `rollback(n)`: forget the last n tokens (rejected drafts);
- `keep_path(start, slots)`: after a tree verification, keep only the accepted path of the block from `start`
  (caches that cannot tell tree siblings apart raise `NotImplementedError`);
- `nbytes()`: bytes held; `reset()`: empty the cache; `next_position`: the position of the next token (row 0).
How keys and values get in is per layout, named by `varlen`: static caches are written through
`reserve(start, positions)` + `write(layer, start, k, v)` and attended with shared masks; variable-length ones
(`varlen = True`) through `begin(positions)` + `attend(layer, q, k, v, window, scale)` + `end()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class CacheProtocol(ABC):
    varlen: bool = False

    @abstractmethod
    def rollback(self, n: int) -> None:
        """Forget the last n tokens."""

    @abstractmethod
    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        """Keep the accepted tree path `slots` (sorted cache slots >= start) of the block from `start`."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything."""

    @property
    @abstractmethod
    def next_position(self) -> int:
        """Position id of the next token of (the first) sequence."""
