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
    with torch.inference_mode():
        logits = model(torch.tensor([prompt], device=device), cache=cache, last_only=True).logits[:, -1]

        def step(tok: int) -> torch.Tensor:
            return model(torch.tensor([[tok]], device=device), cache=cache, last_only=True).logits[:, -1]

        return emit_tokens(logits, step, max_new_tokens, sampling, gen, eos_ids, on_token, t0)


def emit_tokens(
    logits: torch.Tensor,
    step: Callable[[int], torch.Tensor],
    max_new_tokens: int,
    sampling: SamplingConfig,
    gen: torch.Generator | None,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    t0: float | None = None,
) -> DecodeOut:
    """The emit loop of one-token-per-forward decoders: pick a token from `logits` (1, V), stop on EOS, on
    `on_token(t)` returning True, or at `max_new_tokens`; otherwise `logits = step(t)`. `logits` comes from the
    caller's prefill (counted as one forward); TTFT is measured from `t0` (default: now)."""
    t0 = time.perf_counter() if t0 is None else t0
    out: list[int] = []
    reason, ttft, forwards = "length", 0.0, 1
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
        logits = step(tok)
        forwards += 1
    return DecodeOut(out, forwards, ttft, reason)


class TextStream:
    """Turns generated ids into text increments; finds stop strings. `push(id)` returns True on a stop.

    Text that may be the start of a stop string is held back until it is known not to be one, so a stream
    never shows part of a stop string (the streamed text always equals the final `text`)."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str] | None = None,
                 on_text: Callable[[str], None] | None = None) -> None:
        if isinstance(stop, str):  # one stop sequence, not its characters
            stop = [stop]
        self.decode, self.stop, self.on_text = decode, [s for s in (stop or []) if s], on_text
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> bool:
        self.ids.append(token)
        text = self.decode(self.ids)
        cuts = [c for c in (text.find(s) for s in self.stop) if c >= 0]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            self._emit()
            return True
        self.text = text
        if not text.endswith("\ufffd"):  # hold back incomplete multi-byte characters
            self._emit(len(text) - self._held(text))
        return False

    def _held(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if s.startswith(text[-n:]):
                    best = n
                    break
        return best

    def _emit(self, end: int | None = None) -> None:
        end = len(self.text) if end is None else end
        if self.on_text is not None and end > self.emitted:
            self.on_text(self.text[self.emitted : end])
        self.emitted = max(self.emitted, end)

    def finish(self) -> str:
        self._emit()
        return self.text


def greedy_batch(model: Decoder, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
    """Greedy continuations of several prompts in one left-padded batch (for building training data).

    Rows stop at EOS (kept) or `max_new_tokens`; finished rows keep decoding padding that is dropped."""
    device = model.embed.weight.device
    B, L = len(prompts), max(len(p) for p in prompts)
    tokens = torch.zeros(B, L, dtype=torch.long, device=device)
    positions = torch.full((B, L), -1, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, L - len(p) :] = torch.tensor(p, device=device)
        positions[i, L - len(p) :] = torch.arange(len(p), device=device)
    cache = model.new_cache(B, L + max_new_tokens)
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids) or [-1], device=device)
    with torch.inference_mode():
        logits = model(tokens, positions=positions, cache=cache, last_only=True).logits[:, -1]  # (B, V)
        nxt_pos = positions[:, -1:] + 1  # (B, 1)
        for step in range(max_new_tokens):
            tok = logits.argmax(-1)  # (B,)
            for i in range(B):
                if not done[i]:
                    out[i].append(int(tok[i]))
            done |= torch.isin(tok, eos)
            if bool(done.all()) or step + 1 == max_new_tokens:
                break
            logits = model(tok[:, None], positions=nxt_pos, cache=cache).logits[:, -1]
            nxt_pos = nxt_pos + 1
    return out
