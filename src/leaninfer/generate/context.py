"""`DecodeContext`: what a decode loop runs on (model, cache, MoE routing, clock), and the one-token-per-forward
loop over any context, so that a KV policy and a MoE k compose with plain decoding without a loop of their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from leaninfer.generate.loop import DecodeOut, emit_tokens
from leaninfer.generate.sampling import SamplingConfig, make_generator
from leaninfer.models.moe import Routing
from leaninfer.models.transformer import Decoder, ForwardOut


@dataclass
class DecodeContext:
    """model; cache: a `KVCache` or a `CompressedKVCache` (None: the decode loop makes a static cache); routing:
    MoE routing for every forward (None = native); t0: the request's start (TTFT is measured from it)."""

    model: Decoder
    cache: object | None = None
    routing: Routing | None = None
    t0: float = field(default_factory=time.perf_counter)
    cached: int = 0  # prompt tokens the cache already holds (a decode loop prefills only the rest)

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def forward(self, tokens: list[int] | torch.Tensor, **kw) -> ForwardOut:
        """Run the model over `tokens` (a list or (1, T)) on this context's cache and routing."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor([tokens], device=self.device)
        return self.model(tokens, cache=self.cache, routing=self.routing, **kw)

    def next_logits(self, tokens: list[int]) -> torch.Tensor:
        """(1, V) next-token logits after `tokens`."""
        return self.forward(tokens, last_only=True).logits[:, -1]


def routing_for(model: Decoder, moe_k: int | None) -> Routing | None:
    """MoE routing at `moe_k` experts per token (None: native routing); refuses a k on a dense model."""
    if moe_k is None:
        return None
    if not model.cfg.is_moe:
        raise ValueError("moe_k needs an MoE model (e.g. one built by `leaninfer moe build`)")
    if not 0 < moe_k <= model.cfg.n_experts:
        raise ValueError(f"moe_k must be in 1..{model.cfg.n_experts}, got {moe_k}")
    return Routing(top_k=moe_k)


def decode_in_context(
    ctx: DecodeContext,
    tail: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
) -> DecodeOut:
    """Autoregressive decoding on `ctx` whose cache already holds the prompt but its `tail` (>= 1 token)."""
    if not tail:
        raise ValueError("the prompt tail must hold at least one token")
    gen = make_generator(sampling.seed, ctx.device)
    with torch.inference_mode():
        logits = ctx.next_logits(tail)
        return emit_tokens(logits, lambda t: ctx.next_logits([t]), max_new_tokens, sampling, gen, eos_ids,
                           on_token, ctx.t0)
