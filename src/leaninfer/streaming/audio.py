"""Audio sources for the streaming kit: espeak-ng speech synthesis, coloured noise and SNR mixing.

All waveforms are float32 mono numpy arrays in [-1, 1] at 16 kHz unless a function says otherwise.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from math import gcd

import numpy as np

ESPEAK_RATE = 22050  # espeak-ng renders at this rate
NOISE_KINDS = ("white", "pink", "brown", "hum", "babble_like")


def espeak_available() -> bool:
    """True when the `espeak-ng` binary is on PATH."""
    return shutil.which("espeak-ng") is not None


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a 16-bit PCM WAV byte string (tolerates the bogus sizes espeak writes to stdout)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not return a WAV stream")
    pos, rate, channels = 12, ESPEAK_RATE, 1
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"fmt ":
            channels = int.from_bytes(data[pos + 10 : pos + 12], "little")
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
        if tag == b"data":
            body = data[pos + 8 :]
            body = body[: len(body) - len(body) % (2 * channels)]
            pcm = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
            return pcm.reshape(-1, channels).mean(axis=1), rate
        pos += 8 + size
    raise RuntimeError("WAV stream has no data chunk")


def resample(wave: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy) from src_rate to dst_rate; float32 out."""
    if src_rate == dst_rate:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    g = gcd(src_rate, dst_rate)
    return resample_poly(wave, dst_rate // g, src_rate // g).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def _synth_cached(text: str, voice: str, speed: int, pitch: int, sample_rate: int) -> np.ndarray:
    cmd = ["espeak-ng", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", text]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError as err:
        raise RuntimeError(
            "espeak-ng is not installed: apt-get install espeak-ng (see scripts/system_deps.sh)"
        ) from err
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {err.stderr.decode(errors='replace')}") from err
    pcm, rate = _parse_wav(out)
    wave = resample(pcm, rate, sample_rate)
    wave.setflags(write=False)
    return wave


def synthesize(
    text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50, sample_rate: int = 16000
) -> np.ndarray:
    """Render `text` with espeak-ng.

    Args:
        text: what to say.
        voice: espeak voice, optionally with a variant (`en-gb-scotland+f2`).
        speed: words per minute (80..450). pitch: 0..99.
        sample_rate: output rate; espeak's 22.05 kHz output is polyphase-resampled.
    Returns:
        (N,) float32 in [-1, 1]. Raises RuntimeError when espeak-ng is missing or fails.
    """
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (see scripts/system_deps.sh)")
    return np.clip(_synth_cached(text, voice, int(speed), int(pitch), int(sample_rate)), -1.0, 1.0).astype(np.float32)


def trim_silence(wave: np.ndarray, threshold: float = 0.01, pad: int = 160) -> tuple[np.ndarray, int, int]:
    """Cut leading/trailing samples whose |x| stays below `threshold`; returns (trimmed, start, end)."""
    idx = np.flatnonzero(np.abs(wave) >= threshold)
    if idx.size == 0:
        return wave[:0], 0, 0
    start, end = max(0, int(idx[0]) - pad), min(len(wave), int(idx[-1]) + 1 + pad)
    return wave[start:end], start, end


def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power spectral density ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spec *= freqs ** (-exponent / 2.0)
    return np.fft.irfft(spec, n=n)


def make_noise(kind: str, n: int, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """`n` samples of background noise with RMS 0.1 (float32).

    kinds: white, pink, brown, hum (mains hum with harmonics plus a little white noise),
    babble_like (speech-shaped noise: pink noise amplitude-modulated at syllable rates).
    """
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _coloured(n, rng, 1.0)
    elif kind == "brown":
        x = _coloured(n, rng, 2.0)
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        f0 = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5))
        x = x + 0.05 * rng.standard_normal(n)
    elif kind == "babble_like":
        t = np.arange(n) / sample_rate
        env = sum(1 + np.sin(2 * np.pi * rng.uniform(2, 7) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3))
        x = _coloured(n, rng, 1.0) * env
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return (0.1 * x / rms).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + g * noise with g chosen so that 10*log10(P_signal / P_scaled_noise) = snr_db.

    The noise is tiled or cut to the signal length. If the sum would clip, the whole mixture is scaled
    down to a peak of 0.99 (the SNR is unchanged). Silent signals are returned with the noise at its own level.
    """
    signal = np.asarray(signal, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if noise.size == 0 or signal.size == 0:
        return signal.copy()
    if noise.size < signal.size:
        noise = np.tile(noise, int(np.ceil(signal.size / noise.size)))
    noise = noise[: signal.size]
    p_sig, p_noise = float(np.mean(signal**2)), float(np.mean(noise**2))
    if p_noise == 0.0:
        return signal.copy()
    gain = np.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0))) if p_sig > 0 else 1.0
    out = signal + gain * noise
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.astype(np.float32)
