"""The ASD data contract (`TrackSet`) and the cached synthetic benchmark builder.

A `TrackSet` holds N face tracks of T video frames each (25 fps), the log-mel audio they go with and per-frame
labels. Synthetic scenes and AVA-ActiveSpeaker (see `ava.py`) both produce one, so the same training code runs
on either. Audio is stored once per scene; `audio_index[i]` says which row of `mel` track i hears.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from leaninfer.paths import cache_dir
from leaninfer.streaming.asd.scenes import compose_scene
from leaninfer.streaming.asd.speech import SAMPLES_PER_FRAME, build_pool
from leaninfer.streaming.features import LogMel

log = logging.getLogger(__name__)

MELS_PER_FRAME = 4  # 10 ms hop, 40 ms video frame
DATA_VERSION = 1


@dataclass
class TrackSet:
    """N face tracks. faces: (N, T, S, S) uint8; mel: (M, 4T, n_mels) float32; audio_index: (N,) int64;
    labels: (N, T) int8 with -1 = not labelled; audio_active: (N, T) int8 (-1 unknown)."""

    faces: np.ndarray
    mel: np.ndarray
    audio_index: np.ndarray
    labels: np.ndarray
    audio_active: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def frames(self) -> int:
        return self.faces.shape[1]

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors for tracks `idx`: faces (B, T, S, S) float in [0, 1], mel (B, 4T, n_mels), labels (B, T)."""
        idx = np.asarray(idx)
        return {
            "faces": torch.from_numpy(self.faces[idx]).float().div_(255.0),
            "mel": torch.from_numpy(self.mel[self.audio_index[idx]]).float(),
            "labels": torch.from_numpy(self.labels[idx].astype(np.int64)),
            "audio_active": torch.from_numpy(self.audio_active[idx].astype(np.int64)),
        }

    def subset(self, idx: np.ndarray) -> TrackSet:
        idx = np.asarray(idx)
        return TrackSet(self.faces[idx], self.mel, self.audio_index[idx], self.labels[idx], self.audio_active[idx],
                        dict(self.meta))

    def save(self, path: Path) -> None:
        np.savez(path, faces=self.faces, mel=self.mel, audio_index=self.audio_index, labels=self.labels,
                 audio_active=self.audio_active, meta=np.array(json.dumps(self.meta)))

    @staticmethod
    def load(path: Path) -> TrackSet:
        with np.load(path) as z:
            return TrackSet(z["faces"], z["mel"], z["audio_index"], z["labels"], z["audio_active"],
                            json.loads(str(z["meta"])))


def wave_to_mel(wave: np.ndarray, logmel: LogMel | None = None) -> np.ndarray:
    """(T*640,) samples -> (4T, n_mels) log-mel aligned to video frames.

    The wave is left-padded with win - hop samples, so mel frame j ends exactly at sample 160*(j+1): the four
    mel frames of video frame t end inside it and use no audio after it (zero audio look-ahead).
    """
    logmel = logmel or LogMel()
    pad = logmel.win - logmel.hop
    mel = logmel(np.concatenate([np.zeros(pad, np.float32), wave]))
    return mel.numpy().astype(np.float32)


@dataclass(frozen=True)
class SynthConfig:
    """What to render. n_scenes scenes of `faces` tracks, `frames` frames each, `size`x`size` crops."""

    split: str = "train"
    n_scenes: int = 64
    frames: int = 200
    faces: int = 3
    size: int = 32
    seed: int = 0
    source: str = "espeak"  # espeak | tone (tone only for tests without espeak-ng)
    pool_size: int = 120

    def key(self) -> str:
        blob = json.dumps({**self.__dict__, "version": DATA_VERSION}, sort_keys=True)
        return f"synth-{self.split}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def _split_seed(cfg: SynthConfig) -> int:
    return int(hashlib.sha1(f"{cfg.seed}:{cfg.split}".encode()).hexdigest()[:8], 16)


def render_synthetic(cfg: SynthConfig, progress: bool = False) -> TrackSet:
    """Render the benchmark in memory (deterministic given `cfg`). Train/test splits use disjoint phrase pools."""
    from tqdm.auto import tqdm

    base = _split_seed(cfg)
    pool_rng = np.random.default_rng([base, 0])
    pool = build_pool(cfg.pool_size, pool_rng, source=cfg.source)
    mumble_pool = build_pool(max(8, cfg.pool_size // 4), pool_rng, source=cfg.source)
    logmel = LogMel()
    n_tracks = cfg.n_scenes * cfg.faces
    faces = np.zeros((n_tracks, cfg.frames, cfg.size, cfg.size), np.uint8)
    mel = np.zeros((cfg.n_scenes, cfg.frames * MELS_PER_FRAME, logmel.n_mels), np.float32)
    labels = np.zeros((n_tracks, cfg.frames), np.int8)
    active = np.zeros((n_tracks, cfg.frames), np.int8)
    behaviours, snrs = [], []
    for s in tqdm(range(cfg.n_scenes), desc=f"asd {cfg.split} scenes", disable=not progress):
        scene = compose_scene(np.random.default_rng([base, 1, s]), pool, mumble_pool, frames=cfg.frames,
                              faces=cfg.faces, size=cfg.size)
        rows = slice(s * cfg.faces, (s + 1) * cfg.faces)
        faces[rows] = np.round(scene.faces * 255.0).astype(np.uint8)
        mel[s] = wave_to_mel(scene.wave, logmel)
        labels[rows] = scene.labels
        active[rows] = scene.audio_active[None]
        behaviours += scene.behaviours
        snrs.append(scene.snr_db)
    audio_index = np.repeat(np.arange(cfg.n_scenes), cfg.faces)
    meta = {"config": cfg.__dict__, "behaviours": behaviours, "snr_db": snrs,
            "samples_per_frame": SAMPLES_PER_FRAME}
    return TrackSet(faces, mel, audio_index, labels, active, meta)


def synthetic(cfg: SynthConfig, progress: bool = True, cache: bool = True) -> TrackSet:
    """The synthetic split for `cfg`, rendered once and cached under cache_dir('asd')."""
    path = cache_dir("asd") / f"{cfg.key()}.npz"
    if cache and path.exists():
        return TrackSet.load(path)
    data = render_synthetic(cfg, progress=progress)
    if cache:
        tmp = path.with_suffix(".tmp.npz")
        data.save(tmp)
        tmp.replace(path)
        log.info("cached %s", path)
    return data
