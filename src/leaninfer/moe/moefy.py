"""MoEfication of a dense gated FFN (Zhang et al. 2022, LLaMA-MoE): split the neurons into equal experts by
co-activation clustering, fit a router to predict each token's most useful experts, then fit router and
experts jointly so the sparse layer reproduces the dense one on collected inputs.

All functions are pure over tensors; `moe.build` runs them layer by layer and then trains end to end.
Expert e of a layer holds the neurons `groups[e]`: gate_up[e] = [gate[groups[e]]; up[groups[e]]] (2H, D) and
down[e] = down[:, groups[e]] (D, H), so with every expert active at weight 1 the MoE equals the dense FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leaninfer.models.moe import act_fn, route


def neuron_activations(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """x (N, D), gate/up (I, D) -> the FFN's intermediate activations act(gate x) * up x (N, I)."""
    return act_fn(act)(x @ gate.t()) * (x @ up.t())


def balanced_kmeans(features: torch.Tensor, n_clusters: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Cluster rows of `features` (I, F) into n_clusters groups of exactly I / n_clusters rows (cosine k-means
    with a greedy balanced assignment). Returns group ids (I,) in [0, n_clusters)."""
    n = features.shape[0]
    if n % n_clusters:
        raise ValueError(f"{n} neurons do not split into {n_clusters} equal experts")
    size = n // n_clusters
    f = F.normalize(features.float(), dim=-1)
    g = torch.Generator().manual_seed(seed)
    centroids = f[torch.randperm(n, generator=g)[:n_clusters]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        sim = f @ centroids.t()  # (I, C)
        top2 = sim.topk(2, dim=-1).values
        order = torch.argsort(top2[:, 0] - top2[:, 1], descending=True)  # most decided neurons choose first
        room = torch.full((n_clusters,), size)
        for i in order.tolist():
            c = int(sim[i].masked_fill(room == 0, float("-inf")).argmax())
            assign[i] = c
            room[c] -= 1
        centroids = F.normalize(torch.stack([f[assign == c].mean(0) for c in range(n_clusters)]), dim=-1)
    return assign


def split_experts(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, assign: torch.Tensor,
                  n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Dense gate/up (I, D), down (D, I) -> stacked gate_up (E, 2H, D), down (E, D, H), neuron groups."""
    groups = [torch.where(assign == e)[0] for e in range(n_experts)]
    gate_up = torch.stack([torch.cat([gate[ix], up[ix]]) for ix in groups])
    downs = torch.stack([down[:, ix] for ix in groups])
    return gate_up, downs, groups


def expert_norms(acts: torch.Tensor, down: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """Per token, the norm of each expert's output: acts (N, I) -> (N, E). The router's target signal."""
    return torch.stack([(acts[:, ix] @ down[:, ix].t()).norm(dim=-1) for ix in groups], dim=-1)


def fit_router(x: torch.Tensor, norms: torch.Tensor, steps: int = 200, lr: float = 3e-3,
               temperature: float | None = None) -> torch.Tensor:
    """Fit a linear router (E, D) so that softmax(router x) matches softmax(norms / temperature): the experts
    with the largest outputs get the largest probabilities. Returns the router weight."""
    temperature = temperature or float(norms.std().clamp_min(1e-6))
    target = torch.log_softmax(norms / temperature, dim=-1)
    w = torch.zeros(norms.shape[1], x.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        loss = F.kl_div(torch.log_softmax(x @ w.t(), -1), target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def sparse_ffn(x: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int,
               act: str) -> torch.Tensor:
    """Differentiable reference MoE forward (no renormalisation): x (N, D) -> (N, D)."""
    weights, idx = route(x @ router.t(), top_k, False)  # (N, k)
    out = torch.zeros_like(x)
    f = act_fn(act)
    gate_ups, downs = gate_up.unbind(0), down.unbind(0)
    for e in torch.unique(idx).tolist():
        rows, slot = torch.where(idx == e)
        g, u = (x[rows] @ gate_ups[e].t()).chunk(2, dim=-1)
        out = out.index_add(0, rows, (f(g) * u) @ downs[e].t() * weights[rows, slot, None])
    return out


def init_scales(x: torch.Tensor, router: torch.Tensor, top_k: int) -> torch.Tensor:
    """1 / (mean routing weight of each expert when chosen): scaling expert e's down projection by this makes
    a chosen expert contribute about its dense output at init. Returns (E,)."""
    weights, idx = route(x @ router.t(), top_k, False)
    E = router.shape[0]
    total = torch.zeros(E).index_add_(0, idx.flatten(), weights.flatten())
    count = torch.bincount(idx.flatten(), minlength=E).float().clamp_min(1)
    return count / total.clamp_min(1e-6)


def fit_layer(x: torch.Tensor, y: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
              top_k: int, act: str, steps: int, batch: int = 256, lr: float = 1e-4, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Fit router and experts jointly to the dense outputs y (N, D) on inputs x (N, D) with a relative squared
    error. Returns (router, gate_up, down, final relative error on all of x)."""
    params = [p.clone().requires_grad_(True) for p in (router, gate_up, down)]
    opt = torch.optim.Adam([{"params": params[:1], "lr": lr * 10}, {"params": params[1:], "lr": lr}])
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (batch,), generator=g)
        pred = sparse_ffn(x[rows], *params, top_k, act)
        loss = (pred - y[rows]).pow(2).sum() / y[rows].pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = float((sparse_ffn(x, *params, top_k, act) - y).pow(2).sum() / y.pow(2).sum())
    return params[0].detach(), params[1].detach(), params[2].detach(), err
