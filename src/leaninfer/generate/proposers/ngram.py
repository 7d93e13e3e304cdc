"""Prompt-lookup n-gram drafter (no training): find the latest earlier occurrence of the context's last n
tokens (longest n first) and propose the tokens that followed it."""

from __future__ import annotations

import torch

from leaninfer.generate.proposers.base import Proposal, Proposer


class NgramProposer(Proposer):
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: list[int], k: int) -> Proposal:
        return Proposal(torch.tensor(lookup(context, k, self.max_ngram, self.min_ngram), dtype=torch.long))


def lookup(context: list[int], k: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Pure n-gram lookup over a token list; returns up to k continuation ids (possibly none)."""
    L = len(context)
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        tail = context[L - n :]
        for start in range(L - n - 1, -1, -1):  # latest match first, excluding the tail itself
            if context[start : start + n] == tail:
                follow = context[start + n : start + n + k]
                if follow:
                    return follow
    return []
