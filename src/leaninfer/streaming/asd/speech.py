"""Utterance pools for the synthetic ASD benchmark: espeak-ng speech (several voices) and its 25 fps envelope.

A pool is a list of `Utterance`s: a 16 kHz waveform whose length is a whole number of video frames, its RMS
envelope at the video rate (what drives a speaker's mouth) and its voiced span (what becomes the label).
`source="tone"` swaps espeak for a speech-like harmonic babble; it exists only so that tests can run on
machines without espeak-ng and is never used by the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leaninfer.streaming.audio import espeak_available, synthesize, trim_silence

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f2", "en-gb-x-rp+f3", "en-us+m3", "en+f4")
WORDS = (
    "river table garden window morning yellow silver paper market travel under over quickly slowly seven "
    "eleven twenty number letter simple nothing something people little winter summer autumn station "
    "bridge mountain forest ocean morning evening coffee orange purple music picture doctor teacher "
    "carry follow listen answer open close bring remember forget happy angry quiet noisy early later "
    "yesterday tomorrow together another weather planet rocket engine signal"
).split()


@dataclass
class Utterance:
    """One spoken phrase. wave: (frames*640,) float32; envelope: (frames,) in [0, 1]; voiced: (frames,) bool."""

    wave: np.ndarray
    envelope: np.ndarray
    voiced: np.ndarray
    text: str
    voice: str

    @property
    def frames(self) -> int:
        return len(self.envelope)

    def span(self) -> tuple[int, int]:
        """First and one-past-last voiced frame (the labelled speaking span)."""
        idx = np.flatnonzero(self.voiced)
        return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


def frame_envelope(wave: np.ndarray) -> np.ndarray:
    """(n_frames,) RMS per 40 ms video frame, normalised to [0, 1] by the 95th percentile."""
    n = len(wave) // SAMPLES_PER_FRAME
    rms = np.sqrt(np.mean(wave[: n * SAMPLES_PER_FRAME].reshape(n, SAMPLES_PER_FRAME) ** 2, axis=1))
    ref = np.percentile(rms, 95) if n else 1.0
    return np.clip(rms / (ref + 1e-8), 0.0, 1.0).astype(np.float32)


def _pad_to_frames(wave: np.ndarray) -> np.ndarray:
    n = int(np.ceil(len(wave) / SAMPLES_PER_FRAME)) * SAMPLES_PER_FRAME
    return np.pad(wave, (0, n - len(wave))).astype(np.float32)


def _tone_babble(rng: np.random.Generator, n_syllables: int) -> np.ndarray:
    """Speech-like stand-in: a harmonic complex whose amplitude rises and falls per 'syllable'."""
    f0 = rng.uniform(90, 240)
    pieces = []
    for _ in range(n_syllables):
        dur = int(rng.uniform(0.10, 0.26) * SAMPLE_RATE)
        t = np.arange(dur) / SAMPLE_RATE
        tone = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.03 * rng.standard_normal())) / h for h in range(1, 6))
        pieces.append(0.3 * np.sin(np.pi * np.arange(dur) / dur) * tone)
        if rng.random() < 0.3:
            pieces.append(np.zeros(int(rng.uniform(0.04, 0.15) * SAMPLE_RATE)))
    return np.concatenate(pieces).astype(np.float32)


def make_utterance(wave: np.ndarray, text: str, voice: str) -> Utterance:
    """Wrap a waveform: trim silence, pad to whole frames, compute envelope and voiced frames."""
    wave, _, _ = trim_silence(np.asarray(wave, dtype=np.float32), threshold=0.01, pad=320)
    wave = _pad_to_frames(wave)
    env = frame_envelope(wave)
    voiced = env > 0.12
    return Utterance(wave=wave, envelope=env, voiced=voiced, text=text, voice=voice)


def build_pool(n: int, rng: np.random.Generator, source: str = "espeak") -> list[Utterance]:
    """`n` random phrases of 2..7 words in random voices, speeds and pitches (espeak) or tone babble."""
    if source == "espeak" and not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); tests may use source='tone'")
    pool = []
    for _ in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 8)))
        text = " ".join(words)
        voice = str(rng.choice(VOICES))
        if source == "espeak":
            wave = synthesize(text, voice=voice, speed=int(rng.integers(130, 200)), pitch=int(rng.integers(25, 75)))
        elif source == "tone":
            wave = _tone_babble(rng, 2 * len(words))
        else:
            raise ValueError(f"unknown speech source {source!r} (espeak | tone)")
        pool.append(make_utterance(wave, text, voice))
    return pool
