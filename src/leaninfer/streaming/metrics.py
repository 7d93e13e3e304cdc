"""Detection metrics for streaming detectors (pure numpy/torch functions).

Frame grid: frame t covers samples [t*hop, t*hop + win) (see features.LogMel). An event that ends at
sample e is first fully visible at frame ceil((e - win) / hop) — its **anchor frame**.

Triggers: the causal moving average (`smooth` frames) of the posterior crosses the threshold upwards;
after a trigger the detector is silent for `refractory` frames. A trigger inside an event's acceptance
window [lo, hi] detects that event (first trigger counts); every other trigger is a false accept.
FA/hour is false accepts divided by the total stream duration. Latency = (trigger - anchor) * hop.
"""

from __future__ import annotations

import numpy as np
import torch

HOP_S, WIN_S = 0.010, 0.025


def time_to_frame(t_s: float, hop_s: float = HOP_S, win_s: float = WIN_S) -> int:
    """First frame whose window contains time t_s."""
    return max(0, int(np.ceil((t_s - win_s) / hop_s - 1e-9)))


def clip_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of (N, C) logits."""
    return float((logits.argmax(dim=-1) == labels).float().mean() * 100.0) if labels.numel() else float("nan")


def frame_targets(
    events: list[dict], n_frames: int, task: str = "kws", pre: int = 5, post: int = 20
) -> tuple[np.ndarray, list[int], list[tuple[int, int, int]]]:
    """Frame labels, anchor frames and detection windows for one stream.

    task "kws": positives are frames [a - pre, a + post] around the end anchor a of each wake phrase;
      windows (a, start, end + 1 s).
    task "onset": positives are the frames of every utterance; anchors are the onset frames;
      windows (a, a, end).
    Returns (targets (T,) float32, anchors, windows [(anchor, lo, hi)]).
    """
    y = np.zeros(n_frames, dtype=np.float32)
    anchors, windows = [], []
    for ev in events:
        start, end = time_to_frame(ev["start"]), time_to_frame(ev["end"])
        if task == "kws":
            if ev["kind"] != "wake":
                continue
            y[max(0, end - pre) : min(n_frames, end + post + 1)] = 1.0
            anchors.append(end)
            windows.append((end, start, end + 100))
        elif task == "onset":
            y[start : min(n_frames, end + 1)] = 1.0
            anchors.append(start)
            windows.append((start, start, end))
        else:
            raise ValueError("task must be 'kws' or 'onset'")
    return y, anchors, windows


def smooth(scores: np.ndarray, width: int) -> np.ndarray:
    """Causal moving average over `width` frames."""
    if width <= 1:
        return scores
    c = np.cumsum(np.concatenate([np.zeros(width), scores]))
    return (c[width:] - c[:-width]) / width


def triggers(scores: np.ndarray, threshold: float, refractory: int = 100) -> list[int]:
    """Frames where scores rise to >= threshold, at most one per refractory period."""
    above = scores >= threshold
    rising = np.flatnonzero(above & ~np.concatenate([[False], above[:-1]]))
    out, last = [], -(10**9)
    for t in rising:
        if t - last >= refractory:
            out.append(int(t))
            last = t
    return out


def detection_curve(
    scores: list[np.ndarray],
    windows: list[list[tuple[int, int, int]]],
    hours: float,
    thresholds: np.ndarray,
    refractory: int = 100,
    hop_ms: float = 10.0,
) -> dict[str, np.ndarray]:
    """FRR (%), FA/hour and mean/median latency (ms) for every threshold.

    A trigger counts for the first window (in stream order) that contains it; a later trigger in an already
    detected window is ignored, a trigger in no window is a false accept. The streams are scored as one array
    with `refractory` silent (-inf) frames between them, so a trigger never suppresses one in the next stream;
    window bounds must increase along each stream (they do for `frame_targets`).
    """
    gap = np.full(max(refractory, 1), -np.inf)
    parts, lo, hi, anchor, offset = [], [], [], [], 0
    for s, wins in zip(scores, windows):
        parts += [np.asarray(s, dtype=np.float64), gap]
        for a, w_lo, w_hi in wins:
            anchor.append(a + offset)
            lo.append(w_lo + offset)
            hi.append(min(w_hi, len(s) - 1) + offset)
        offset += len(s) + gap.size
    flat = np.concatenate(parts) if parts else np.zeros(0)
    lo, hi, anchor = np.asarray(lo), np.asarray(hi), np.asarray(anchor)
    n_events = lo.size
    frr, fa, lat_mean, lat_p50 = [], [], [], []
    for th in thresholds:
        trig = np.asarray(triggers(flat, th, refractory), dtype=np.int64)
        i = np.searchsorted(hi, trig, side="left")  # first window whose end is not before the trigger
        inside = i < n_events
        inside[inside] = lo[i[inside]] <= trig[inside]
        hit, first = np.unique(i[inside], return_index=True)  # triggers are sorted: first = earliest per window
        lats = (trig[inside][first] - anchor[hit]) * hop_ms
        frr.append(100.0 * (1 - hit.size / max(n_events, 1)))
        fa.append(int((~inside).sum()) / max(hours, 1e-9))
        lat_mean.append(float(np.mean(lats)) if lats.size else float("nan"))
        lat_p50.append(float(np.median(lats)) if lats.size else float("nan"))
    return {
        "threshold": np.asarray(thresholds),
        "frr": np.asarray(frr),
        "fa_per_hour": np.asarray(fa),
        "latency_ms": np.asarray(lat_mean),
        "latency_p50_ms": np.asarray(lat_p50),
    }


def at_fa_rate(curve: dict[str, np.ndarray], target: float) -> dict[str, float]:
    """The operating point with the lowest FRR among thresholds whose FA/hour <= target."""
    ok = np.flatnonzero(curve["fa_per_hour"] <= target + 1e-9)
    if ok.size == 0:
        return {"threshold": float("nan"), "frr": 100.0, "fa_per_hour": float("nan"), "latency_ms": float("nan")}
    i = ok[np.argmin(curve["frr"][ok])]
    return {k: float(curve[k][i]) for k in ("threshold", "frr", "fa_per_hour", "latency_ms")}


def default_thresholds(n: int = 121) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.linspace(-4.0, 10.0, n)))
