"""Synthetic ASD benchmark: determinism, labels that agree with what was drawn and heard, the AVA adapter."""

import csv

import numpy as np
import pytest
import torch

from leaninfer.streaming.asd.data import SynthConfig, TrackSet, render_synthetic, wave_to_mel
from leaninfer.streaming.asd.render import FaceStyle, mouth_darkness, render_track
from leaninfer.streaming.asd.scenes import compose_scene
from leaninfer.streaming.asd.speech import SAMPLES_PER_FRAME, build_pool, frame_envelope
from leaninfer.streaming.audio import espeak_available

TINY = SynthConfig(split="train", n_scenes=3, frames=60, faces=3, size=24, seed=3, source="tone", pool_size=10)


def test_generator_is_deterministic_and_seeded():
    a, b = render_synthetic(TINY), render_synthetic(TINY)
    for name in ("faces", "mel", "labels", "audio_active", "audio_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = render_synthetic(SynthConfig(**{**TINY.__dict__, "seed": 4}))
    assert not np.array_equal(a.faces, c.faces)
    assert a.faces.shape == (9, 60, 24, 24) and a.mel.shape == (3, 240, 40) and a.faces.dtype == np.uint8
    assert TINY.key() != SynthConfig(**{**TINY.__dict__, "split": "test"}).key()


def test_save_load_roundtrip(tmp_path):
    a = render_synthetic(TINY)
    a.save(tmp_path / "d.npz")
    b = TrackSet.load(tmp_path / "d.npz")
    assert np.array_equal(a.faces, b.faces) and b.meta["config"]["seed"] == 3
    batch = b.batch(np.array([0, 4]))
    assert batch["faces"].shape == (2, 60, 24, 24) and batch["mel"].shape == (2, 240, 40)
    assert torch.equal(batch["mel"][1], torch.from_numpy(b.mel[1]))  # track 4 belongs to scene 1


def _scene(seed=0, source="tone"):
    rng = np.random.default_rng(seed)
    pool = build_pool(12, rng, source=source)
    return compose_scene(np.random.default_rng(seed + 1), pool, build_pool(4, rng, source=source), frames=150,
                         faces=3, size=32, snr_db=(40.0, 40.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_timeline_and_audio(seed):
    scene = _scene(seed)
    # every labelled frame is inside a phrase said by that face, and something is audible there
    assert np.all(scene.audio_active[scene.labels.any(axis=0)])
    for k in range(3):
        said = np.zeros(150, bool)
        for ph in scene.phrases:
            if ph.speaker == k:
                said[ph.start : ph.start + 10_000] = True
        assert not np.any(scene.labels[k].astype(bool) & ~said)
    # while a face speaks, its mouth follows the sound track better than any other face's mouth does
    env = frame_envelope(scene.wave)
    for k in range(3):
        on = scene.labels[k].astype(bool)
        if on.sum() > 20:
            own = np.corrcoef(scene.mouth[k, on], env[on])[0, 1]
            others = [np.corrcoef(scene.mouth[j, on], env[on])[0, 1] for j in range(3)
                      if j != k and scene.mouth[j, on].std() > 0]
            assert own > 0.2 and all(own > o for o in others)


def test_rendered_mouth_is_the_labelled_mouth():
    """Clean renders: the darkness of the mouth region tracks the mouth-opening parameter that drives labels."""
    scene = _scene(5)
    for k in range(3):
        style = scene.styles[k]
        clean = render_track(style, scene.mouth[k], np.random.default_rng(0), size=32, clean=True)
        dark = mouth_darkness(clean, style)
        if scene.mouth[k].std() > 0.05:
            assert np.corrcoef(dark, scene.mouth[k])[0, 1] > 0.95
    wide = render_track(FaceStyle(), np.array([0.0, 1.0]), np.random.default_rng(0), clean=True)
    assert mouth_darkness(wide, FaceStyle())[1] > mouth_darkness(wide, FaceStyle())[0] + 0.05


def test_mel_alignment_four_frames_per_video_frame():
    wave = np.zeros(10 * SAMPLES_PER_FRAME, np.float32)
    wave[5 * SAMPLES_PER_FRAME : 6 * SAMPLES_PER_FRAME] = 0.5  # a click inside video frame 5 only
    mel = wave_to_mel(wave)
    assert mel.shape == (40, 40)
    energy = mel.mean(axis=1).reshape(10, 4).max(axis=1)
    assert energy[:5].max() < energy[5] - 5  # nothing leaks into earlier video frames (no look-ahead)
    assert np.allclose(frame_envelope(wave)[5], 1.0)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_espeak_scene_labels_follow_speech():
    scene = _scene(0, source="espeak")
    assert scene.labels.sum() > 0 and scene.wave.dtype == np.float32


def test_ava_adapter_reads_a_fake_folder(tmp_path):
    from PIL import Image
    from scipy.io import wavfile

    from leaninfer.streaming.asd.ava import load_ava
    from leaninfer.streaming.asd.models import BackendConfig, FrontConfig
    from leaninfer.streaming.asd.train import TrainConfig, embed, train_backend, train_front

    rng = np.random.default_rng(0)
    (tmp_path / "csv").mkdir()
    rows = []
    for ent, n in (("vidA:0", 20), ("vidA:1", 7)):
        folder = tmp_path / "clips_videos" / "val" / "vidA" / ent
        folder.mkdir(parents=True)
        for i in range(n):
            ts = 900.0 + i * 0.04
            Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(folder / f"{ts:.2f}.jpg")
            label = ["SPEAKING_AUDIBLE", "NOT_SPEAKING", "SPEAKING_NOT_AUDIBLE"][i % 3]
            rows.append(["vidA", f"{ts:.2f}", 0.1, 0.1, 0.5, 0.5, label, ent])
        (tmp_path / "clips_audios" / "val" / "vidA").mkdir(parents=True, exist_ok=True)
        audio = (rng.standard_normal(n * 640) * 3000).astype(np.int16)
        wavfile.write(tmp_path / "clips_audios" / "val" / "vidA" / f"{ent}.wav", 16000, audio)
    with open(tmp_path / "csv" / "val_orig.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["video_id", "frame_timestamp", "x1", "y1", "x2", "y2", "label", "entity_id"]] + rows)
    data = load_ava(tmp_path, "val", frames=16, size=24)
    assert data.faces.shape == (3, 16, 24, 24)  # 20 frames -> 2 chunks, 7 frames -> 1 chunk
    assert data.labels[0, :3].tolist() == [1, 0, 0]
    assert (data.labels[1, 4:] == -1).all() and (data.labels[2, 7:] == -1).all()
    assert data.mel.shape == (3, 64, 40)
    # the same training code runs on it
    tcfg = TrainConfig(front_steps=2, front_batch=2, front_window=8, backend_epochs=1, backend_batch=2)
    front = train_front(data, tcfg, FrontConfig(audio_dim=8, visual_dim=8, channels=(4, 4, 4)))
    emb = embed(front, data)
    train_backend(emb, torch.from_numpy(data.labels.astype(np.int64)),
                  BackendConfig(in_dim=16, d_model=16, heads=2, ffn=16, past=4, future=1), tcfg)
