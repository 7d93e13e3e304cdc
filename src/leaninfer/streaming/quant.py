"""Weight quantisers for post-training compression (pure functions + a model-level helper).

Uniform convention (stated once, used everywhere): per-output-channel **symmetric, full range**.
b-bit integer levels are {-2^(b-1), ..., 2^(b-1) - 1} (2^b levels), scale s_o = max|W_o| / 2^(b-1),
q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1), W^ = q * s. So 2-bit uses {-2, -1, 0, 1} * s; the largest
positive weight is clipped to (2^(b-1) - 1) * s.

k-means palettisation: per-tensor 1-D k-means (Lloyd, quantile init) with 2^b centroids.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def quantize_uniform(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric quantisation. w (O, ...) -> (int codes (O, ...), scale (O,))."""
    if bits < 2:
        raise ValueError("uniform quantisation needs >= 2 bits")
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 2 ** (bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(flat / scale[:, None]), qmin, qmax)
    return q.reshape(w.shape).to(torch.int8), scale


def dequantize_uniform(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)


def fake_quant_uniform(w: torch.Tensor, bits: int) -> torch.Tensor:
    return dequantize_uniform(*quantize_uniform(w, bits))


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor. Returns (centroids (k,), assignment (N,))."""
    v = values.reshape(-1).float()
    uniq = torch.unique(v)
    if uniq.numel() <= k:  # already on a palette of <= k values: exact
        return uniq, (v[:, None] - uniq[None]).abs().argmin(dim=1)
    cent = torch.quantile(v, torch.linspace(0, 1, k + 2)[1:-1]) if k > 1 else v.mean().reshape(1)
    for _ in range(iters):
        assign = (v[:, None] - cent[None]).abs().argmin(dim=1)
        new = torch.stack([v[assign == j].mean() if (assign == j).any() else cent[j] for j in range(k)])
        if torch.allclose(new, cent):
            break
        cent = new
    assign = (v[:, None] - cent[None]).abs().argmin(dim=1)
    return cent, assign


def palettize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Replace every weight by its nearest of 2^bits k-means centroids (per tensor)."""
    cent, assign = kmeans_1d(w, 2**bits)
    return cent[assign].reshape(w.shape)


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """Conv / Linear / GRU weight matrices (biases and norm parameters stay in float)."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            out.append(m.weight)
        elif isinstance(m, nn.GRU):
            out += [p for n, p in m.named_parameters() if n.startswith("weight")]
    return out


def quantize_model(model: nn.Module, bits: int, method: str = "uniform", edge_bits: int | None = 8) -> nn.Module:
    """A copy of `model` whose weights are fake-quantised ("uniform" per-channel or "kmeans" palettised).

    edge_bits: the first and last weight tensors (input stem, output head) use this many bits with the uniform
    quantiser (common practice; None quantises them at `bits` too).
    """
    model = copy.deepcopy(model)
    weights = _weights(model)
    with torch.no_grad():
        for i, w in enumerate(weights):
            if edge_bits is not None and i in (0, len(weights) - 1):
                w.copy_(fake_quant_uniform(w, max(bits, edge_bits)))
            else:
                w.copy_(fake_quant_uniform(w, bits) if method == "uniform" else palettize(w, bits))
    return model


def weight_stats(model: nn.Module) -> dict[str, float]:
    """max |W| and mean excess kurtosis over the quantised weight tensors."""
    ws = [w.detach().reshape(-1) for w in _weights(model)]
    kurt = [float(((w - w.mean()) ** 4).mean() / (w.var(unbiased=False) ** 2 + 1e-12) - 3) for w in ws]
    return {"max_abs": max(float(w.abs().max()) for w in ws), "kurtosis": sum(kurt) / len(kurt)}
