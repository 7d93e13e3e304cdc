"""Streaming cost of an ASD model on the CPU: per-frame latency, per-stream state memory, and where they go.

Latency is wall time per `ASDStreamer.push` (one video frame: face crop + 4 mel frames), median over the frames
after the caches are full. Memory is the per-stream state the streamer holds (conv buffers, key/value windows,
frames waiting for their future, GRU state), read from the tensors themselves, in KiB; with an unbounded
past it grows with the stream, so it is reported at a stated stream length. The weights are shared by all
streams and reported separately.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from leaninfer.streaming.asd.models import ASDModel, Backend, BackendConfig, count_params
from leaninfer.streaming.asd.stream import ASDStreamer


def _inputs(n: int, size: int, n_mels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, size, generator=g), torch.randn(4 * n, n_mels, generator=g)


@torch.no_grad()
def measure_stream(model: ASDModel, frames: int = 400, warmup: int | None = None, size: int = 32,
                   profile: bool = False) -> dict:
    """Stream `frames` random frames; returns ms_per_frame (median after warm-up), peak state KiB, sections."""
    torch.set_num_threads(1)
    n_mels = model.front.cfg.n_mels
    faces, mel = _inputs(frames, size, n_mels)
    streamer = ASDStreamer(model, profile=profile)
    warmup = frames // 2 if warmup is None else warmup
    times = []
    for t in range(frames):
        t0 = time.perf_counter()
        streamer.push(faces[t], mel[4 * t : 4 * t + 4])
        times.append(time.perf_counter() - t0)
    steady = times[warmup:] or times
    out = {
        "ms_per_frame": 1000.0 * float(np.median(steady)),
        "ms_per_frame_p90": 1000.0 * float(np.percentile(steady, 90)),
        "peak_kb": streamer.peak_state_bytes / 1024.0,
        "frames": frames,
        "weights_kb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1024.0,
    }
    if profile:
        out["section_ms_per_frame"] = {k: 1000.0 * v / frames for k, v in sorted(streamer.timers.seconds.items())}
    return out


def with_reach(model: ASDModel, past: int | None, future: int | None) -> ASDModel:
    """Same weights, different (P, F): the band weights do not depend on the reach (relative position bias)."""
    cfg = BackendConfig(**{**model.backend.cfg.to_dict(), "past": past, "future": future})
    backend = Backend(cfg)
    backend.load_state_dict(model.backend.state_dict())
    return ASDModel(copy.deepcopy(model.front), backend).eval()


def kv_bytes_per_frame(cfg: BackendConfig, past: int) -> int:
    """Key/value bytes read by attention per frame (float32): 2 * layers-summed window * d_model * 4."""
    window = sum(past + f + 1 for _, f in [(None, cfg.future or 0)] + [(None, 0)] * (cfg.layers - 1))
    return 2 * window * cfg.d_model * 4


def flops_per_frame(cfg: BackendConfig, past: int) -> dict[str, int]:
    """Multiply-adds per frame in the band back end, split into dense layers and attention over the window."""
    d, layers = cfg.d_model, cfg.layers
    dense = cfg.in_dim * d + layers * (4 * d * d + 2 * d * cfg.ffn) + d
    window = sum(past + f + 1 for f in [cfg.future or 0] + [0] * (layers - 1))
    return {"dense_macs": dense, "attention_macs": 2 * window * d}


def profile_past_sweep(model: ASDModel, pasts: list[int], future: int, extra_frames: int = 200) -> list[dict]:
    """Latency, memory and section times as P grows (window filled before measuring)."""
    rows = []
    for p in pasts:
        m = with_reach(model, p, future)
        frames = p + future + 1 + extra_frames
        res = measure_stream(m, frames=frames, warmup=p + future + 1, profile=True)
        plain = measure_stream(m, frames=frames, warmup=p + future + 1, profile=False)
        res["ms_per_frame"] = plain["ms_per_frame"]  # timers off: no perf_counter overhead in the latency
        res.update({"past": p, "future": future, "kv_read_kb_per_frame": kv_bytes_per_frame(m.backend.cfg, p) / 1024,
                    **flops_per_frame(m.backend.cfg, p)})
        rows.append(res)
    return rows


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope dy/dx."""
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def param_counts(model: ASDModel) -> dict[str, int]:
    return {"front": count_params(model.front), "backend": count_params(model.backend)}
