"""Two-stage training: (1) encoders with per-frame heads, (2) temporal back ends on frozen embeddings.

Stage 1 trains `Front` on short random windows with Light-ASD's per-frame losses (audio-visual head + 0.5 x
visual-only head) plus 0.5 x an audio voice-activity head. Its heads see no temporal context beyond the
encoders' causal kernel-3 convs, so no back end is favoured by the shared features.
Stage 2 freezes the front, embeds every track once, and trains each back end (band transformers with any
P, F; GRUs) on the same embeddings with the same budget and seed. Sharing the frozen front is what makes a
grid of ~20 back ends affordable on one CPU thread; `finetune_steps` can adapt the whole model afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from leaninfer.streaming.asd.data import TrackSet
from leaninfer.streaming.asd.metrics import ava_map
from leaninfer.streaming.asd.models import Backend, BackendConfig, Front, FrontConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    front_steps: int = 600
    front_batch: int = 16
    front_window: int = 32
    front_lr: float = 2e-3
    backend_epochs: int = 30
    backend_batch: int = 32
    backend_lr: float = 2e-3
    backend_crop: int | None = 100  # train back ends on random crops of this many frames (None = whole tracks)
    weight_decay: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.front_steps < 0 or self.backend_epochs < 0:
            raise ValueError("steps and epochs must be >= 0")


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked BCE: targets < 0 are ignored."""
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())


def _windows(data: TrackSet, rng: np.random.Generator, batch: int, window: int) -> dict[str, torch.Tensor]:
    idx = rng.integers(0, len(data), size=batch)
    starts = rng.integers(0, data.frames - window + 1, size=batch)
    b = data.batch(idx)
    m = b["mel"].shape[1] // data.frames
    rows = torch.arange(batch)[:, None]
    t = torch.from_numpy(starts)[:, None] + torch.arange(window)[None]  # (B, W)
    tm = torch.from_numpy(starts * m)[:, None] + torch.arange(window * m)[None]
    return {"faces": b["faces"][rows, t], "mel": b["mel"][rows, tm], "labels": b["labels"][rows, t],
            "audio_active": b["audio_active"][rows, t]}


def train_front(data: TrackSet, cfg: TrainConfig, front_cfg: FrontConfig | None = None,
                progress: bool = False) -> Front:
    """Stage 1. Returns the trained front in eval mode."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    front = Front(front_cfg or FrontConfig(n_mels=data.mel.shape[-1]))
    opt = torch.optim.AdamW(front.parameters(), lr=cfg.front_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.front_lr, total_steps=max(1, cfg.front_steps))
    front.train()
    window = min(cfg.front_window, data.frames)
    for step in tqdm(range(cfg.front_steps), desc="asd front", disable=not progress):
        b = _windows(data, rng, cfg.front_batch, window)
        heads = front.heads(front(b["faces"], b["mel"]))
        loss = (_bce(heads["av"], b["labels"]) + 0.5 * _bce(heads["v"], b["labels"])
                + 0.5 * _bce(heads["a"], b["audio_active"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.info("front step %d loss %.4f", step, loss.item())
    return front.eval()


@torch.no_grad()
def embed(front: Front, data: TrackSet, batch: int = 16) -> torch.Tensor:
    """(N, T, Da + Dv) embeddings of every track with the frozen front."""
    front.eval()
    out = [front(**{k: v for k, v in data.batch(np.arange(i, min(i + batch, len(data)))).items()
                    if k in ("faces", "mel")}) for i in range(0, len(data), batch)]
    return torch.cat(out)


@torch.no_grad()
def front_scores(front: Front, emb: torch.Tensor) -> torch.Tensor:
    """Stage-1 per-frame audio-visual head scores (B, T): the no-back-end reference."""
    return front.heads(emb)["av"]


def train_backend(emb: torch.Tensor, labels: torch.Tensor, cfg: BackendConfig, tcfg: TrainConfig) -> Backend:
    """Stage 2: one back end on frozen embeddings (N, T, D) with labels (N, T) (< 0 ignored)."""
    torch.manual_seed(tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)
    backend = Backend(cfg)
    opt = torch.optim.AdamW(backend.parameters(), lr=tcfg.backend_lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = max(1, (len(emb) + tcfg.backend_batch - 1) // tcfg.backend_batch)
    total = max(1, steps_per_epoch * tcfg.backend_epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.backend_lr, total_steps=total)
    backend.train()
    for _ in range(tcfg.backend_epochs):
        perm = torch.randperm(len(emb), generator=gen)
        for i in range(0, len(emb), tcfg.backend_batch):
            x, y = _crop(emb[perm[i : i + tcfg.backend_batch]], labels[perm[i : i + tcfg.backend_batch]],
                         tcfg.backend_crop, gen)
            loss = _bce(backend(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backend.parameters(), 1.0)
            opt.step()
            sched.step()
    return backend.eval()


def _crop(x: torch.Tensor, y: torch.Tensor, crop: int | None,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random window of `crop` frames per sequence: x (B, T, D), y (B, T)."""
    b, t = y.shape
    if crop is None or crop >= t:
        return x, y
    starts = torch.randint(0, t - crop + 1, (b,), generator=gen)
    idx = starts[:, None] + torch.arange(crop)[None]  # (B, crop)
    rows = torch.arange(b)[:, None]
    return x[rows, idx], y[rows, idx]


@torch.no_grad()
def backend_scores(backend: Backend, emb: torch.Tensor, batch: int = 64) -> torch.Tensor:
    backend.eval()
    return torch.cat([backend(emb[i : i + batch]) for i in range(0, len(emb), batch)])


def evaluate(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AVA mAP (percent) over all labelled face-frames."""
    return ava_map(scores.numpy(), labels.numpy())


def save_model(model, path) -> None:
    """Weights plus both configs (as plain dicts) in one torch file."""
    from dataclasses import asdict

    torch.save({"front": asdict(model.front.cfg), "backend": model.backend.cfg.to_dict(),
                "state_dict": model.state_dict()}, path)


def load_model(path):
    """Inverse of save_model -> ASDModel in eval mode."""
    from leaninfer.streaming.asd.models import ASDModel

    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = ASDModel(Front(FrontConfig(**blob["front"])), Backend(BackendConfig(**blob["backend"])))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
