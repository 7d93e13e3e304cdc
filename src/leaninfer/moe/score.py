"""Log-likelihood scoring of an MoE at a dialled top-k, plainly or with a Roster of Experts.

`Scorer.sequence_logprobs(ids)` gives log p(ids[t+1] | ids[:t+1]) for every position (perplexity);
`Scorer.choice_scores(context, choices)` the summed log-likelihood of each continuation (multiple choice).
With RoE the context is run once on the clean path; each continuation is one n-member block over the clean
cache, starting at the last context token, and then rolled back.
"""

from __future__ import annotations

import math

import torch

from leaninfer.models.moe import Routing
from leaninfer.models.transformer import Decoder
from leaninfer.moe.lm import Bf16Head
from leaninfer.moe.roe import RoEConfig, average_logprobs, roe_forward


class Scorer:
    def __init__(self, model: Decoder, top_k: int | None = None, roe: RoEConfig | None = None,
                 head: Bf16Head | None = None) -> None:
        if (top_k is not None or roe is not None) and not model.cfg.is_moe:
            raise ValueError("top_k and RoE need an MoE model")
        self.model, self.top_k, self.roe = model, top_k, roe
        self.routing = Routing(top_k=top_k) if model.cfg.is_moe else None
        self.head = head or Bf16Head(model)
        seed = roe.seed if roe is not None and roe.seed is not None else 0
        self.gen = torch.Generator().manual_seed(seed)

    def _target_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (n, L, D), targets (L,) -> each member's log-prob of the targets, averaged over members (L,)."""
        per = torch.stack([self.head.logprobs(hidden[i : i + 1])[0].gather(-1, targets[:, None])[:, 0]
                           for i in range(hidden.shape[0])])  # (n, L)
        return average_logprobs(per)

    @torch.inference_mode()
    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids])
        targets = x[0, 1:]
        if self.roe is None:
            hidden = self.model(x, logits=False, routing=self.routing).hidden[:, :-1]
        else:
            cache = self.model.new_cache(1, len(ids))
            step = self.model.cfg.sliding_window or len(ids)  # blocks never span more than one window
            hidden = torch.cat([roe_forward(self.model, x[:, i : i + step], cache, self.roe, self.top_k, self.gen)
                                for i in range(0, len(ids), step)], dim=1)[:, :-1]
        return self._target_logprobs(hidden, targets)

    @torch.inference_mode()
    def choice_scores(self, context: list[int], choices: list[list[int]]) -> list[float]:
        L = max(len(c) for c in choices)
        cache = self.model.new_cache(1, len(context) + L)
        if len(context) > 1:
            self.model(torch.tensor([context[:-1]]), cache=cache, logits=False, routing=self.routing)
        scores = []
        for choice in choices:
            block = torch.tensor([[context[-1], *choice[:-1]]])
            if self.roe is None:
                hidden = self.model(block, cache=cache, logits=False, routing=self.routing).hidden
            else:
                hidden = roe_forward(self.model, block, cache, self.roe, self.top_k, self.gen)
            scores.append(float(self._target_logprobs(hidden, torch.tensor(choice)).sum()))
            cache.rollback(block.shape[1])
        return scores


def perplexity(scorer: Scorer, token_lists: list[list[int]]) -> dict:
    """Token-level perplexity over the sequences: {"ppl", "nll", "tokens"}."""
    nll, n = 0.0, 0
    for ids in token_lists:
        lp = scorer.sequence_logprobs(ids)
        nll -= float(lp.sum())
        n += lp.numel()
    return {"ppl": math.exp(nll / n), "nll": nll / n, "tokens": n}
