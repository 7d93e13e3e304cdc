"""Prefill + autoregressive decode over a static KV cache, and incremental text streaming."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from leaninfer.generate.sampling import SamplingConfig, make_generator, next_token
from leaninfer.models.transformer import Decoder


@dataclass
class DecodeOut:
    tokens: list[int]  # generated ids only
    target_forwards: int  # forward passes of the target after prefill, plus the prefill itself
    ttft_s: float
    finish_reason: str  # "length" | "eos" | "stop"
    extra: dict = field(default_factory=dict)  # method-specific stats (acceptance rate, ...)


def decode_ar(
    model: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
) -> DecodeOut:
    """Plain autoregressive decoding. `on_token(t)` returns True to stop (stop strings)."""
    device = model.embed.weight.device
    gen = make_generator(sampling.seed, device)
    cache = model.new_cache(1, len(prompt) + max_new_tokens)
    t0 = time.perf_counter()
    out: list[int] = []
    reason = "length"
    with torch.inference_mode():
        logits = model(torch.tensor([prompt], device=device), cache=cache, last_only=True).logits[:, -1]
        forwards = 1
        ttft = 0.0
        for i in range(max_new_tokens):
            tok = int(next_token(logits, sampling, gen)[0])
            if i == 0:
                ttft = time.perf_counter() - t0
            out.append(tok)
            if tok in eos_ids:
                reason = "eos"
                break
            if on_token is not None and on_token(tok):
                reason = "stop"
                break
            if i + 1 == max_new_tokens:
                break
            logits = model(torch.tensor([[tok]], device=device), cache=cache, last_only=True).logits[:, -1]
            forwards += 1
    return DecodeOut(out, forwards, ttft, reason)


class TextStream:
    """Turns generated ids into text increments; finds stop strings. `push(id)` returns True on a stop."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str] | None = None,
                 on_text: Callable[[str], None] | None = None) -> None:
        self.decode, self.stop, self.on_text = decode, [s for s in (stop or []) if s], on_text
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> bool:
        self.ids.append(token)
        text = self.decode(self.ids)
        for s in self.stop:
            cut = text.find(s)
            if cut >= 0:
                self.text, self.stopped = text[:cut], True
                self._emit()
                return True
        self.text = text
        if not text.endswith("\ufffd"):  # hold back incomplete multi-byte characters
            self._emit()
        return False

    def _emit(self) -> None:
        if self.on_text is not None and len(self.text) > self.emitted:
            self.on_text(self.text[self.emitted :])
        self.emitted = max(self.emitted, len(self.text))

    def finish(self) -> str:
        self._emit()
        return self.text
