"""Registry of decoding methods: name -> function(engine, prompt_ids, max_new, sampling, eos, on_token, **opts).

Each method returns a `DecodeOut`; speculative methods plug in here, one module each.
"""

from __future__ import annotations

from leaninfer.generate.loop import decode_ar
from leaninfer.generate.proposers.ngram import NgramProposer
from leaninfer.generate.speculative import decode_speculative


def _ar(engine, prompt, max_new_tokens, sampling, eos_ids, on_token):
    return decode_ar(engine.model, prompt, max_new_tokens, sampling, eos_ids, on_token)


def _ngram(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, k: int = 4, max_ngram: int = 3):
    return decode_speculative(engine.model, NgramProposer(max_ngram), prompt, max_new_tokens, sampling, eos_ids,
                              on_token, k=k)


METHODS = {"ar": _ar, "ngram": _ngram}
