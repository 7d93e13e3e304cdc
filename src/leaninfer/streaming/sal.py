"""Streaming Anchor Loss (SAL) and its focal variants for frame-wise binary detectors (pure functions).

Reconstruction (arXiv 2310.05886 gives the idea, not these exact formulas; see docs/kws.md):

    w_t   = 1 + lam * kappa(d_t),  d_t = distance (frames) from t to the nearest anchor, kappa(0) = 1
    SAL   = sum_t w_t * CE_t / sum_t w_t                      (normalised by the weights: same scale as CE)
    SA+FL = sum_t w_t * FL_t / sum_t w_t,  FL_t = -(1 - p~_t)^gamma log p~_t
    SAFL  = sum_t -(1 - p~_t)^(gamma * kappa(d_t)) log p~_t / T    (anchor-modulated focusing)

Sequences without anchors get w = 1 everywhere. With lam = 0 SAL is exactly the mean frame-wise CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("exp", "gauss", "tri", "box")


def anchor_kernel(distance: torch.Tensor, tau: float, kind: str = "exp") -> torch.Tensor:
    """kappa(d): 1 at the anchor, decreasing with |d| (frames); inf distance -> 0."""
    d = distance.abs().float()
    if kind == "exp":
        return torch.exp(-d / tau)
    if kind == "gauss":
        return torch.exp(-(d**2) / (2 * tau**2))
    if kind == "tri":
        return torch.clamp(1 - d / tau, min=0)
    if kind == "box":
        return (d <= tau).float()
    raise ValueError(f"kernel must be one of {KERNELS}")


def anchor_distance(anchors: list[list[int]], n_frames: int, one_sided: bool = False) -> torch.Tensor:
    """(B, T) distance of each frame to the nearest anchor (inf when a sequence has none).

    one_sided: frames after an anchor count as infinitely far (weights only the run-up to the anchor).
    """
    t = torch.arange(n_frames, dtype=torch.float32)
    out = torch.full((len(anchors), n_frames), float("inf"))
    for b, seq in enumerate(anchors):
        for a in seq:
            d = (t - a).abs()
            if one_sided:
                d = torch.where(t <= a, d, torch.full_like(d, float("inf")))
            out[b] = torch.minimum(out[b], d)
    return out


def anchor_weights(distance: torch.Tensor, lam: float, tau: float, kind: str = "exp") -> torch.Tensor:
    """w_t = 1 + lam * kappa(d_t)."""
    return 1.0 + lam * anchor_kernel(distance, tau, kind)


def balance_weights(w: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale w per class so that sum(w over class-c valid frames) = number of class-c valid frames."""
    out = torch.zeros_like(w)
    pos = targets > 0.5
    for cls in (pos, ~pos):
        sel = cls & (mask > 0)
        if sel.any():
            out = torch.where(sel, w * (sel.float().sum() / w[sel].sum().clamp_min(1e-8)), out)
    return out


def _log_ptilde(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p~ = log p(y_t) for sigmoid logits, numerically stable."""
    return -F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")


def frame_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain mean frame-wise binary CE over (B, T)."""
    ce = -_log_ptilde(logits, targets)
    m = torch.ones_like(ce) if mask is None else mask.float()
    return (ce * m).sum() / m.sum().clamp_min(1)


def sal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    distance: torch.Tensor,
    lam: float = 4.0,
    tau: float = 10.0,
    kind: str = "exp",
    variant: str = "sal",
    gamma: float = 2.0,
    mask: torch.Tensor | None = None,
    class_balanced: bool = False,
) -> torch.Tensor:
    """Anchor-weighted frame loss.

    Args:
        logits, targets: (B, T) sigmoid logits and {0, 1} frame labels.
        distance: (B, T) frames to the nearest anchor (from `anchor_distance`).
        variant: "sal" (weighted CE), "sa+fl" (weighted focal), "safl" (anchor-modulated focal exponent).
        mask: optional (B, T) valid-frame mask.
        class_balanced: rescale the anchor weights within each class (target 0 / 1) so that each class keeps
            the total weight it has under plain CE. Anchors sit inside the positive regions, so plain anchor
            weighting also shifts the class balance towards positives (a prior shift that costs false accepts
            at low FA rates); balanced, SAL only redistributes weight *in time* within each class.
    """
    logp = _log_ptilde(logits, targets)  # (B, T)
    m = torch.ones_like(logp) if mask is None else mask.float()
    kappa = anchor_kernel(distance, tau, kind)
    if variant in ("sal", "sa+fl"):
        w = (1.0 + lam * kappa) * m
        if class_balanced:
            w = balance_weights(w, targets, m)
        per_frame = -logp if variant == "sal" else -((1 - logp.exp()) ** gamma) * logp
        return (per_frame * w).sum() / w.sum().clamp_min(1e-8)
    p_tilde = logp.exp()
    if variant == "safl":
        g = gamma * kappa
        return (-((1 - p_tilde) ** g) * logp * m).sum() / m.sum().clamp_min(1)
    raise ValueError("variant must be 'sal', 'sa+fl' or 'safl'")
