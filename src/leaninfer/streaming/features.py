"""Causal log-mel front end: whole-clip and frame-by-frame give the same frames.

Frame t covers samples [t*hop, t*hop + win) — it uses no future audio, so a streaming front end can emit
it as soon as its last sample arrives (algorithmic latency = one window). A clip of N samples yields
`1 + (N - win) // hop` frames (0 when N < win).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 20.0, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular HTK-mel filters, float32."""
    fmax = fmax or sample_rate / 2.0
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bins - lo) / max(mid - lo, 1e-9)
        down = (hi - bins) / max(hi - mid, 1e-9)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb.astype(np.float32)


class LogMel:
    """log(mel power + eps) features with a causal frame grid.

    Args: sample_rate (Hz), n_mels, win_ms (window), hop_ms (frame shift). n_fft is the next power of two.
    Call on a whole clip: `LogMel()(wave) -> (T, n_mels)` float32 tensor.
    """

    def __init__(
        self, sample_rate: int = 16000, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0, eps: float = 1e-6
    ):
        self.sample_rate, self.n_mels, self.eps = sample_rate, n_mels, eps
        self.win = int(round(sample_rate * win_ms / 1000.0))
        self.hop = int(round(sample_rate * hop_ms / 1000.0))
        if self.win <= 0 or self.hop <= 0:
            raise ValueError("win_ms and hop_ms must give at least one sample")
        self.n_fft = 1 << max(0, math.ceil(math.log2(self.win)))
        self.window = torch.hann_window(self.win, periodic=True, dtype=torch.float32)
        self.fb = torch.from_numpy(mel_filterbank(sample_rate, self.n_fft, n_mels))  # (M, F)

    def n_frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.win else 1 + (n_samples - self.win) // self.hop

    def frames_to_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, win) raw sample frames -> (T, n_mels) log-mel."""
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft)  # (T, F)
        power = spec.real**2 + spec.imag**2
        return torch.log(power @ self.fb.T + self.eps)  # (T, M)

    def __call__(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        t = self.n_frames(x.numel())
        if t == 0:
            return torch.zeros(0, self.n_mels)
        frames = x[: self.win + (t - 1) * self.hop].unfold(0, self.win, self.hop)  # (T, win)
        return self.frames_to_features(frames)

    def stream(self) -> StreamingLogMel:
        return StreamingLogMel(self)


class StreamingLogMel:
    """Frame-by-frame front end: push any-size chunks, get the frames that became complete."""

    def __init__(self, logmel: LogMel):
        self.lm = logmel
        self.buffer = np.zeros(0, dtype=np.float32)  # samples not yet consumed by a full hop

    def reset(self) -> None:
        self.buffer = np.zeros(0, dtype=np.float32)

    def push(self, chunk: np.ndarray) -> torch.Tensor:
        """chunk: (n,) samples. Returns (n_new_frames, n_mels); concatenation equals LogMel on the whole clip."""
        self.buffer = np.concatenate([self.buffer, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        t = self.lm.n_frames(self.buffer.size)
        if t == 0:
            return torch.zeros(0, self.lm.n_mels)
        x = torch.from_numpy(self.buffer[: self.lm.win + (t - 1) * self.lm.hop].copy())
        out = self.lm.frames_to_features(x.unfold(0, self.lm.win, self.lm.hop))
        self.buffer = self.buffer[t * self.lm.hop :]
        return out
