"""Compose one synthetic audio-visual scene: who speaks when, what every mouth does, what the microphone hears.

A scene is T video frames (25 fps) with K visible faces. A timeline of phrases is drawn; each phrase is said
either by one visible face or by an off-screen voice. The sound track is the sum of all said phrases plus
background noise at a random SNR. Each face's mouth follows

* its own phrases, when it speaks (envelope of its own audio, with a per-face gain and up to one frame of
  audio-visual offset), and otherwise one of three distractor behaviours, fixed per face and scene:
* ``silent``: a closed mouth with small twitches;
* ``mumble``: mouthing other phrases that are **not** in the sound track (out of sync with the audio);
* ``echo``: mouthing what is heard, but 6..20 frames late (the hard case: right content, wrong time).

Label (face k, frame t) = 1 iff t lies in the voiced span of a phrase said by face k (the AVA
"speaking and audible" notion, with short pauses inside a phrase counted as speaking).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from leaninfer.streaming.asd.render import FaceStyle, render_track, smooth_walk
from leaninfer.streaming.asd.speech import SAMPLES_PER_FRAME, Utterance
from leaninfer.streaming.audio import NOISE_KINDS, make_noise, mix_at_snr

BEHAVIOURS = ("silent", "mumble", "echo")


@dataclass
class Phrase:
    start: int  # first frame
    utterance: int  # index into the pool
    speaker: int  # face index, or -1 for an off-screen voice
    gain: float


@dataclass
class Scene:
    """Everything drawn for one scene (numpy). faces: (K, T, S, S) float32; wave: (T*640,); labels: (K, T)."""

    faces: np.ndarray
    wave: np.ndarray
    labels: np.ndarray
    audio_active: np.ndarray  # (T,) any audible phrase is voiced
    mouth: np.ndarray  # (K, T) mouth opening that was drawn
    behaviours: list[str]
    styles: list[FaceStyle]
    phrases: list[Phrase] = field(default_factory=list)
    snr_db: float = 0.0


def draw_timeline(rng: np.random.Generator, pool: list[Utterance], frames: int, faces: int,
                  p_offscreen: float = 0.2) -> list[Phrase]:
    """Phrases placed one after another with short gaps (and occasional overlaps between different talkers)."""
    phrases, t, last = [], int(rng.integers(0, 15)), -2
    while t < frames - 8:
        speaker = -1 if rng.random() < p_offscreen else int(rng.integers(0, faces))
        if speaker == last and speaker >= 0 and faces > 1:
            speaker = (speaker + 1 + int(rng.integers(0, faces - 1))) % faces
        u = int(rng.integers(0, len(pool)))
        phrases.append(Phrase(start=t, utterance=u, speaker=speaker, gain=float(rng.uniform(0.5, 1.0))))
        t += pool[u].frames + int(rng.integers(3, 25))
        if rng.random() < 0.1:  # next talker starts before this one has finished
            t -= int(rng.integers(5, 20))
        last = speaker
    return phrases


def _place(track: np.ndarray, values: np.ndarray, start: int) -> None:
    """track[start:start+len] = max(track, values), clipped to the track length (in place)."""
    end = min(len(track), start + len(values))
    if end > start:
        track[start:end] = np.maximum(track[start:end], values[: end - start])


def _mumble(rng: np.random.Generator, pool: list[Utterance], frames: int) -> np.ndarray:
    out, t = np.zeros(frames, np.float32), int(rng.integers(0, 20))
    while t < frames:
        u = pool[int(rng.integers(0, len(pool)))]
        _place(out, u.envelope, t)
        t += u.frames + int(rng.integers(3, 30))
    return out


def compose_scene(rng: np.random.Generator, pool: list[Utterance], mumble_pool: list[Utterance], frames: int = 200,
                  faces: int = 3, size: int = 32, snr_db: tuple[float, float] = (0.0, 20.0)) -> Scene:
    """Draw one scene. `mumble_pool` holds phrases that are mouthed but never heard."""
    phrases = draw_timeline(rng, pool, frames, faces)
    n_samples = frames * SAMPLES_PER_FRAME
    speech = np.zeros(n_samples, np.float32)
    heard = np.zeros(frames, np.float32)  # envelope of everything audible (drives echoes)
    audio_active = np.zeros(frames, bool)
    labels = np.zeros((faces, frames), np.uint8)
    own = np.zeros((faces, frames), np.float32)
    speaking = np.zeros((faces, frames), bool)  # phrase extent, including its unvoiced edges
    for ph in phrases:
        u = pool[ph.utterance]
        s0, s1 = ph.start * SAMPLES_PER_FRAME, min(n_samples, (ph.start + u.frames) * SAMPLES_PER_FRAME)
        speech[s0:s1] += ph.gain * u.wave[: s1 - s0]
        _place(heard, u.envelope, ph.start)
        v0, v1 = u.span()
        a0, a1 = ph.start + v0, min(frames, ph.start + v1)  # voiced span in scene frames
        audio_active[a0:a1] = True
        if ph.speaker >= 0:
            labels[ph.speaker, a0:a1] = 1
            speaking[ph.speaker, ph.start : min(frames, ph.start + u.frames)] = True
            _place(own[ph.speaker], u.envelope, ph.start)

    behaviours = [str(rng.choice(BEHAVIOURS, p=[0.35, 0.35, 0.3])) for _ in range(faces)]
    styles = [FaceStyle.sample(rng) for _ in range(faces)]
    mouth = np.zeros((faces, frames), np.float32)
    tracks = []
    for k in range(faces):
        offset = int(rng.integers(-1, 2))  # audio-visual offset of this face, in frames
        m = np.roll(own[k], offset) * rng.uniform(0.6, 1.0)
        if behaviours[k] == "mumble":
            other = _mumble(rng, mumble_pool, frames) * rng.uniform(0.6, 1.0)
        elif behaviours[k] == "echo":
            lag = int(rng.integers(6, 21))
            other = np.concatenate([np.zeros(lag, np.float32), heard[: frames - lag]]) * rng.uniform(0.6, 1.0)
        else:
            other = np.clip(smooth_walk(rng, frames, 0.05, smooth=3.0), 0.0, None)
        m = np.where(speaking[k], m, other)
        m = np.clip(m + 0.03 * rng.standard_normal(frames).astype(np.float32), 0.0, 1.0)
        mouth[k] = m
        tracks.append(render_track(styles[k], m, rng, size=size))

    snr = float(rng.uniform(*snr_db))
    noise = make_noise(str(rng.choice(NOISE_KINDS)), n_samples, rng)
    wave = mix_at_snr(speech, noise, snr) if np.any(speech) else noise
    return Scene(faces=np.stack(tracks), wave=wave.astype(np.float32), labels=labels, audio_active=audio_active,
                 mouth=mouth, behaviours=behaviours, styles=styles, phrases=phrases, snr_db=snr)
