"""Training loops for clip classifiers (RepCNN / unibranch / BC-ResNet / GRU) and frame-wise detectors (CE vs SAL).

Single-threaded on purpose (`torch.set_num_threads(1)`): the models are tiny and the machine is shared.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.streaming import sal as sal_lib
from leaninfer.streaming.kws.data import ClipSet, StreamSet
from leaninfer.streaming.kws.models import ModelConfig, build_model, hold_frames, time_stride
from leaninfer.streaming.metrics import clip_accuracy, frame_targets
from leaninfer.streaming.r2 import make_regularizer
from leaninfer.streaming.reparam import fused_kernels

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 400
    batch: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.0
    seed: int = 0
    reg: str = "none"  # R^2 regulariser: none | linf | margin | smm
    reg_lambda: float = 0.0
    loss: str = "ce"  # frame tasks: ce | sal | sa+fl | safl
    sal_lambda: float = 4.0
    sal_tau: float = 10.0
    sal_balance: bool = False  # class-balanced anchor weights (sal.balance_weights)
    segment: int = 300  # frames per training segment for stream tasks

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be positive")
        if self.loss not in ("ce", "sal", "sa+fl", "safl"):
            raise ValueError("loss must be ce, sal, sa+fl or safl")


def _optimizer(model: nn.Module, tc: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    warm = max(1, tc.steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, tc.steps - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def regularised_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weights R^2 acts on: the fused (inference-time) conv kernels, plus any other conv/linear/GRU weights."""
    kernels = fused_kernels(model)
    if kernels:
        head = [
            m.weight
            for m in model.modules()
            if isinstance(m, nn.Conv1d)
            and m.kernel_size[0] == 1
            and getattr(m, "bias", None) is not None
            and m.weight.shape[0] == getattr(model, "cfg").n_out
        ]
        return kernels + head
    return [p for n, p in model.named_parameters() if p.dim() > 1]


def clip_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """(B, T, M) -> (B, C): mean of the per-frame logits."""
    return model(feats).mean(dim=1)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random level shift (log-mel offset) and one time mask per clip."""
    b, t, _ = x.shape
    x = x + (torch.rand(b, 1, 1, generator=gen) - 0.5) * 2.0
    width = torch.randint(0, max(2, t // 10), (b,), generator=gen)
    start = (torch.rand(b, generator=gen) * (t - width)).long()
    frames = torch.arange(t)[None]
    mask = (frames >= start[:, None]) & (frames < (start + width)[:, None])
    return x.masked_fill(mask[..., None], float(x.mean()))


def train_clips(
    mcfg: ModelConfig,
    tc: TrainConfig,
    train: ClipSet,
    norm: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress=None,
) -> nn.Module:
    """Train a clip classifier with CE on mean-pooled frame logits (+ lam * R^2 if tc.reg != 'none')."""
    torch.set_num_threads(1)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = build_model(mcfg)
    model.feat_norm = norm or feature_norm(train.feats)
    opt, sched = _optimizer(model, tc)
    reg = make_regularizer(tc.reg)
    n = train.labels.numel()
    model.train()
    for step in range(tc.steps):
        idx = torch.randint(0, n, (tc.batch,), generator=gen)
        x = _augment(normalise(model, train.feats[idx]), gen)
        loss = F.cross_entropy(clip_logits(model, x), train.labels[idx])
        if tc.reg != "none" and tc.reg_lambda > 0:
            loss = loss + tc.reg_lambda * reg(regularised_weights(model))
        _step(opt, sched, loss, progress)
    return model.eval()


def feature_norm(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global per-mel mean/std of (N, T, M) or (T, M) features."""
    flat = feats.reshape(-1, feats.shape[-1])
    return flat.mean(0), flat.std(0).clamp_min(1e-3)


def normalise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean, std = model.feat_norm
    return (x - mean) / std


@torch.inference_mode()
def eval_clips(model: nn.Module, clips: ClipSet, batch: int = 256) -> float:
    model.eval()
    logits = torch.cat(
        [
            clip_logits(model, normalise(model, clips.feats[i : i + batch]))
            for i in range(0, clips.labels.numel(), batch)
        ]
    )
    return clip_accuracy(logits, clips.labels)


def _stream_segments(streams: StreamSet, task: str, tc: TrainConfig, gen: torch.Generator):
    """Random (feats, targets, anchor-distance) batches of tc.segment frames from the training streams."""
    labelled = []
    for feats, events in zip(streams.feats, streams.events):
        y, anchors, _ = frame_targets(events, feats.shape[0], task)
        dist = sal_lib.anchor_distance([anchors], feats.shape[0])[0]
        labelled.append((feats, torch.from_numpy(y), dist))
    while True:
        xs, ys, ds = [], [], []
        for _ in range(tc.batch):
            feats, y, dist = labelled[int(torch.randint(0, len(labelled), (1,), generator=gen))]
            s = int(torch.randint(0, max(1, feats.shape[0] - tc.segment), (1,), generator=gen))
            xs.append(feats[s : s + tc.segment])
            ys.append(y[s : s + tc.segment])
            ds.append(dist[s : s + tc.segment])
        yield torch.stack(xs), torch.stack(ys), torch.stack(ds)


def frame_loss(logits: torch.Tensor, y: torch.Tensor, dist: torch.Tensor, tc: TrainConfig) -> torch.Tensor:
    if tc.loss == "ce":
        return sal_lib.frame_ce(logits, y)
    return sal_lib.sal_loss(
        logits, y, dist, lam=tc.sal_lambda, tau=tc.sal_tau, variant=tc.loss, class_balanced=tc.sal_balance
    )


def train_frames(mcfg: ModelConfig, tc: TrainConfig, streams: StreamSet, task: str, progress=None) -> nn.Module:
    """Train a per-frame binary detector (n_out = 1) on stream segments with CE or an anchor loss."""
    torch.set_num_threads(1)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = build_model(mcfg)
    model.feat_norm = feature_norm(torch.cat(streams.feats[:50]))
    opt, sched = _optimizer(model, tc)
    batches = _stream_segments(streams, task, tc, gen)
    model.train()
    stride = time_stride(model)
    for _ in range(tc.steps):
        x, y, dist = next(batches)
        logits = model(normalise(model, x))[..., 0]  # (B, T // stride)
        y, dist = (aligned_frames(t, stride, logits.shape[1]) for t in (y, dist))
        loss = frame_loss(logits, y, dist, tc)
        _step(opt, sched, loss, progress)
    return model.eval()


def aligned_frames(t: torch.Tensor, stride: int, n_out: int) -> torch.Tensor:
    """(B, T) per-frame targets -> (B, n_out) at the input frames a stride-`stride` model's outputs align with."""
    return t if stride == 1 else t[:, stride - 1 :: stride][:, :n_out]


@torch.inference_mode()
def stream_posteriors(model: nn.Module, streams: StreamSet) -> list[np.ndarray]:
    """Per-frame sigmoid posteriors of a causal detector over each stream (whole-stream causal forward).

    A strided model's outputs are held on the 10 ms grid (what a streaming runtime shows at each frame);
    frames before its first output get posterior 0.
    """
    model.eval()
    out = []
    for f in streams.feats:
        logits = model(normalise(model, f[None]))[..., 0]  # (1, T // stride)
        logits = hold_frames(logits, time_stride(model), f.shape[0], fill=float("-inf"))
        out.append(torch.sigmoid(logits[0]).numpy())
    return out


def _step(opt, sched, loss, progress) -> None:
    """One optimiser + scheduler step on `loss`, then tick the progress callback."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if progress is not None:
        progress(1)
