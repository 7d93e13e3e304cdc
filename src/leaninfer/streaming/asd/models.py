"""Light-ASD-like encoders with causal temporal context, audio-visual fusion and swappable temporal back ends.

Front end (`Front`): a per-frame 2-D CNN over the face crop and a conv stack over the four log-mel frames of each
video frame, each followed by one *causal* temporal conv (kernel 3: the current and two previous frames). The
encoders therefore add no look-ahead; all future context comes from the back end. Audio uses only mel frames
that end inside the current video frame (see `data.wave_to_mel`).

Back ends (`Backend`, input = concatenated audio and visual embeddings (B, T, Da + Dv)):
* ``band``: fusion + pre-LN transformer whose layers have (past, future) reaches from `layer_reaches`;
  past = future = None is the unconstrained transformer;
* ``gru_uni``: fusion + forward GRU (causal, unbounded past through its state);
* ``gru_bi``: fusion + bidirectional GRU (Light-ASD's back end; needs the whole clip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.streaming.asd.attention import BandAttention, layer_reaches


class CausalConv1d(nn.Conv1d):
    """Conv1d over time that pads on the left only: output t sees inputs t-k+1..t. Input (B, C, T)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class _Block2d(nn.Module):
    """Two parallel spatial paths (3x3 and 5x5), summed, 1x1 mix, BN, ReLU, 2x2 max-pool (Light-ASD style)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.p3 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.p5 = nn.Conv2d(c_in, c_out, 5, padding=2, bias=False)
        self.mix = nn.Sequential(nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.p3(x) + self.p5(x))


class VisualEncoder(nn.Module):
    """faces (B, T, S, S) in [0, 1] -> (B, T, dim). Per frame CNN (a stride-2 stem, then Light-ASD-style blocks),
    then a causal temporal conv (kernel 3)."""

    def __init__(self, dim: int = 64, channels: tuple[int, ...] = (8, 16, 32, 32)):
        super().__init__()
        stem = channels[0]
        blocks, c = [nn.Conv2d(1, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()], stem
        for c_out in channels[1:]:
            blocks.append(_Block2d(c, c_out))
            c = c_out
        self.cnn = nn.Sequential(*blocks, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.temporal = CausalConv1d(c, dim, 3)

    def frame(self, faces: torch.Tensor) -> torch.Tensor:
        """(N, S, S) -> (N, C) per-frame features (no temporal context)."""
        return self.cnn((faces[:, None] - 0.45) / 0.25)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        b, t, s, _ = faces.shape
        per_frame = self.frame(faces.reshape(b * t, s, s)).view(b, t, -1)  # (B, T, C)
        return F.relu(self.temporal(per_frame.transpose(1, 2))).transpose(1, 2)  # (B, T, dim)


class AudioEncoder(nn.Module):
    """mel (B, 4T, M) -> (B, T, dim). Causal conv at the mel rate, 4:1 pooling conv per video frame,
    then a causal temporal conv (kernel 3) at the video rate."""

    def __init__(self, n_mels: int = 40, dim: int = 64, hidden: int = 64, mels_per_frame: int = 4):
        super().__init__()
        self.m = mels_per_frame
        self.norm = nn.BatchNorm1d(n_mels)
        self.conv = CausalConv1d(n_mels, hidden, 3)
        self.pool = nn.Conv1d(hidden, hidden, mels_per_frame, stride=mels_per_frame)
        self.temporal = CausalConv1d(hidden, dim, 3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.norm(mel.transpose(1, 2))  # (B, M, 4T)
        x = F.relu(self.conv(x))
        x = F.relu(self.pool(x))  # (B, H, T)
        return F.relu(self.temporal(x)).transpose(1, 2)  # (B, T, dim)


@dataclass
class FrontConfig:
    n_mels: int = 40
    audio_dim: int = 64
    visual_dim: int = 64
    channels: tuple[int, ...] = (8, 16, 32, 32)  # stem, then one block each

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if min(self.audio_dim, self.visual_dim, self.n_mels) <= 0:
            raise ValueError("dimensions must be positive")


class Front(nn.Module):
    """Both encoders plus the stage-1 heads (Light-ASD's AV and visual-only heads, and an audio-VAD head).

    forward(faces, mel) -> (B, T, Da + Dv) embeddings; `heads(emb)` -> dict of per-frame logits (B, T).
    """

    def __init__(self, cfg: FrontConfig | None = None):
        super().__init__()
        self.cfg = cfg or FrontConfig()
        self.visual = VisualEncoder(self.cfg.visual_dim, self.cfg.channels)
        self.audio = AudioEncoder(self.cfg.n_mels, self.cfg.audio_dim)
        da, dv = self.cfg.audio_dim, self.cfg.visual_dim
        self.head_av = nn.Sequential(nn.Linear(da + dv, 64), nn.ReLU(), nn.Linear(64, 1))
        self.head_v = nn.Linear(dv, 1)
        self.head_a = nn.Linear(da, 1)

    @property
    def out_dim(self) -> int:
        return self.cfg.audio_dim + self.cfg.visual_dim

    def forward(self, faces: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.audio(mel), self.visual(faces)], dim=-1)  # (B, T, Da + Dv)

    def heads(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        da = self.cfg.audio_dim
        return {"av": self.head_av(emb).squeeze(-1), "v": self.head_v(emb[..., da:]).squeeze(-1),
                "a": self.head_a(emb[..., :da]).squeeze(-1)}


@dataclass
class BackendConfig:
    """kind: band | gru_uni | gru_bi. past/future (frames, None = unbounded) apply to `band` only."""

    kind: str = "band"
    in_dim: int = 128
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    past: int | None = 16
    future: int | None = 0
    future_layer: int = 0
    max_rel: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("band", "gru_uni", "gru_bi"):
            raise ValueError(f"unknown back end {self.kind!r}")
        layer_reaches(self.layers, self.past, self.future, self.future_layer)  # validates

    @property
    def lookahead(self) -> int | None:
        """Frames of future input the back end needs before it can score a frame (None = whole clip)."""
        if self.kind == "gru_uni":
            return 0
        if self.kind == "gru_bi":
            return None
        return self.future

    def name(self) -> str:
        if self.kind != "band":
            return self.kind
        if self.past is None and self.future is None:
            return "transformer_full"
        return f"band_P{_fmt(self.past)}_F{_fmt(self.future)}"

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(v: int | None) -> str:
    return "inf" if v is None else str(v)


class BandLayer(nn.Module):
    """Pre-LN transformer layer: x + Attn(LN(x)) then x + FFN(LN(x))."""

    def __init__(self, d: int, heads: int, ffn: int, max_rel: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = BandAttention(d, heads, max_rel)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: int | None, future: int | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), past, future))
        return x + self.drop(self.ffn(self.ln2(x)))


class Backend(nn.Module):
    """emb (B, T, in_dim) -> logits (B, T). See the module doc for the kinds."""

    def __init__(self, cfg: BackendConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.fusion = nn.Sequential(nn.Linear(cfg.in_dim, d), nn.ReLU())
        if cfg.kind == "band":
            self.blocks = nn.ModuleList(BandLayer(d, cfg.heads, cfg.ffn, cfg.max_rel, cfg.dropout)
                                        for _ in range(cfg.layers))
            self.norm = nn.LayerNorm(d)
            out = d
        else:
            bi = cfg.kind == "gru_bi"
            self.gru = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True, bidirectional=bi)
            out = 2 * d if bi else d
        self.head = nn.Linear(out, 1)

    def reaches(self) -> list[tuple[int | None, int | None]]:
        return layer_reaches(self.cfg.layers, self.cfg.past, self.cfg.future, self.cfg.future_layer)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.fusion(emb)  # (B, T, d)
        if self.cfg.kind == "band":
            for block, (p, f) in zip(self.blocks, self.reaches()):
                x = block(x, p, f)
            x = self.norm(x)
        else:
            x, _ = self.gru(x)
        return self.head(x).squeeze(-1)  # (B, T)


class ASDModel(nn.Module):
    """Front + back end: faces (B, T, S, S), mel (B, 4T, M) -> speaking logits (B, T)."""

    def __init__(self, front: Front, backend: Backend):
        super().__init__()
        self.front, self.backend = front, backend

    def forward(self, faces: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.backend(self.front(faces, mel))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
