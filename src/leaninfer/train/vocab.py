"""Reduced draft vocabulary (EAGLE-3 style): the draft predicts only the target tokens that occur most often
in its training data; `d2t` maps draft ids to target ids and `t2d` maps back (-1 = not in the draft vocab)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class DraftVocab:
    def __init__(self, d2t: torch.Tensor, target_vocab: int) -> None:
        d2t = d2t.long().cpu()
        if d2t.numel() == 0 or int(d2t.max()) >= target_vocab or int(d2t.min()) < 0:
            raise ValueError(f"draft vocabulary ids must lie in [0, {target_vocab})")
        if d2t.unique().numel() != d2t.numel():
            raise ValueError("draft vocabulary has repeated ids")
        self.d2t = d2t  # (Vd,)
        self.t2d = torch.full((target_vocab,), -1, dtype=torch.long)
        self.t2d[d2t] = torch.arange(d2t.numel())

    @property
    def size(self) -> int:
        return self.d2t.numel()

    @classmethod
    def from_counts(cls, sequences: Iterable[torch.Tensor], target_vocab: int, size: int,
                    always: Iterable[int] = ()) -> DraftVocab:
        """The `size` most frequent ids of `sequences` (ties by id), plus the ids in `always` (EOS etc.)."""
        counts = torch.zeros(target_vocab, dtype=torch.long)
        for s in sequences:
            counts += torch.bincount(s.long().flatten(), minlength=target_vocab)
        forced = sorted(set(always))
        counts[forced] = counts.max() + 1
        size = min(size, target_vocab)
        order = torch.sort(counts, descending=True, stable=True).indices[:size]
        return cls(order.sort().values, target_vocab)

    def coverage(self, sequences: Iterable[torch.Tensor]) -> float:
        """Fraction of tokens of `sequences` that the draft vocabulary contains."""
        hit = total = 0
        for s in sequences:
            hit += int((self.t2d[s.long()] >= 0).sum())
            total += s.numel()
        return hit / max(total, 1)

    def to(self, device) -> DraftVocab:
        self.d2t, self.t2d = self.d2t.to(device), self.t2d.to(device)
        return self
