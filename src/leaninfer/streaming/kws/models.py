"""Small streaming detectors. All take log-mel (B, T, n_mels) and return per-frame logits (B, T, n_out).

* `CNN` (kind "unibranch"): stem + causal dilated conv blocks, each conv+BN+ReLU (BN folds away); blocks may
  stride in time (causally), so the deeper layers and the head run at a lower frame rate.
* `CNN` (kind "repcnn"): the same graph trained with RepConvBlocks; `reparameterize()` folds it into
  exactly the unibranch inference graph.
* `BCResNet`: broadcasted residual learning (Kim et al. 2021), made causal in time.
* `GRUNet`: uni-directional GRU + per-frame linear head.
Clip logits are the mean of the output-frame logits over the clip (linear, so equal to mean-pooled features).
A model with total time stride S returns floor(T / S) output frames; output j is aligned with input frame
j*S + S - 1 (`time_stride(model)`, `hold_frames` spreads outputs back onto the 10 ms grid).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from leaninfer.streaming.layers import CausalConv1d, CausalConv2d, StreamGRU
from leaninfer.streaming.reparam import ConvBNBlock, RepConvBlock

KINDS = ("unibranch", "repcnn", "bcresnet", "gru")


@dataclass
class ModelConfig:
    """Typed model description, saved as JSON beside the weights."""

    kind: str = "repcnn"
    n_mels: int = 40
    n_out: int = 13
    channels: int = 32
    kernel: int = 5
    # Blocks 1-2 stride by 2 (100 -> 50 -> 25 frames/s), so the dilated layers keep short ring buffers at the
    # quarter rate; receptive field 111 frames (1.1 s: the whole wake phrase at its end).
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    strides: tuple[int, ...] = (2, 2, 1, 1)
    branches: tuple[tuple[int, int], ...] = ((5, 1), (3, 1), (1, 1), (3, 2))
    bc_base: int = 8  # BC-ResNet width (BC-ResNet-1 = 8)
    gru_hidden: int = 64
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.dilations = tuple(int(d) for d in self.dilations)
        self.branches = tuple((int(k), int(r)) for k, r in self.branches)
        self.strides = tuple(int(s) for s in self.strides)
        if self.kernel < 1 or not self.dilations:
            raise ValueError("kernel >= 1 and at least one block are required")
        if len(self.strides) != len(self.dilations) or min(self.strides) < 1:
            raise ValueError(f"strides {self.strides} need one value >= 1 per block (dilations {self.dilations})")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**json.loads(text))


class CNN(nn.Module):
    """Causal TC-style CNN over mel channels. kind 'repcnn' uses multi-branch blocks at train time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        specs = list(zip(cfg.dilations, cfg.strides))
        if cfg.kind == "repcnn":
            self.stem = RepConvBlock(cfg.n_mels, c, 3, 1, branches=((3, 1), (1, 1)), identity=False)
            blocks = [RepConvBlock(c, c, cfg.kernel, d, cfg.branches, stride=s) for d, s in specs]
        else:
            self.stem = ConvBNBlock(cfg.n_mels, c, 3, 1)
            blocks = [ConvBNBlock(c, c, cfg.kernel, d, stride=s) for d, s in specs]
        self.blocks = nn.Sequential(*blocks)
        self.head = CausalConv1d(c, cfg.n_out, 1)
        self.time_stride = math.prod(cfg.strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, M) -> (B, T // time_stride, n_out)
        h = self.blocks(self.stem(x.transpose(1, 2)))  # (B, C, T // time_stride)
        return self.head(h).transpose(1, 2)


class SubSpectralNorm(nn.Module):
    """BatchNorm per frequency sub-band: (B, C, F, T) normalised over C*S groups."""

    def __init__(self, channels: int, sub_bands: int = 5):
        super().__init__()
        self.s = sub_bands
        self.bn = nn.BatchNorm2d(channels * sub_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        return self.bn(x.reshape(b, c * self.s, f // self.s, t)).reshape(b, c, f, t)


class BCBlock(nn.Module):
    """y = ReLU([x +] f2(x) + f1(mean_freq(f2(x)))) with f2 frequency-wise and f1 causal temporal."""

    def __init__(self, c_in: int, c_out: int, freq_stride: int, dilation: int):
        super().__init__()
        self.transition = c_in != c_out
        pre = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()] if self.transition else []
        self.f2 = nn.Sequential(
            *pre, CausalConv2d(c_out, c_out, (3, 1), freq_stride, groups=c_out, bias=False), SubSpectralNorm(c_out)
        )
        self.f1 = nn.Sequential(
            CausalConv2d(c_out, c_out, (1, 3), 1, dilation, groups=c_out, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 1, bias=False),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, T)
        aux = self.f2(x)
        y = aux + self.f1(aux.mean(dim=2, keepdim=True))  # broadcast over frequency
        if not self.transition:
            y = y + x
        return torch.relu(y)


class BCResNet(nn.Module):
    """BC-ResNet-tau with causal time convs; freq 40 -> 20 -> 10 -> 5 -> 1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.bc_base
        widths = [c, int(1.5 * c), 2 * c, int(2.5 * c)]
        self.stem = nn.Sequential(
            CausalConv2d(1, 2 * c, (5, 5), freq_stride=2, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU()
        )
        blocks, c_prev = [], 2 * c
        for stage, (width, n, stride) in enumerate(zip(widths, (2, 2, 4, 4), (1, 2, 2, 1))):
            for i in range(n):
                blocks.append(BCBlock(c_prev, width, stride if i == 0 else 1, 2**stage))
                c_prev = width
        self.blocks = nn.Sequential(*blocks)
        f_last = cfg.n_mels // 8
        self.head = nn.Sequential(
            CausalConv2d(c_prev, c_prev, (5, 5), groups=c_prev, freq_padding=(5 - f_last) // 2 if f_last < 5 else 0),
            nn.Conv2d(c_prev, 4 * c, 1, bias=False),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(),
        )
        self.out = nn.Conv2d(4 * c, cfg.n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, M) -> (B, T, n_out)
        h = self.head(self.blocks(self.stem(x.transpose(1, 2)[:, None])))  # (B, C, F', T)
        return self.out(h.mean(dim=2, keepdim=True))[:, :, 0].transpose(1, 2)


class GRUNet(nn.Module):
    """Uni-directional GRU baseline with a per-frame head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gru = StreamGRU(cfg.n_mels, cfg.gru_hidden)
        self.head = nn.Linear(cfg.gru_hidden, cfg.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x))


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.kind in ("unibranch", "repcnn"):
        return CNN(cfg)
    if cfg.kind == "bcresnet":
        return BCResNet(cfg)
    return GRUNet(cfg)


def time_stride(model: nn.Module) -> int:
    """Input frames per output frame (1 for models that emit every frame)."""
    return int(getattr(model, "time_stride", 1))


def hold_frames(out: torch.Tensor, stride: int, n_frames: int, fill: float = 0.0) -> torch.Tensor:
    """(B, T // stride, ...) outputs -> (B, n_frames, ...) on the input frame grid, each output held until the next.

    Output j appears at input frame j*stride + stride - 1 (when a streaming runtime has it); the frames before
    the first output get `fill`.
    """
    if stride == 1:
        return out
    lead = out.new_full((out.shape[0], stride - 1, *out.shape[2:]), fill)
    return torch.cat([lead, out.repeat_interleave(stride, dim=1)], dim=1)[:, :n_frames]  # floor(T/S)*S + S-1 >= T


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
