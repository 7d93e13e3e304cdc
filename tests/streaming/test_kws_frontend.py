"""Audio helpers and the causal log-mel front end."""

import numpy as np
import pytest
import torch

from leaninfer.streaming import audio
from leaninfer.streaming.features import LogMel

torch.set_num_threads(1)  # tiny models; the machine is shared


def test_mix_at_snr_hits_target():
    rng = np.random.default_rng(0)
    sig = 0.3 * np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    noise = audio.make_noise("white", 8000, rng)
    for snr in (-5.0, 0.0, 10.0, 20.0):
        mix = audio.mix_at_snr(sig, noise, snr)
        resid = mix - sig * (mix @ sig) / (sig @ sig)  # scaled copy of the signal removed (peak normalisation)
        scale = (mix @ sig) / (sig @ sig)
        measured = 10 * np.log10(np.mean((scale * sig) ** 2) / np.mean(resid**2))
        assert abs(measured - snr) < 0.5


@pytest.mark.parametrize("kind", audio.NOISE_KINDS)
def test_make_noise_kinds(kind):
    x = audio.make_noise(kind, 4000, np.random.default_rng(1))
    assert x.dtype == np.float32 and x.shape == (4000,)
    assert abs(np.sqrt(np.mean(x**2)) - 0.1) < 1e-3
    assert np.array_equal(x, audio.make_noise(kind, 4000, np.random.default_rng(1)))


def test_make_noise_unknown_kind():
    with pytest.raises(ValueError):
        audio.make_noise("purple", 10, np.random.default_rng(0))


@pytest.mark.skipif(not audio.espeak_available(), reason="espeak-ng not installed")
def test_synthesize_range_and_rate():
    x = audio.synthesize("hey nova", voice="en-gb+f2", speed=150, pitch=60)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 0.3 * 16000 < x.size < 2.0 * 16000
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.05


def test_synthesize_missing_espeak(monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng"):
        audio.synthesize("hello")


def test_logmel_shapes_and_causality():
    lm = LogMel()
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feats = lm(wave)
    assert feats.shape == (1 + (16000 - 400) // 160, 40)
    # changing the future does not change past frames
    wave2 = wave.copy()
    wave2[8000:] = 0
    feats2 = lm(wave2)
    n_safe = (8000 - 400) // 160 + 1
    torch.testing.assert_close(feats[:n_safe], feats2[:n_safe])


@pytest.mark.parametrize("chunk", [1, 37, 160, 555, 4000])
def test_streaming_logmel_equals_whole_clip(chunk):
    lm = LogMel()
    wave = np.random.default_rng(2).standard_normal(12345).astype(np.float32) * 0.2
    st = lm.stream()
    outs = [st.push(wave[i : i + chunk]) for i in range(0, wave.size, chunk)]
    torch.testing.assert_close(torch.cat(outs), lm(wave), atol=1e-5, rtol=1e-5)
