"""The drafter interface shared by every proposer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Proposal:
    tokens: torch.Tensor  # (k,) draft ids, k may be 0
    probs: torch.Tensor | None = None  # (k, V) draft distributions; None for deterministic drafters


class Proposer:
    """Proposes up to `k` tokens to follow `context` (prompt + accepted output, ids).

    `begin(prompt)` is called once per generation; `accept(tokens)` after each verification with the tokens
    that were emitted (accepted drafts + the target's next token), so stateful drafters can update caches.
    """

    def begin(self, prompt: list[int]) -> None:
        pass

    def propose(self, context: list[int], k: int) -> Proposal:
        raise NotImplementedError

    def accept(self, emitted: list[int], n_accepted: int) -> None:
        pass
