"""`Engine`: a loaded model + tokenizer with `generate()`; `load()` builds one from a name or path."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from leaninfer.generate.loop import TextStream
from leaninfer.generate.methods import decode_request
from leaninfer.generate.threads import ThreadPolicy
from leaninfer.io.store import load_quantized_state, read_model_config, read_model_dir, resolve, save_quantized_state
from leaninfer.io.tokenizer import Tokenizer
from leaninfer.models.build import build_decoder
from leaninfer.models.config import ModelConfig
from leaninfer.models.quant import PRECISIONS, align_buffers, quantize_model
from leaninfer.models.transformer import Decoder
from leaninfer.request import GenerateRequest
from leaninfer.validate import validate_generate_kwargs, validate_load_args, validate_prompt_ids, validate_request

# The fastest precision whose perplexity stays within 1% of fp32 on the default model (reports/decode.md: w8a8
# +0.17% on 8 passages in a pilot; the bench reports the full measurement).
DEFAULT_PRECISION = "w8a8"


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only
    text: str
    stats: dict = field(default_factory=dict)
    finish_reason: str = "length"


def end_token_ids(cfg, tokenizer: Tokenizer | None) -> set[int]:
    """The tokens that end a generation: the config's and tokenizer's EOS ids and a chat model's <end_of_turn>."""
    eos = set(cfg.eos_token_ids)
    if tokenizer is not None:
        eos |= set(tokenizer.eos_ids)
        eot = tokenizer.token_id("<end_of_turn>")
        if eot is not None:
            eos.add(eot)
    return eos


class Engine:
    def __init__(self, model: Decoder, tokenizer: Tokenizer | None, precision: str, source: str = "",
                 threads: int | str = "auto") -> None:
        self.model, self.tokenizer, self.precision, self.source = model, tokenizer, precision, source
        self.threads = ThreadPolicy(threads)  # "auto": the cores other processes leave free (generate/threads.py)
        self.eos_ids = end_token_ids(model.cfg, tokenizer)

    def draft(self, kind: str):
        """The trained draft of `kind` ("eagle", "medusa", "hydra") for this target, from the user cache
        (`leaninfer draft train --kind KIND` builds it). Its linears take the engine's precision on the CPU."""
        from leaninfer.io.drafts import DraftNotFoundError, draft_dir, load_draft

        cache = self.__dict__.setdefault("_drafts", {})
        if kind not in cache:
            folder = draft_dir(self.source, kind)
            try:
                precision = "fp32" if self.device.type != "cpu" else self.precision
                cache[kind] = load_draft(folder, self.device, precision)[1]
            except DraftNotFoundError as e:
                raise DraftNotFoundError(f"{e}: train it with `leaninfer draft train --kind {kind}`") from None
        return cache[kind]

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids")
            if not prompt:
                raise ValueError("empty prompt")
            return self.tokenizer.encode(prompt)
        return validate_prompt_ids(prompt, self.cfg.vocab_size)

    def chat_prompt(self, user_text: str) -> str:
        """Wrap a user message in Gemma's chat turn format when the vocabulary has it."""
        if self.tokenizer is not None and self.tokenizer.token_id("<start_of_turn>") is not None:
            return f"<start_of_turn>user\n{user_text}<end_of_turn>\n<start_of_turn>model\n"
        return user_text

    def generate(
        self,
        prompt: str | list[int],
        request: GenerateRequest | None = None,
        stream: Callable[[str], None] | None = None,
        **kwargs,
    ) -> GenerationResult:
        """Generate after `prompt` (text, or token ids used as given) as `request` (a `GenerateRequest`) says.

        Keyword arguments are shorthand for a request (`GenerateRequest.from_kwargs`): max_new_tokens,
        temperature, top_k, top_p, seed, stop, eos, method (a spec such as "eagle:depth=5,top_k=3"), moe_k, roe,
        kv (a `KVPolicy` or "press:budget=N"); other keywords are method options. `stream(text)` receives text
        increments as they are produced. Stats: tokens_per_s (new tokens / wall time from the call to the last
        token), ttft_s, tpot_s ((e2e - ttft) / (n - 1)), mean_accepted_tokens (new tokens per target forward
        after prefill; 1.00 for plain decoding), prompt_tokens, new_tokens.
        """
        if request is None:
            request = GenerateRequest.from_kwargs(**validate_generate_kwargs(kwargs))
        elif not isinstance(request, GenerateRequest):
            raise TypeError("the second argument is a GenerateRequest; pass max_new_tokens= and other options by "
                            "keyword")
        elif kwargs:
            raise ValueError("pass either a GenerateRequest or keyword arguments, not both")
        ids = self.encode(prompt)
        if len(ids) + request.max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(f"prompt ({len(ids)}) + max_new_tokens ({request.max_new_tokens}) exceeds the context "
                             f"({self.cfg.max_seq_len})")
        validate_request(request, self.cfg, len(ids))  # bounds on what the method would allocate
        threads = self.threads.apply() if self.device.type == "cpu" else None
        text_stream = TextStream(self.tokenizer.decode, request.stop, stream) if self.tokenizer else None
        on_token = text_stream.push if text_stream and (request.stop or stream) else None
        t0 = time.perf_counter()
        out = decode_request(self, ids, request, self.eos_ids if request.eos else set(), on_token)
        e2e = time.perf_counter() - t0
        tokens = out.tokens
        if text_stream is not None:
            text = text_stream.finish() if on_token else self.tokenizer.decode(tokens)
        else:
            text = ""
        n = len(tokens)
        decode_forwards = max(out.target_forwards - 1, 1)
        stats = {
            "method": str(request.method),
            "prompt_tokens": len(ids),
            "new_tokens": n,
            "e2e_s": e2e,
            "tokens_per_s": n / e2e if e2e > 0 else float("nan"),
            "ttft_s": out.ttft_s,
            "tpot_s": (e2e - out.ttft_s) / (n - 1) if n > 1 else float("nan"),
            "target_forwards": out.target_forwards,
            "mean_accepted_tokens": (n - 1) / decode_forwards if n > 1 else 1.0,
            "threads": threads,
            **out.extra,
        }
        return GenerationResult(tokens, text, stats, out.finish_reason)


def _load_model(folder: Path, precision: str) -> tuple[Decoder, Tokenizer | None]:
    """Build the model at `precision`; quantised weights are computed once and cached (verified on load)."""
    state = load_quantized_state(folder, precision) if precision != "fp32" else None
    if state is not None:
        cfg, tok = read_model_config(folder)
        with torch.device("meta"):
            model = quantize_model(Decoder(cfg), precision, empty=True)
        model.load_state_dict(state, assign=True, strict=True)
        return align_buffers(model).eval(), tok
    cfg, state, tok = read_model_dir(folder)
    model = build_decoder(cfg, state)
    if precision != "fp32":
        quantize_model(model, precision)
        save_quantized_state(folder, precision, model.state_dict())
    return model, tok


def load(name_or_path: str | Path = "default", precision: str | None = None, device: str | None = None,
         threads: int | str = "auto") -> Engine:
    """Load a model by name ("default") or path (GGUF file, HF folder, converted folder) into an `Engine`.

    precision: "w8a8" (int8 weights on the Q8_0 grid x int8 block activations), "fp32" (exact reference), or
    weight-only "bf16", "int8", "int4"; None = DEFAULT_PRECISION. threads: "auto" (the cores other processes
    leave free, re-chosen at each generate) or a fixed count.
    """
    ThreadPolicy(threads)  # validate before any work
    precision = validate_load_args(name_or_path, precision or DEFAULT_PRECISION, device, PRECISIONS)
    folder = resolve(name_or_path)
    model, tok = _load_model(folder, precision)
    if device:
        model = model.to(device)
    return Engine(model, tok, precision, str(folder), threads)
