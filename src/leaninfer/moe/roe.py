"""Roster of Experts (RoE, arXiv 2509.17238): a training-free per-token ensemble over Gumbel-perturbed routings.

n roster members run as one batch. Member 0 is the clean path (tau = 0); members 1..n-1 pick their experts by
top-k of log p + tau_l * G (Gumbel-top-k: k experts sampled without replacement following the router's
probabilities), with noise drawn per token, per MoE layer and per member, and tau_l = 0 on the first and last
`clean_layers` layers. Predictions are averaged probabilities: log p = logsumexp_i log p_i - log n.

Clean cache: every member attends to one shared history, the clean path's keys and values (member 0), and to
its own key/value for the token being scored. `CleanCache` realises this on top of one batch-1 `KVCache`: it
stores only member 0's keys/values and hands each attention layer [clean history | own new keys]. For a block
of T tokens scored at once (teacher forcing), member i's token t sees the clean tokens before t and itself,
exactly as if the block were decoded token by token with the clean cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from leaninfer.cache.kv import KVCache
from leaninfer.models.moe import Routing, gumbel_noise
from leaninfer.models.transformer import Decoder


@dataclass
class RoEConfig:
    """n: roster size (member 0 is clean); tau_per_layer: one tau per layer, or one value for every noisy
    layer; clean_layers: the first and the last L layers route without noise."""

    n: int = 4
    tau_per_layer: list[float] | float = 0.2
    clean_layers: int = 1
    seed: int | None = 0
    _taus: list[float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"roster size n must be >= 1, got {self.n}")
        if self.clean_layers < 0:
            raise ValueError(f"clean_layers must be >= 0, got {self.clean_layers}")
        taus = self.tau_per_layer if isinstance(self.tau_per_layer, list) else [self.tau_per_layer]
        if any(t < 0 for t in taus):
            raise ValueError(f"tau must be >= 0, got {self.tau_per_layer}")

    def taus(self, n_layers: int) -> list[float]:
        """Per-layer tau with the clean first/last layers set to 0."""
        if isinstance(self.tau_per_layer, list):
            if len(self.tau_per_layer) != n_layers:
                raise ValueError(f"tau_per_layer has {len(self.tau_per_layer)} values for {n_layers} layers")
            taus = list(self.tau_per_layer)
        else:
            taus = [float(self.tau_per_layer)] * n_layers
        L = self.clean_layers
        return [0.0 if i < L or i >= n_layers - L else t for i, t in enumerate(taus)]


def roe_routing(model: Decoder, roe: RoEConfig, T: int, top_k: int | None,
                generator: torch.Generator | None) -> list[Routing]:
    """Per-layer routing for n members x T tokens: Gumbel noise (n, T, E) scaled by tau, member 0 clean."""
    cfg = model.cfg
    out = []
    for tau in roe.taus(cfg.n_layers):
        if tau == 0 or roe.n == 1:
            out.append(Routing(top_k=top_k))
            continue
        noise = gumbel_noise((roe.n, T, cfg.n_experts), tau, generator, model.embed.weight.device)
        noise[0] = 0.0
        out.append(Routing(top_k=top_k, noise=noise))
    return out


class CleanCache:
    """A view of one batch-1 `KVCache` for n roster members (see the module docstring). Only member 0's keys
    and values are stored; memory is that of one sequence."""

    def __init__(self, base: KVCache, n: int) -> None:
        if base.batch != 1:
            raise ValueError(f"the clean cache is one sequence (batch 1), got batch {base.batch}")
        self.base, self.n = base, n
        self._T = 0

    @property
    def length(self) -> int:
        return self.base.length

    @property
    def pos(self) -> torch.Tensor:
        return self.base.pos

    def reserve(self, start: int, positions: torch.Tensor) -> torch.Tensor:
        """positions (n, T), equal rows. Returns key positions (n, start + 2T): [clean history | clean new
        tokens, shifted by +1 so a token never sees its own clean copy | the member's own new tokens]."""
        T = positions.shape[1]
        self._T = T
        k_pos = self.base.reserve(start, positions[:1])  # (1, start + T)
        keys = torch.cat([k_pos, positions[:1]], dim=1)
        keys[:, start : start + T] = torch.where(keys[:, start : start + T] >= 0, keys[:, start : start + T] + 1, -1)
        return keys.expand(self.n, -1)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (n, H, T, D): member 0's go into the shared cache; returns (n, H, start + 2T, D) views."""
        ck, cv = self.base.write(layer, start, k[:1], v[:1])  # (1, H, start + T, D)
        n = k.shape[0]
        return (torch.cat([ck.expand(n, -1, -1, -1), k], dim=2), torch.cat([cv.expand(n, -1, -1, -1), v], dim=2))


def roe_forward(model: Decoder, tokens: torch.Tensor, cache: KVCache, roe: RoEConfig, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Run a block of new tokens (1, T) for all n members over the clean cache; returns hidden (n, T, D).
    The clean cache gains member 0's keys/values for the block (= plain decoding's cache)."""
    T = tokens.shape[1]
    window = model.cfg.sliding_window
    if window is not None and T > window:
        raise ValueError(f"a RoE block of {T} tokens exceeds the sliding window ({window}); score in blocks")
    start = cache.length
    base_pos = int(cache.pos[0, :start].max()) + 1 if start > 0 else 0
    positions = torch.arange(base_pos, base_pos + T, device=tokens.device).expand(roe.n, T)
    view = CleanCache(cache, roe.n)
    routing = roe_routing(model, roe, T, top_k, generator)
    block = torch.eye(T, dtype=torch.bool, device=tokens.device)
    out = model(tokens.expand(roe.n, T), positions=positions, cache=view, start=start, block_mask=block,
                logits=False, routing=routing)
    return out.hidden


def average_logprobs(member_logprobs: torch.Tensor) -> torch.Tensor:
    """(n, ...) log-probabilities of each member -> log of their mean probability (...)."""
    return torch.logsumexp(member_logprobs, dim=0) - math.log(member_logprobs.shape[0])
