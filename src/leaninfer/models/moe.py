"""Mixture-of-experts feed-forward: router + stacked experts. Top-k, renormalisation and routing noise are
call arguments, so one checkpoint can be dialled per request, per call or per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models.attention import EXACT_MAX_T
from leaninfer.models.config import ModelConfig


@dataclass
class Routing:
    """Per-call routing options. None means the checkpoint's native behaviour."""

    top_k: int | None = None
    renorm: bool | None = None
    noise: torch.Tensor | None = None  # added to router log-probs before top-k (e.g. scaled Gumbel noise)
    keep: int | None = None  # PHDS soft mask: of the top_k experts, slots >= keep are scaled by eps
    eps: float = 1e-6


def act_fn(name: str):
    return F.silu if name == "silu" else (lambda x: F.gelu(x, approximate="tanh"))


def route(
    logits: torch.Tensor, top_k: int, renorm: bool, noise: torch.Tensor | None = None,
    keep: int | None = None, eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure routing: logits (N, E) -> (weights (N, k), expert ids (N, k)).

    Experts are chosen by top-k of log-softmax + noise; weights are the clean softmax probabilities of the
    chosen experts, renormalised to sum to one when `renorm`. With `keep` (PHDS training), the experts in
    slots >= keep of the top-k keep running but with their weight scaled by `eps` (before renormalising).
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if noise is None:
        weights, idx = torch.topk(probs, top_k, dim=-1)
    else:
        idx = torch.topk(torch.log(probs.clamp_min(1e-30)) + noise.float(), top_k, dim=-1).indices
        weights = probs.gather(-1, idx)
    if keep is not None and keep < top_k:
        scale = torch.ones(top_k, device=weights.device)
        scale[keep:] = eps
        weights = weights * scale
    if renorm:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, idx


class MoE(nn.Module):
    """Sparse FFN. Experts are stacked: gate_up (E, 2I, D), down (E, D, I); optional gated shared expert."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, H = cfg.n_experts, cfg.dim, cfg.moe_intermediate_size or cfg.intermediate_size
        self.router = nn.Linear(D, E, bias=False)
        self.gate_up = nn.Parameter(torch.zeros(E, 2 * H, D))  # (E, 2H, D)
        self.down = nn.Parameter(torch.zeros(E, D, H))  # (E, D, H)
        self.act = act_fn(cfg.act)
        if cfg.shared_expert_intermediate_size:
            from leaninfer.models.transformer import MLP

            self.shared = MLP(D, cfg.shared_expert_intermediate_size, cfg.act)
            self.shared_gate = nn.Linear(D, 1, bias=False)
        else:
            self.shared = None

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D). Cost grows with top_k: only chosen experts run."""
        routing = routing or Routing()
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        k = routing.top_k or self.cfg.top_k
        if not 0 < k <= self.cfg.n_experts:
            raise ValueError(f"top_k must be in 1..{self.cfg.n_experts}, got {k}")
        renorm = self.cfg.norm_topk_prob if routing.renorm is None else routing.renorm
        noise = None if routing.noise is None else routing.noise.reshape(-1, self.cfg.n_experts)
        weights, idx = route(self.router(flat), k, renorm, noise, routing.keep, routing.eps)  # (N, k)
        out = (self.packed if hasattr(self, "packed") else self._experts)(flat, weights.to(flat.dtype), idx)
        if self.shared is not None:
            # the (N, 1) gate's sigmoid in float64: a vectorised and a scalar fp32 sigmoid can differ in the last
            # bit, and which one an element gets depends on N, so a token in a block would differ from it alone
            gate = torch.sigmoid(self.shared_gate(flat).double()).to(flat.dtype)  # (N, 1)
            out = out + gate * self.shared(flat)
        return out.view(B, T, D)

    def _experts(self, flat: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """flat (N, D), weights/idx (N, k) -> (N, D). Up to EXACT_MAX_T tokens (decode steps, verification
        blocks) every token-expert pair is its own one-row matmul and the k outputs are summed in slot order, so
        a token gets the same bits alone or in any block (lossless speculation); this is also ~10x faster than
        gathering the chosen experts' weights for a bmm. Longer inputs (prefill, training) group rows by expert."""
        N, k = idx.shape
        if N <= EXACT_MAX_T:
            gate_ups, downs = self.gate_up.unbind(0), self.down.unbind(0)
            ys = []
            for n, experts in enumerate(idx.tolist()):
                row = flat[n : n + 1]  # (1, D)
                for e in experts:
                    g, u = F.linear(row, gate_ups[e]).chunk(2, dim=-1)  # (1, I) each
                    ys.append(F.linear(self.act(g) * u, downs[e]))  # (1, D)
            return (torch.cat(ys).view(N, k, -1) * weights[:, :, None]).sum(1)
        out = torch.zeros_like(flat)
        # views, one per expert: unbind's backward stacks the expert gradients once, where indexing the stack per
        # expert would zero-fill a full-size gradient for every expert (training)
        gate_ups, downs = self.gate_up.unbind(0), self.down.unbind(0)
        for e in torch.unique(idx).tolist():  # prefill: group tokens by expert
            rows, slot = torch.where(idx == e)
            g, u = F.linear(flat[rows], gate_ups[e]).chunk(2, dim=-1)
            y = F.linear(self.act(g) * u, downs[e])
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out


def gumbel_noise(shape: tuple[int, ...], tau: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Scaled Gumbel(0, 1) noise for `Routing.noise`: top-k of log p + tau * G samples k experts without
    replacement with probabilities following p (Gumbel-top-k); tau = 0 gives clean routing."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return tau * -torch.log(-torch.log(u))
