"""A communication model for TP decoding, clearly a *model*: the ring all-reduce cost
T_AR(M, p) = 2(p-1)·α + 2(p-1)/p · M/β (α: per-step latency, β: per-link bandwidth), fitted to gloo here and
set from published figures for other interconnects, plus a per-token compute time measured here.

Per decode token with L blocks, k of them SPD: 1 embedding all-reduce + (2L - k) block all-reduces of d values
(an SPD block of a sandwich-norm model sends 2d in its one sync) + 1 all-gather of the logits (V/p per rank).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Published/nominal figures, per direction. α is chosen so that a small 8-rank all-reduce lands in the usually
# reported range (NCCL NVLink ~10-25 µs, PCIe ~30-60 µs; TCP Ethernet tens of µs per hop). Assumptions, not
# measurements.
LINKS: dict[str, tuple[float, float]] = {  # name -> (alpha_s, beta_bytes_per_s)
    "NVLink4 (H100 SXM)": (1.5e-6, 450e9),
    "PCIe 4.0 x16": (4e-6, 25e9),
    "100 GbE": (15e-6, 12.5e9),
    "25 GbE": (25e-6, 3.1e9),
}


@dataclass
class Fit:
    alpha_s: float
    beta_bytes_per_s: float


def allreduce_s(nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Ring all-reduce time of `nbytes` over `p` ranks."""
    return 0.0 if p == 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta


def allgather_s(nbytes_per_rank: float, p: int, alpha: float, beta: float) -> float:
    """Ring all-gather time of `nbytes_per_rank` from each of `p` ranks."""
    return 0.0 if p == 1 else (p - 1) * alpha + (p - 1) * nbytes_per_rank / beta


def fit_ring(sizes_bytes: list[int], seconds: list[float], p: int = 2) -> Fit:
    """Least-squares α, β of the ring model from measured all-reduce times at `p` ranks."""
    a_coef = 2 * (p - 1)
    b_coef = [2 * (p - 1) / p * m for m in sizes_bytes]
    n = len(seconds)
    sx, sy = sum(b_coef), sum(seconds)
    sxx, sxy = sum(b * b for b in b_coef), sum(b * s for b, s in zip(b_coef, seconds, strict=True))
    slope = (n * sxy - sx * sy) / max(n * sxx - sx * sx, 1e-30)  # seconds per byte = 1/β
    icpt = (sy - slope * sx) / n
    return Fit(max(icpt / a_coef, 1e-9), 1.0 / max(slope, 1e-18))


@dataclass
class Shape:
    """What the model needs of a decoder: blocks, width, vocabulary, bytes per activation value, and whether
    sandwich norms make an SPD sync carry 2d values."""

    n_layers: int
    dim: int
    vocab: int
    act_bytes: int = 4
    sandwich: bool = False


def comm_per_token_s(shape: Shape, p: int, dropped: int, alpha: float, beta: float) -> float:
    """Modelled communication per decoded token (batch 1)."""
    d = shape.dim * shape.act_bytes
    syncs = 2 * shape.n_layers - dropped
    t = (syncs + 1) * allreduce_s(d, p, alpha, beta)  # + the embedding's all-reduce
    if shape.sandwich:  # an SPD block's one sync carries [O_i, M_i]: 2d instead of d
        t += dropped * (allreduce_s(2 * d, p, alpha, beta) - allreduce_s(d, p, alpha, beta))
    return t + allgather_s(shape.vocab / p * 4, p, alpha, beta)  # fp32 logits


def predict(shape: Shape, compute_1_s: float, parallel_fraction: float, p: int, dropped: int, alpha: float,
            beta: float) -> dict:
    """Per-token latency at TP=p: compute_1_s·(f/p + 1 - f) + communication. f: share of the one-rank compute
    that splits over ranks (fitted from a TP=2 measurement, or 1 for an ideal split)."""
    compute = compute_1_s * (parallel_fraction / p + 1 - parallel_fraction)
    comm = comm_per_token_s(shape, p, dropped, alpha, beta)
    return {"p": p, "dropped": dropped, "compute_s": compute, "comm_s": comm, "latency_s": compute + comm,
            "comm_fraction": comm / (compute + comm)}


def spd_table(shape: Shape, compute_1_s: float, parallel_fraction: float, ps: tuple[int, ...],
              links: dict[str, tuple[float, float]]) -> list[dict]:
    """For each link and TP degree: latency with every sync kept and with every attention sync dropped."""
    rows = []
    for name, (alpha, beta) in links.items():
        for p in ps:
            tp = predict(shape, compute_1_s, parallel_fraction, p, 0, alpha, beta)
            spd = predict(shape, compute_1_s, parallel_fraction, p, shape.n_layers, alpha, beta)
            rows.append({"link": name, "p": p, "tp_ms": tp["latency_s"] * 1e3, "comm_fraction": tp["comm_fraction"],
                         "spd_all_ms": spd["latency_s"] * 1e3,
                         "spd_saving": 1 - spd["latency_s"] / tp["latency_s"]})
    return rows


def fit_dict(fit: Fit) -> dict:
    return asdict(fit)
