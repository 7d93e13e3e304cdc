"""A small analytical latency model for Mirror-SD (ours; the paper's equations were not retrievable).

One step = phase A (target prefix || draft refresh) + phase B (target suffix || draft rollouts) + verification,
plus a serial re-draft after a miss:

    overlap:  T = max(prefix, refresh) + max(suffix, rollouts) + (1 - h) * redraft + verify
    serial:   T = prefix + refresh + suffix + rollouts + (1 - h) * redraft + verify
    speedup vs plain decoding = tau * T_ar / T        (tau: tokens emitted per step)

The draft's latency is hidden iff refresh <= prefix and rollouts <= suffix; the miss term is the part of the
draft that can never be hidden. `from_stats` reads the per-step means from a `decode_mirror` run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class StepTimes:
    prefix_s: float  # target layers [0, l_e) + early-exit head, per step
    suffix_s: float  # target layers [l_e, N) + LM head, per step
    draft_refresh_s: float  # draft takes in verified context + window, per step
    draft_rollout_s: float  # batched branch rollouts, per step
    redraft_s: float  # one serial re-draft (paid on a miss)
    verify_s: float  # verification and bookkeeping, per step

    def __post_init__(self) -> None:
        for k, v in self.__dict__.items():
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")

    def scaled(self, target: float = 1.0, draft: float = 1.0) -> StepTimes:
        """Times with the target's parts divided by `target` and the draft's by `draft` (faster devices)."""
        return replace(self, prefix_s=self.prefix_s / target, suffix_s=self.suffix_s / target,
                       verify_s=self.verify_s / target, draft_refresh_s=self.draft_refresh_s / draft,
                       draft_rollout_s=self.draft_rollout_s / draft, redraft_s=self.redraft_s / draft)


def predict_step_s(t: StepTimes, hit_rate: float, overlap: bool = True) -> float:
    """Expected seconds per Mirror-SD step."""
    if not 0.0 <= hit_rate <= 1.0:
        raise ValueError(f"hit_rate must be in [0, 1], got {hit_rate}")
    if overlap:
        body = max(t.prefix_s, t.draft_refresh_s) + max(t.suffix_s, t.draft_rollout_s)
    else:
        body = t.prefix_s + t.draft_refresh_s + t.suffix_s + t.draft_rollout_s
    return body + (1.0 - hit_rate) * t.redraft_s + t.verify_s


def exposed_draft_s(t: StepTimes, hit_rate: float) -> float:
    """Draft time per step that the target does not hide (overlap path)."""
    return (max(0.0, t.draft_refresh_s - t.prefix_s) + max(0.0, t.draft_rollout_s - t.suffix_s)
            + (1.0 - hit_rate) * t.redraft_s)


def predict_speedup(t: StepTimes, tau: float, hit_rate: float, ar_token_s: float, overlap: bool = True) -> float:
    """Predicted tokens/s of Mirror-SD over plain decoding (ar_token_s: seconds per plain token)."""
    return tau * ar_token_s / predict_step_s(t, hit_rate, overlap)


def hit_rate(stats: dict) -> float:
    """The one definition of Mirror-SD's hit rate: the share of steps whose draft window came from a rollout
    branch, i.e. 1 - misses / steps (a miss pays a serial re-draft; the first window of a generation is one)."""
    return 1.0 - float(stats["misses"]) / max(float(stats["steps"]), 1.0)


def from_stats(stats: dict, n_tokens: int) -> tuple[StepTimes, float, float]:
    """Per-step means, hit rate (`hit_rate`) and tau from a `decode_mirror` run's stats (its `.extra`) and token
    count."""
    steps = max(float(stats["steps"]), 1.0)
    misses = float(stats["misses"])
    t = StepTimes(stats["prefix_s"] / steps, stats["suffix_s"] / steps, stats["draft_refresh_s"] / steps,
                  stats["draft_rollout_s"] / steps, stats["redraft_s"] / max(misses, 1.0), stats["accept_s"] / steps)
    return t, hit_rate(stats), max(n_tokens - 1, 1) / steps
