"""Perplexity and next-token agreement on real text, for comparing precisions (and later, MoE settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaninfer.eval.specbench import load_questions


def text_corpus(categories: tuple[str, ...] = ("summarization", "rag"), limit: int | None = None) -> list[str]:
    """Real English passages: the long Spec-Bench turns (news articles to summarise, retrieved passages)."""
    texts = [q.text for q in load_questions() if q.category in categories]
    return texts[:limit] if limit else texts


@dataclass
class PplResult:
    ppl: float
    nll: float
    tokens: int
    argmax: list[torch.Tensor]  # per text: (T-1,) argmax predictions, for agreement between models


def perplexity(model, token_lists: list[list[int]], max_len: int = 512) -> PplResult:
    """Token-level perplexity of `model` over each sequence (truncated to max_len), one forward each."""
    nll, n, argmax = 0.0, 0, []
    with torch.inference_mode():
        for ids in token_lists:
            x = torch.tensor([ids[:max_len]], device=model.embed.weight.device)
            logits = model(x).logits[0, :-1]  # (T-1, V)
            target = x[0, 1:]
            nll += float(F.cross_entropy(logits.float(), target, reduction="sum"))
            n += target.numel()
            argmax.append(logits.argmax(-1).cpu())
    return PplResult(math.exp(nll / n), nll / n, n, argmax)


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of positions where two models' next-token argmax predictions agree."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.numel() for x in a)
