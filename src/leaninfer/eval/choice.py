"""A multiple-choice continuation task built from held-out passages, scored by log-likelihood.

Item: a context of `ctx_len` tokens from a passage (BOS first) and `n_choices` continuations of `cont_len`
tokens: the passage's true continuation and the continuations at the same offset in other passages (drawn
with a seeded generator). The model picks the choice with the highest summed log-probability given the
context; accuracy is the fraction of items where that is the true continuation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ChoiceItem:
    context: list[int]
    choices: list[list[int]]
    answer: int  # index of the true continuation


def build_items(token_lists: list[list[int]], ctx_len: int = 64, cont_len: int = 16, n_choices: int = 4,
                offsets: tuple[int, ...] = (0, 128), seed: int = 0) -> list[ChoiceItem]:
    """Items from tokenised passages (each starting with BOS). Passages too short for an offset are skipped."""
    if n_choices < 2 or ctx_len < 2 or cont_len < 1:
        raise ValueError("need n_choices >= 2, ctx_len >= 2, cont_len >= 1")
    rng = random.Random(seed)
    bos = token_lists[0][0] if token_lists and token_lists[0] else 0
    items = []
    for off in offsets:
        need = 1 + off + (ctx_len - 1) + cont_len
        usable = [i for i, ids in enumerate(token_lists) if len(ids) >= need]
        if len(usable) < n_choices:
            continue
        conts = {i: token_lists[i][1 + off + ctx_len - 1 : need] for i in usable}
        for i in usable:
            others = rng.sample([j for j in usable if j != i], n_choices - 1)
            choices = [conts[j] for j in others]
            answer = rng.randrange(n_choices)
            choices.insert(answer, conts[i])
            ctx = [bos] + token_lists[i][1 + off : 1 + off + ctx_len - 1]
            items.append(ChoiceItem(ctx, choices, answer))
    return items


def predictions(items: list[ChoiceItem], score: Callable[[list[int], list[list[int]]], list[float]]) -> list[int]:
    """score(context, choices) -> summed log-likelihood per choice; returns the argmax choice per item."""
    preds = []
    for item in items:
        s = score(item.context, item.choices)
        preds.append(max(range(len(s)), key=s.__getitem__))
    return preds


def accuracy(items: list[ChoiceItem], preds: list[int]) -> float:
    return sum(int(p == it.answer) for p, it in zip(preds, items, strict=True)) / max(len(items), 1)


def agreement(preds_a: list[int], preds_b: list[int]) -> float:
    """Cross-sparsity agreement: the fraction of items on which two settings pick the same choice."""
    if len(preds_a) != len(preds_b):
        raise ValueError("prediction lists differ in length")
    return sum(int(a == b) for a, b in zip(preds_a, preds_b, strict=True)) / max(len(preds_a), 1)
