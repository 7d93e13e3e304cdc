"""SAL hyper-parameter selection on **validation** streams (never the test streams).

The bench corpus has no validation streams (DataConfig.streams = (120, 0, 120)), so this renders 1 h of
val-split streams (val speakers, disjoint from train and test) with the same generator, trains the conv
wake-phrase detector with CE and with each SAL candidate for every seed at the bench budget, and scores
FRR at 2 FA/h with the bench's metric code. Rule (fixed before looking at the numbers): the SAL candidate
with the lowest mean val FRR at 2 FA/h is used by the bench; CE is trained exactly as in the bench.

    python -m leaninfer.streaming.kws.sal_select            # ~25 model trainings, ~20 min on one thread
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm import tqdm

from leaninfer.streaming.features import LogMel
from leaninfer.streaming.kws.bench import N_THRESHOLDS, TASK_FA, TASK_REFRACTORY, BenchConfig
from leaninfer.streaming.kws.data import _build_streams, build_corpus
from leaninfer.streaming.kws.models import ModelConfig
from leaninfer.streaming.kws.train import TrainConfig, stream_posteriors, train_frames
from leaninfer.streaming.metrics import at_fa_rate, default_thresholds, detection_curve, frame_targets, smooth

# Searched (lambda, tau[, class balance]); (4, 10) is the default fixed before any run.
CANDIDATES = (
    {"sal_lambda": 4.0, "sal_tau": 10.0},
    {"sal_lambda": 1.0, "sal_tau": 10.0},
    {"sal_lambda": 4.0, "sal_tau": 30.0},
    {"sal_lambda": 1.0, "sal_tau": 5.0},
    {"sal_lambda": 2.0, "sal_tau": 5.0},
    {"sal_lambda": 4.0, "sal_tau": 5.0},
    {"sal_lambda": 4.0, "sal_tau": 10.0, "sal_balance": True},
)


def val_streams(bc: BenchConfig, n: int = 120):
    with tqdm(total=n, desc="val streams") as bar:
        return _build_streams(bc.data, "val", n, LogMel(bc.data.sample_rate), bar)


def score(model, streams, task: str = "kws") -> dict[str, float]:
    wins = [frame_targets(ev, f.shape[0], task)[2] for ev, f in zip(streams.events, streams.feats)]
    scores = [smooth(s, 5) for s in stream_posteriors(model, streams)]
    curve = detection_curve(scores, wins, streams.hours, default_thresholds(N_THRESHOLDS), TASK_REFRACTORY[task])
    return at_fa_rate(curve, TASK_FA[task])


def main() -> dict:
    torch.set_num_threads(1)
    bc = BenchConfig()
    train = build_corpus(bc.data)["streams"]["train"]
    val = val_streams(bc)
    cells = [("ce", {})] + [("sal", c) for c in CANDIDATES]
    out = {}
    for loss, hp in cells:
        pts = []
        for seed in bc.sal_seeds:
            tc = TrainConfig(steps=bc.frame_steps, batch=bc.frame_batch, seed=seed, loss=loss, **hp)
            pts.append(score(train_frames(ModelConfig(kind="unibranch", n_out=1), tc, train, "kws"), val))
        key = loss + ("" if not hp else " " + json.dumps(hp, sort_keys=True))
        out[key] = {
            "frr": float(np.mean([p["frr"] for p in pts])),
            "per_seed": [round(p["frr"], 1) for p in pts],
            "latency_ms": float(np.nanmean([p["latency_ms"] for p in pts])),
        }
        print(key, out[key], flush=True)
    return out


if __name__ == "__main__":
    main()
