"""Corpus synthesis (needs espeak-ng), the Speech Commands adapter and the detection metrics."""

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from leaninfer.streaming import audio
from leaninfer.streaming.kws import data
from leaninfer.streaming.metrics import at_fa_rate, detection_curve, frame_targets, smooth, time_to_frame, triggers

torch.set_num_threads(1)  # tiny models; the machine is shared
needs_espeak = pytest.mark.skipif(not audio.espeak_available(), reason="espeak-ng not installed")


@needs_espeak
def test_clips_and_streams_are_deterministic():
    cfg = data.DataConfig(seed=3, stream_s=6.0)
    a, b = data.render_clip(cfg, "train", 2, 0), data.render_clip(cfg, "train", 2, 0)
    assert a.shape == (16000,) and np.array_equal(a, b)
    assert not np.array_equal(a, data.render_clip(cfg, "test", 2, 0))
    wave, events = data.render_stream(cfg, "test", 1)
    wave2, events2 = data.render_stream(cfg, "test", 1)
    assert np.array_equal(wave, wave2) and events == events2 and wave.size == 6 * 16000
    assert all(0 <= e["start"] < e["end"] <= 6.0 for e in events)


@needs_espeak
def test_build_corpus_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANINFER_CACHE", str(tmp_path))
    cfg = data.DataConfig(clips_per_class=(1, 0, 1), streams=(1, 0, 0), stream_s=4.0)
    corpus = data.build_corpus(cfg, progress=False)
    assert corpus["clips"]["train"].feats.shape == (13, 98, 40)
    assert corpus["clips"]["val"].labels.numel() == 0
    assert len(corpus["streams"]["train"].feats) == 1
    assert (tmp_path / "kws" / f"corpus-{cfg.key()}" / "corpus.pt").exists()
    again = data.build_corpus(cfg, progress=False)
    torch.testing.assert_close(again["clips"]["train"].feats, corpus["clips"]["train"].feats)


def test_speaker_splits_are_disjoint():
    tr, va, te = (set(data.VARIANTS[s]) for s in data.SPLITS)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert data.DataConfig().key() == data.DataConfig().key() != data.DataConfig(seed=1).key()


def test_speech_commands_adapter(tmp_path):
    rng = np.random.default_rng(0)
    for word in ("yes", "no", "marvin", "_background_noise_"):
        (tmp_path / word).mkdir()
    for i, word in enumerate(["yes", "yes", "no", "marvin"]):
        pcm = (rng.standard_normal(16000 - 500 * i) * 3000).astype(np.int16)
        wavfile.write(tmp_path / word / f"spk{i}_nohash_0.wav", 16000, pcm)
    wavfile.write(
        tmp_path / "_background_noise_" / "white.wav", 16000, (rng.standard_normal(48000) * 2000).astype(np.int16)
    )
    (tmp_path / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\nmarvin/spk3_nohash_0.wav\n")
    (tmp_path / "validation_list.txt").write_text("no/spk2_nohash_0.wav\n")
    test = data.load_speech_commands(tmp_path, "test", silence_per_split=2)
    assert test.classes == data.GSC12 and test.feats.shape == (4, 98, 40)
    assert test.labels.tolist() == [1, data.GSC12.index("yes"), 0, 0]  # sorted: marvin, yes, then silence
    train = data.load_speech_commands(tmp_path, "train")
    assert train.labels.tolist() == [data.GSC12.index("yes")]
    assert data.load_speech_commands(tmp_path, "val").labels.tolist() == [data.GSC12.index("no")]


def test_frame_targets_and_detection_metrics():
    events = [{"start": 1.0, "end": 1.5, "kind": "wake"}, {"start": 3.0, "end": 3.4, "kind": "unknown"}]
    y, anchors, windows = frame_targets(events, 600, "kws")
    a = time_to_frame(1.5)
    assert anchors == [a] and y[a] == 1 and y[a - 5] == 1 and y[a - 6] == 0 and y.sum() == 26
    y2, anchors2, _ = frame_targets(events, 600, "onset")
    assert anchors2 == [time_to_frame(1.0), time_to_frame(3.0)] and y2[time_to_frame(3.2)] == 1
    scores = np.zeros(600)
    scores[a + 3 : a + 10] = 0.9  # detection 30 ms after the anchor
    scores[400:405] = 0.7  # a false accept
    assert triggers(scores, 0.5) == [a + 3, 400]
    curve = detection_curve([scores], [windows], hours=1.0, thresholds=np.array([0.5, 0.8, 0.95]))
    assert curve["frr"].tolist() == [0.0, 0.0, 100.0] and curve["fa_per_hour"].tolist() == [1.0, 0.0, 0.0]
    assert curve["latency_ms"][0] == pytest.approx(30.0)
    point = at_fa_rate(curve, 0.5)
    assert point["frr"] == 0.0 and point["threshold"] == 0.8
    np.testing.assert_allclose(smooth(np.array([0, 0, 3.0, 3.0]), 3)[-1], 2.0)


def _reference_curve(scores, windows, hours, thresholds, refractory):
    """The plain per-stream, per-trigger loop the vectorised detection_curve must reproduce."""
    n_events = sum(len(w) for w in windows)
    frr, fa, lat = [], [], []
    for th in thresholds:
        false_acc, lats = 0, []
        for s, wins in zip(scores, windows):
            hit = [False] * len(wins)
            for t in triggers(s, th, refractory):
                for i, (a, lo, hi) in enumerate(wins):
                    if lo <= t <= hi:
                        if not hit[i]:
                            hit[i] = True
                            lats.append((t - a) * 10.0)
                        break
                else:
                    false_acc += 1
        frr.append(100.0 * (1 - len(lats) / max(n_events, 1)))
        fa.append(false_acc / hours)
        lat.append(np.mean(lats) if lats else np.nan)
    return np.array(frr), np.array(fa), np.array(lat)


@pytest.mark.parametrize("task", ["kws", "onset"])
def test_detection_curve_matches_reference_loop(task):
    rng = np.random.default_rng(0)
    scores, windows = [], []
    for i in range(6):
        n = int(rng.integers(400, 900))
        t, events = 0.2, []
        while t < n / 100 - 1.5:  # overlapping windows: gaps shorter than the 1 s kws window tail
            d = float(rng.uniform(0.3, 0.9))
            events.append({"start": t, "end": t + d, "kind": "wake" if rng.random() < 0.5 else "unknown"})
            t += d + float(rng.uniform(0.1, 0.8))
        scores.append(smooth(rng.random(n) ** 3, 5))
        windows.append(frame_targets(events, n, task)[2])
    th = np.linspace(0.05, 0.95, 37)
    for refractory in (1, 30, 100):
        curve = detection_curve(scores, windows, 0.5, th, refractory)
        frr, fa, lat = _reference_curve(scores, windows, 0.5, th, refractory)
        np.testing.assert_allclose(curve["frr"], frr)
        np.testing.assert_allclose(curve["fa_per_hour"], fa)
        np.testing.assert_allclose(curve["latency_ms"], lat)
