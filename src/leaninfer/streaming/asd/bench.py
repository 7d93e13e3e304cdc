"""`leaninfer bench asd`: mAP over a (P, F) grid against GRU baselines, streaming latency/memory, a P profile.

Results are written first (JSON), then the markdown report and the plot are drawn from the saved results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from leaninfer.bench.report import machine_info, peak_rss_mb, write_json
from leaninfer.streaming.asd.cost import measure_stream, param_counts, profile_past_sweep, slope
from leaninfer.streaming.asd.data import SynthConfig, synthetic
from leaninfer.streaming.asd.models import ASDModel, BackendConfig, FrontConfig
from leaninfer.streaming.asd.stream import stream_clip
from leaninfer.streaming.asd.train import (
    TrainConfig,
    backend_scores,
    embed,
    evaluate,
    front_scores,
    train_backend,
    train_front,
)

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    quick: bool = False
    seed: int = 0
    train_scenes: int = 160
    test_scenes: int = 80
    frames: int = 200
    pasts: list[int | None] = field(default_factory=lambda: [0, 2, 8, 32, None])
    futures: list[int] = field(default_factory=lambda: [0, 2, 8])
    profile_pasts: list[int] = field(default_factory=lambda: [0, 16, 64, 256, 1024, 4096])
    profile_future: int = 2
    stream_frames: int = 1000  # stream length for the latency/memory grid (P = inf grows with it)
    source: str = "espeak"  # speech source of the synthetic data ("tone" only for tests)
    train: TrainConfig = field(default_factory=TrainConfig)

    @staticmethod
    def make(quick: bool, seed: int = 0) -> BenchConfig:
        if not quick:
            return BenchConfig(seed=seed, train=TrainConfig(front_steps=400, backend_epochs=30, seed=seed))
        return BenchConfig(quick=True, seed=seed, train_scenes=40, test_scenes=16, pasts=[0, 8, None],
                           futures=[0, 4], profile_pasts=[0, 64, 512], stream_frames=300,
                           train=TrainConfig(front_steps=120, backend_epochs=8, seed=seed))


def key(p: int | None, f: int | None) -> str:
    return f"{'inf' if p is None else p},{'inf' if f is None else f}"


def _labels(data) -> torch.Tensor:
    return torch.from_numpy(data.labels.astype(np.int64))


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict:
    """Train everything, measure everything; returns the results dict (also the JSON payload)."""
    torch.set_num_threads(1)
    t_start = time.time()
    synth = dict(frames=cfg.frames, faces=3, size=32, seed=cfg.seed, source=cfg.source)
    train = synthetic(SynthConfig(split="train", n_scenes=cfg.train_scenes, **synth), progress=progress)
    test = synthetic(SynthConfig(split="test", n_scenes=cfg.test_scenes, **synth), progress=progress)
    t_data = time.time() - t_start
    front = train_front(train, cfg.train, FrontConfig(), progress=progress)
    e_train, e_test = embed(front, train), embed(front, test)
    y_train, y_test = _labels(train), _labels(test)
    results = {"front_only_map": evaluate(front_scores(front, e_test), y_test)}
    log.info("front-only mAP %.2f", results["front_only_map"])

    specs = [BackendConfig(kind="gru_uni"), BackendConfig(kind="gru_bi"), BackendConfig(past=None, future=None)]
    specs += [BackendConfig(past=p, future=f) for f in cfg.futures for p in cfg.pasts]
    models, runs = {}, {}
    from tqdm.auto import tqdm

    for spec in tqdm(specs, desc="asd back ends", disable=not progress):
        t0 = time.time()
        backend = train_backend(e_train, y_train, spec, cfg.train)
        name = spec.name()
        models[name] = ASDModel(front, backend).eval()
        runs[name] = {"config": spec.to_dict(), "map": evaluate(backend_scores(backend, e_test), y_test),
                      "lookahead_frames": spec.lookahead, "params": param_counts(models[name]),
                      "train_s": time.time() - t0}
        log.info("%s mAP %.2f (%.0fs)", name, runs[name]["map"], runs[name]["train_s"])

    # streaming latency and memory over the grid (and the causal GRU)
    for name, model in tqdm(models.items(), desc="asd streaming cost", disable=not progress):
        if name in ("gru_bi", "transformer_full"):
            continue
        runs[name]["stream"] = measure_stream(model, frames=cfg.stream_frames)

    # the streamed scores of one real clip equal the offline ones
    check_name = BackendConfig(past=cfg.pasts[-2], future=cfg.futures[-1]).name()
    b = test.batch(np.array([0]))
    streamed, emitted = stream_clip(models[check_name], b["faces"][0], b["mel"][0])
    with torch.no_grad():
        offline = models[check_name](b["faces"], b["mel"])[0]
    equality = {"model": check_name, "max_abs_diff": float((streamed - offline).abs().max()),
                "delays": sorted(set(e - t for t, e in enumerate(emitted[: len(emitted) - cfg.futures[-1]])))}

    band_any = models[BackendConfig(past=None, future=0).name()]
    profile = profile_past_sweep(band_any, cfg.profile_pasts, cfg.profile_future)

    grid_keys = [key(p, f) for f in cfg.futures for p in cfg.pasts]
    name_of = {key(p, f): BackendConfig(past=p, future=f).name() for f in cfg.futures for p in cfg.pasts}
    headline = {
        "gru_uni_map": runs["gru_uni"]["map"],
        "gru_bi_map": runs["gru_bi"]["map"],
        "full_transformer_map": runs["transformer_full"]["map"],
        "map_grid": {k: runs[name_of[k]]["map"] for k in grid_keys},
        "ms_per_frame_grid": {k: runs[name_of[k]]["stream"]["ms_per_frame"] for k in grid_keys},
        "peak_kb_grid": {k: runs[name_of[k]]["stream"]["peak_kb"] for k in grid_keys},
    }
    payload = {
        "benchmark": "asd", "quick": cfg.quick, "config": {**asdict(cfg), "train": asdict(cfg.train)},
        "data": {"train_tracks": len(train), "test_tracks": len(test), "frames_per_track": cfg.frames,
                 "test_face_frames": int(test.labels.size), "test_speaking_fraction": float(test.labels.mean()),
                 "behaviours": _count(test.meta["behaviours"])},
        "headline": headline, "front_only_map": results["front_only_map"], "runs": runs,
        "gru_uni_stream": runs["gru_uni"]["stream"], "stream_equality": equality, "profile_vs_past": profile,
        "analysis": analyse(headline, runs, profile, cfg),
        "timing_s": {"data": t_data, "total": time.time() - t_start}, "peak_rss_mb": peak_rss_mb(),
        "machine": machine_info(),
    }
    return payload


def _count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out


def zero_lookahead(headline: dict) -> dict:
    """The band transformer against the uni-GRU at equal (zero) look-ahead: every bounded-past F = 0 cell. No
    cell is chosen: the range is reported, and 'beats' asks whether any cell reaches the GRU (the best cell is
    picked on test, so a 'no' is robust and a 'yes' optimistic)."""
    grid, uni = headline["map_grid"], headline["gru_uni_map"]
    cells = {k: v for k, v in grid.items() if not k.startswith("inf") and k.endswith(",0")}
    return {"cells": cells, "min_map": min(cells.values()), "max_map": max(cells.values()), "gru_uni_map": uni,
            "any_cell_reaches_gru_uni": bool(max(cells.values()) >= uni)}


def analyse(headline: dict, runs: dict, profile: list[dict], cfg: BenchConfig) -> dict:
    """The 'done when' questions, answered from the numbers (no thresholds tuned to pass)."""
    grid = headline["map_grid"]
    uni = headline["gru_uni_map"]
    bounded_small_f = {k: v for k, v in grid.items() if not k.startswith("inf") and int(k.split(",")[1]) <= 2}
    best_k = max(bounded_small_f, key=bounded_small_f.get)
    pasts_fin = [p for p in cfg.pasts if p is not None]
    p_max = max(pasts_fin)
    f_max = max(cfg.futures)
    matched = [(v, grid[key(v, 0)], grid[key(0, v)]) for v in cfg.futures if v > 0 and v in cfg.pasts]
    ms = [r["ms_per_frame"] for r in profile]
    kb = [r["peak_kb"] for r in profile]
    ps = [r["past"] for r in profile]
    return {
        "zero_lookahead": zero_lookahead(headline),
        "best_bounded_small_future": {"key": best_k, "map": bounded_small_f[best_k], "gru_uni_map": uni,
                                      "matches_or_beats_gru_uni": bool(bounded_small_f[best_k] >= uni)},
        "past_gain_F0": grid[key(p_max, 0)] - grid[key(0, 0)],
        "future_gain_P0": grid[key(0, f_max)] - grid[key(0, 0)],
        "matched_budget": [{"frames": v, "past_only_map": a, "future_only_map": b} for v, a, b in matched],
        "past_matters_more": bool(all(a >= b for _, a, b in matched)) if matched else None,
        "ms_per_1000_past_frames": 1000.0 * slope(ps, ms),
        "kb_per_past_frame": slope(ps, kb),
        "ms_at_min_past": ms[0], "ms_at_max_past": ms[-1], "kb_at_min_past": kb[0], "kb_at_max_past": kb[-1],
    }


def write_reports(payload: dict, out_dir: Path, stem: str = "asd", others: list[dict] | None = None) -> dict[str, Path]:
    """reports/asd.md and reports/asd.png from a saved payload (`others`: reruns with other seeds)."""
    from leaninfer.streaming.asd.report import write_markdown_report, write_png

    return {"md": write_markdown_report(payload, out_dir / f"{stem}.md", others),
            "png": write_png(payload, out_dir / f"{stem}.png")}


def reports_from_json(json_path: Path, others: list[Path] | None = None) -> dict[str, Path]:
    """Redraw the markdown and the plot next to a saved results JSON (no re-running); `others` are seed reruns."""
    import json

    json_path = Path(json_path)
    extra = [json.loads(Path(p).read_text()) for p in others or []]
    return write_reports(json.loads(json_path.read_text()), json_path.parent, json_path.stem, extra)


def bench(quick: bool = False, json_path: Path | None = None, out_dir: Path | None = None, seed: int = 0,
          progress: bool = True) -> dict:
    """Run, save JSON (json_path, default out_dir/asd.json), then draw the markdown and plot from it."""
    from leaninfer.paths import reports_dir

    out_dir = Path(out_dir) if out_dir is not None else reports_dir()
    payload = run_bench(BenchConfig.make(quick, seed), progress=progress)
    stem = "asd_quick" if quick else "asd"  # a quick run never overwrites the committed full report
    json_path = Path(json_path) if json_path is not None else out_dir / f"{stem}.json"
    write_json(json_path, payload)
    paths = write_reports(payload, out_dir, stem)
    return {"json": json_path, **paths, "payload": payload}
