"""Registry of decoding methods: name -> function(engine, prompt_ids, max_new, sampling, eos, on_token, **opts).

Each method returns a `DecodeOut`; speculative methods plug in here, one module each.
"""

from __future__ import annotations

from leaninfer.generate.loop import decode_ar


def _ar(engine, prompt, max_new_tokens, sampling, eos_ids, on_token):
    return decode_ar(engine.model, prompt, max_new_tokens, sampling, eos_ids, on_token)


METHODS = {"ar": _ar}
