"""Frame-level average precision as in the AVA-ActiveSpeaker evaluation ("mAP" over face-frames).

All labelled face-frames are pooled and ranked by score (descending; ties keep input order, as a stable sort).
Precision and recall are taken at every rank; precision is made monotone (each value replaced by the best
precision at any later rank), and AP is the sum of precision times the recall increase at each rank where
recall grows. This is the interpolated, VOC/ActivityNet-style AP that the AVA evaluation script uses.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """scores (N,) float, labels (N,) in {0, 1} (entries < 0 are ignored) -> AP in [0, 1] (NaN without positives)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep].astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / n_pos
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this or any later rank
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def ava_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """AVA "mAP" in percent: AP of the speaking class over all labelled face-frames (any shapes, flattened)."""
    return 100.0 * average_precision(scores, labels)
