"""A separate small draft LM (vanilla speculative sampling): the draft decodes k tokens autoregressively
with its own KV cache; its distributions q are kept so verification is exact in sampling mode."""

from __future__ import annotations

import torch

from leaninfer.generate.proposers.base import Proposal, Proposer
from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator
from leaninfer.models.transformer import Decoder


class DraftLMProposer(Proposer):
    """draft: a `Decoder` or a `models.draft_lm.DraftLM` (anything with `new_cache` and target-vocab logits)."""

    def __init__(self, draft: Decoder, sampling: SamplingConfig, max_len: int, seed: int | None = None) -> None:
        self.draft, self.sampling, self.max_len = draft, sampling, max_len
        self.device = next(draft.parameters()).device
        self.gen = make_generator(seed, self.device)
        self.cache = None
        self.fed = 0  # context tokens whose keys are in the draft cache

    def begin(self, prompt: list[int]) -> None:
        self.cache = self.draft.new_cache(1, self.max_len)
        self.fed = 0

    def propose(self, context: list[int], k: int) -> Proposal:
        """Feed the context tokens the draft has not seen, then sample/argmax k tokens."""
        device = self.device
        if self.cache.length > self.fed:  # drop draft tokens beyond the accepted context
            self.cache.rollback(self.cache.length - self.fed)
        new = torch.tensor([context[self.fed :]], device=device)
        logits = self.draft(new, cache=self.cache, last_only=True).logits[0, -1]
        self.fed = len(context)
        tokens, probs = [], []
        for i in range(k):
            p = logits_to_probs(logits, self.sampling)
            t = int(p.argmax()) if self.sampling.greedy else int(torch.multinomial(p, 1, generator=self.gen))
            tokens.append(t)
            probs.append(p)
            if i + 1 < k:
                logits = self.draft(torch.tensor([[t]], device=device), cache=self.cache).logits[0, -1]
        if not tokens:
            return Proposal(torch.empty(0, dtype=torch.long))
        return Proposal(torch.tensor(tokens, dtype=torch.long), torch.stack(probs))

    def accept(self, emitted: list[int], n_accepted: int) -> None:
        # the draft cache holds context + its k-1 fed drafts; keep those that were accepted
        keep = self.fed + min(n_accepted, self.cache.length - self.fed)
        self.cache.rollback(self.cache.length - keep)
        self.fed = keep
