"""Range regularisers R^2 (arXiv 2303.08253, reconstructed; see docs/kws.md). One small class per regulariser.

Each maps a list of weight tensors to a scalar that is added as lam * R during full-precision training.
Ranges are taken per output channel (dim 0), matching the per-channel quantiser they prepare for.

* LInf:       sum_l mean_o max_i |W_oi|
* Margin:     sum_l mean_o sum_i relu(|W_oi| - m_o)^2 / n, with margin m_o = c * std(W_o)
* SoftMinMax: sum_l mean_o [smax_a(W_o) - smin_a(W_o)], log-sum-exp soft extremes with temperature a
"""

from __future__ import annotations

import torch


class RangeRegularizer:
    """Base: `__call__(weights) -> scalar tensor`."""

    name = "none"

    def per_tensor(self, w: torch.Tensor) -> torch.Tensor:
        return w.new_zeros(())

    def __call__(self, weights: list[torch.Tensor]) -> torch.Tensor:
        if not weights:
            return torch.zeros(())
        return sum(self.per_tensor(w.reshape(w.shape[0], -1)) for w in weights)


class LInf(RangeRegularizer):
    """Penalise the largest |weight| of each output channel."""

    name = "linf"

    def per_tensor(self, w: torch.Tensor) -> torch.Tensor:  # (O, N)
        return w.abs().amax(dim=1).mean()


class Margin(RangeRegularizer):
    """Squared hinge on weights outside +-c*std of their channel (pulls outliers into the bulk)."""

    name = "margin"

    def __init__(self, c: float = 2.0):
        self.c = c

    def per_tensor(self, w: torch.Tensor) -> torch.Tensor:
        m = self.c * w.std(dim=1, keepdim=True)  # (O, 1), differentiable
        return (torch.relu(w.abs() - m) ** 2).sum(dim=1).mean()


class SoftMinMax(RangeRegularizer):
    """Smooth range: (1/a) logsumexp(a w) + (1/a) logsumexp(-a w), scaled per channel."""

    name = "smm"

    def __init__(self, alpha: float = 20.0):
        self.alpha = alpha

    def per_tensor(self, w: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        smax = torch.logsumexp(a * w, dim=1) / a
        smin = -torch.logsumexp(-a * w, dim=1) / a
        return (smax - smin).mean()


REGULARIZERS = {"none": RangeRegularizer, "linf": LInf, "margin": Margin, "smm": SoftMinMax}


def make_regularizer(name: str) -> RangeRegularizer:
    if name not in REGULARIZERS:
        raise ValueError(f"regulariser must be one of {list(REGULARIZERS)}")
    return REGULARIZERS[name]()
