"""Registry of decoding methods: name -> function(engine, prompt_ids, max_new, sampling, eos, on_token, **opts).

Each method returns a `DecodeOut`; speculative methods plug in here, one module each.
"""

from __future__ import annotations

from leaninfer.generate.loop import decode_ar
from leaninfer.generate.proposers.draft_lm import DraftLMProposer
from leaninfer.generate.proposers.ngram import NgramProposer
from leaninfer.generate.proposers.ngram_tree import NgramTreeProposer
from leaninfer.generate.speculative import decode_speculative, decode_tree


def _ar(engine, prompt, max_new_tokens, sampling, eos_ids, on_token):
    return decode_ar(engine.model, prompt, max_new_tokens, sampling, eos_ids, on_token)


def _ngram(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, k: int = 4, max_ngram: int = 3):
    return decode_speculative(engine.model, NgramProposer(max_ngram), prompt, max_new_tokens, sampling, eos_ids,
                              on_token, k=k)


def _ngram_tree(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, depth: int = 4, branches: int = 3,
                max_ngram: int = 3):
    return decode_tree(engine.model, NgramTreeProposer(max_ngram, branches), prompt, max_new_tokens, sampling,
                       eos_ids, on_token, depth=depth)


def _sd(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, k: int = 4):
    """Vanilla speculative sampling with a separate draft `Decoder` (or `Engine`) sharing the vocabulary."""
    if draft is None:
        raise ValueError("method 'sd' needs draft=<a Decoder or Engine with the target's vocabulary>")
    draft = getattr(draft, "model", draft)
    if draft.cfg.vocab_size != engine.cfg.vocab_size:
        raise ValueError(f"draft vocabulary {draft.cfg.vocab_size} != target {engine.cfg.vocab_size}")
    proposer = DraftLMProposer(draft, sampling, len(prompt) + max_new_tokens + k + 1,
                               None if sampling.seed is None else sampling.seed + 1)
    return decode_speculative(engine.model, proposer, prompt, max_new_tokens, sampling, eos_ids, on_token, k=k)


METHODS = {"ar": _ar, "ngram": _ngram, "ngram_tree": _ngram_tree, "sd": _sd}
