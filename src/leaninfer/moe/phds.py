"""MoE-PHDS (arXiv 2509.23012) training schedule: one global k per step, drawn uniformly from a set, then a
curriculum that shifts the draw to a low anchor k. During training the router still runs the native top-k
(k_pre) experts; experts outside the drawn k get weight eps (`Routing(top_k=k_pre, keep=k, eps=eps)`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from leaninfer.models.moe import Routing


@dataclass
class PHDSSchedule:
    k_set: list[int]
    total_steps: int
    anchor_k: int | None = None  # None: multi-k only
    anchor_start: float = 0.9  # fraction of training where the shift to the anchor begins
    ramp: float = 0.05  # fraction of training over which the draw moves from uniform to the anchor
    k_pre: int | None = None  # the checkpoint's native k (default: max of k_set)
    eps: float = 1e-6
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.k_set or min(self.k_set) < 1:
            raise ValueError(f"k_set must hold positive k values, got {self.k_set}")
        self.k_set = sorted(set(self.k_set))
        self.k_pre = self.k_pre or max(self.k_set)
        if max(self.k_set) > self.k_pre:
            raise ValueError(f"k_set {self.k_set} exceeds k_pre {self.k_pre}")
        if self.anchor_k is not None and self.anchor_k not in self.k_set:
            raise ValueError(f"anchor_k {self.anchor_k} is not in k_set {self.k_set}")
        if self.total_steps < 1 or not 0 <= self.anchor_start <= 1 or self.ramp < 0:
            raise ValueError("need total_steps >= 1, 0 <= anchor_start <= 1, ramp >= 0")
        self._gen = torch.Generator().manual_seed(self.seed)

    def anchor_weight(self, step: int) -> float:
        """0 before the curriculum, rising linearly to 1 over the ramp, 1 after it."""
        if self.anchor_k is None:
            return 0.0
        t = step / self.total_steps
        if t < self.anchor_start:
            return 0.0
        if self.ramp == 0:
            return 1.0
        return min(1.0, (t - self.anchor_start) / self.ramp)

    def distribution(self, step: int) -> dict[int, float]:
        """P(k) at `step`: (1 - a) * uniform(k_set) + a * onehot(anchor_k)."""
        a = self.anchor_weight(step)
        probs = {k: (1 - a) / len(self.k_set) for k in self.k_set}
        if self.anchor_k is not None:
            probs[self.anchor_k] += a
        return probs

    def sample_k(self, step: int) -> int:
        probs = self.distribution(step)
        ks = list(probs)
        i = int(torch.multinomial(torch.tensor([probs[k] for k in ks]), 1, generator=self._gen))
        return ks[i]

    def routing(self, step: int) -> tuple[int, Routing]:
        """Draw this step's k and the soft-mask routing that trains it."""
        k = self.sample_k(step)
        return k, Routing(top_k=self.k_pre, keep=k, eps=self.eps)
