"""Autoregressive decoding of an MoE at a dialled top-k, optionally with a Roster of Experts.

Plain: every step runs batch 1 with `Routing(top_k=k)`. RoE: the prompt (but its last token) is prefilled once
on the clean path; then every step runs the n members as one batch over the clean cache (`moe.roe`) and the
next token is chosen from the members' averaged probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from leaninfer.generate.loop import DecodeOut, emit_tokens
from leaninfer.generate.sampling import SamplingConfig, make_generator
from leaninfer.models.moe import Routing
from leaninfer.models.transformer import Decoder
from leaninfer.moe.roe import RoEConfig, average_logprobs, roe_forward


def _check(model: Decoder, top_k: int | None) -> None:
    if not model.cfg.is_moe:
        raise ValueError("--moe-k / RoE need an MoE model (e.g. one built by `leaninfer moe build`)")
    if top_k is not None and not 0 < top_k <= model.cfg.n_experts:
        raise ValueError(f"moe k must be in 1..{model.cfg.n_experts}, got {top_k}")


def _step(model: Decoder, tok: torch.Tensor, cache, top_k: int | None, roe: RoEConfig | None,
          gen: torch.Generator | None) -> torch.Tensor:
    """One new token (1, 1) -> next-token logits (1, V) (RoE: log of the averaged probabilities)."""
    if roe is None:
        return model(tok, cache=cache, last_only=True, routing=Routing(top_k=top_k)).logits[:, -1]
    hidden = roe_forward(model, tok, cache, roe, top_k, gen)  # (n, 1, D)
    logp = torch.log_softmax(model.head(hidden)[:, -1], dim=-1)  # (n, V)
    return average_logprobs(logp)[None]


def decode_moe(
    model: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    top_k: int | None = None,
    roe: RoEConfig | None = None,
) -> DecodeOut:
    """Greedy or sampled decoding at top-k `top_k` (None = native), with RoE when `roe` is given."""
    _check(model, top_k)
    device = model.embed.weight.device
    gen = make_generator(sampling.seed, device)
    noise_gen = None
    if roe is not None:
        noise_gen = torch.Generator(device=device)
        noise_gen.manual_seed(roe.seed if roe.seed is not None else int(torch.seed() % 2**31))
    cache = model.new_cache(1, len(prompt) + max_new_tokens)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if len(prompt) > 1:
            model(torch.tensor([prompt[:-1]], device=device), cache=cache, logits=False,
                  routing=Routing(top_k=top_k))
        logits = _step(model, torch.tensor([[prompt[-1]]], device=device), cache, top_k, roe, noise_gen)

        def step(tok: int) -> torch.Tensor:
            return _step(model, torch.tensor([[tok]], device=device), cache, top_k, roe, noise_gen)

        out = emit_tokens(logits, step, max_new_tokens, sampling, gen, eos_ids, on_token, t0)
    out.extra = {"moe_k": top_k or model.cfg.top_k, "roe_n": roe.n if roe else 1}
    return out
