"""Synthetic keyword-spotting corpus (espeak-ng) and a Google Speech Commands v2 folder adapter.

Clip sets: 1 s clips, 13 classes (silence, unknown, the wake phrase and 10 commands), as log-mel tensors.
Stream sets: long recordings of noise + words/sentences + wake phrases with timestamped events; the wake
phrase's end is the anchor for SAL, false accepts per hour and detection latency; utterance onsets are the
anchors of the speech-onset task. Speakers (voice variants) are disjoint between train/val/test.
Everything is a pure function of the DataConfig (seeded), cached under `cache_dir("kws", <hash>)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from leaninfer.io.cachefs import atomic_torch_save, atomic_write_text, safe_torch_load
from leaninfer.paths import cache_dir
from leaninfer.streaming import audio
from leaninfer.streaming.features import LogMel

log = logging.getLogger(__name__)

WAKE = "hey nova"
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = ("_silence_", "_unknown_", WAKE, *COMMANDS)
UNKNOWN = (
    "hey nora",
    "nova",
    "hey",
    "over",
    "no way",
    "novel",
    "yet",
    "yellow",
    "nose",
    "cup",
    "town",
    "lift",
    "light",
    "write",
    "own",
    "of",
    "top",
    "goal",
    "dog",
    "bird",
    "house",
    "seven",
    "zero",
    "happy",
    "tree",
    "wow",
    "learn",
    "follow",
    "forward",
    "visual",
    "bed",
    "cat",
    "one",
    "two",
    "three",
    "dove",
    "gone",
    "step",
    "lefty",
    "bright",
    "hay",
    "know",
    "supernova",
    "okay",
    "now",
    "stock",
    "go on",
    "upon",
)
SENTENCES = (
    "the weather is nice today",
    "please open the window",
    "what time is the meeting",
    "i will call you back later",
    "turn the music down a little",
    "we went to the park on sunday",
    "nobody knows where the novel went",
    "have you seen my keys",
    "left or right is fine with me",
    "the bus stops near the station",
    "hey can you help me with this",
    "go over the notes again",
)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = {
    "train": ("", "+m1", "+m2", "+m4", "+m6", "+m7", "+f1", "+f3", "+f5", "+klatt", "+Mike", "+Andy", "+Annie"),
    "val": ("+m5", "+f4", "+klatt2"),
    "test": ("+m3", "+f2", "+klatt3", "+Alex"),
}
NOISES = ("white", "pink", "brown", "hum", "babble_like")
SNRS_DB = (0.0, 5.0, 10.0, 20.0, 40.0)
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """What to synthesise. clips_per_class is per split: train, val, test."""

    seed: int = 0
    sample_rate: int = 16000
    clip_s: float = 1.0
    clips_per_class: tuple[int, int, int] = (240, 40, 80)
    streams: tuple[int, int, int] = (120, 240, 480)
    stream_s: float = 30.0
    wake_prob: float = 0.3
    version: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.clips_per_class = tuple(int(n) for n in self.clips_per_class)
        self.streams = tuple(int(n) for n in self.streams)
        if len(self.clips_per_class) != 3 or len(self.streams) != 3:
            raise ValueError("clips_per_class and streams need one count per split (train, val, test)")

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ClipSet:
    feats: torch.Tensor  # (N, T, M) log-mel
    labels: torch.Tensor  # (N,) class index
    classes: tuple[str, ...] = CLASSES


@dataclass
class StreamSet:
    feats: list[torch.Tensor]  # each (T_i, M)
    events: list[list[dict]]  # per stream: {"start", "end" (seconds), "text", "kind"}
    durations: list[float]

    @property
    def hours(self) -> float:
        return sum(self.durations) / 3600.0


def _random_utterance(text: str, split: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    voice = str(rng.choice(ACCENTS)) + str(rng.choice(VARIANTS[split]))
    wave = audio.synthesize(
        text, voice=voice, speed=int(rng.integers(120, 221)), pitch=int(rng.integers(20, 81)), sample_rate=sr
    )
    wave, _, _ = audio.trim_silence(wave)
    return wave * np.float32(10.0 ** (rng.uniform(-10.0, 3.0) / 20.0))  # level variation (AGC range)


def render_clip(cfg: DataConfig, split: str, label: int, index: int) -> np.ndarray:
    """One 1 s clip of class `label` (deterministic in cfg.seed, split, label, index)."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), label, index])
    n = int(cfg.clip_s * cfg.sample_rate)
    clip = np.zeros(n, dtype=np.float32)
    noise = audio.make_noise(str(rng.choice(NOISES)), n, rng)
    if label == 0:  # silence: noise only, at a random level
        return (noise * np.float32(10.0 ** (rng.uniform(-30.0, 0.0) / 20.0))).astype(np.float32)
    text = str(rng.choice(UNKNOWN)) if label == 1 else CLASSES[label]
    wave = _random_utterance(text, split, rng, cfg.sample_rate)[-n:]
    start = int(rng.integers(0, n - wave.size + 1))
    clip[start : start + wave.size] = wave
    return audio.mix_at_snr(clip, noise, float(rng.choice(SNRS_DB)))


def render_stream(cfg: DataConfig, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """One long stream and its events: gaps of noise, then a wake phrase / command / unknown word / sentence."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 99, index])
    sr, n = cfg.sample_rate, int(cfg.stream_s * cfg.sample_rate)
    speech = np.zeros(n, dtype=np.float32)
    events, pos = [], int(rng.uniform(0.2, 1.0) * sr)
    while True:
        r = rng.random()
        if r < cfg.wake_prob:
            kind, text = "wake", WAKE
        elif r < cfg.wake_prob + 0.25:
            kind, text = "command", str(rng.choice(COMMANDS))
        elif r < cfg.wake_prob + 0.55:
            kind, text = "unknown", str(rng.choice(UNKNOWN))
        else:
            kind, text = "sentence", str(rng.choice(SENTENCES))
        wave = _random_utterance(text, split, rng, sr)
        if pos + wave.size >= n - sr // 2:
            break
        speech[pos : pos + wave.size] = wave
        events.append({"start": pos / sr, "end": (pos + wave.size) / sr, "text": text, "kind": kind})
        pos += wave.size + int(rng.uniform(0.4, 2.0) * sr)
    noise = audio.make_noise(str(rng.choice(NOISES)), n, rng)
    snr = float(rng.choice(SNRS_DB[:-1]))
    # mix against the level of the speech that is present, not the silent gaps
    active = np.abs(speech) > 0
    p_sig = float(np.mean(speech[active] ** 2)) if active.any() else 1e-4
    gain = np.sqrt(p_sig / (float(np.mean(noise**2)) * 10 ** (snr / 10)))
    mix = speech + gain * noise
    return (mix / max(1.0, float(np.abs(mix).max()) / 0.99)).astype(np.float32), events


def _build_clips(
    cfg: DataConfig, split: str, n_per_class: int, lm: LogMel, bar: tqdm, prior: ClipSet | None = None
) -> ClipSet:
    """Render the clip set; clips of a cached `prior` set (same seed, an index prefix per class) are reused."""
    have = prior.labels.numel() // len(CLASSES) if prior is not None and prior.labels.numel() else 0
    feats, labels = [], []
    for label in range(len(CLASSES)):
        for i in range(n_per_class):
            reuse = i < have
            feats.append(prior.feats[label * have + i] if reuse else lm(render_clip(cfg, split, label, i)))
            labels.append(label)
            bar.update(1)
    return ClipSet(
        torch.stack(feats) if feats else torch.zeros(0, 0, lm.n_mels), torch.tensor(labels, dtype=torch.long)
    )


def _build_streams(
    cfg: DataConfig, split: str, count: int, lm: LogMel, bar: tqdm, prior: StreamSet | None = None
) -> StreamSet:
    """Render `count` streams; the first streams of a cached `prior` set (same seed and split) are reused."""
    have = len(prior.feats) if prior is not None else 0
    feats, events, durs = [], [], []
    for i in range(count):
        if i < have:
            feats.append(prior.feats[i])
            events.append(prior.events[i])
            durs.append(prior.durations[i])
        else:
            wave, ev = render_stream(cfg, split, i)
            feats.append(lm(wave))
            events.append(ev)
            durs.append(wave.size / cfg.sample_rate)
        bar.update(1)
    return StreamSet(feats, events, durs)


_COUNTS = ("clips_per_class", "streams")


def _prior_corpus(cfg: DataConfig) -> dict | None:
    """The cached corpus with the same settings except the counts and the most items to reuse, if any.

    Every clip and stream is a pure function of (seed, split, class, index), so a cached corpus with the same
    settings holds an exact prefix of a bigger one: growing the test streams only renders the new ones.
    """
    want = {k: v for k, v in asdict(cfg).items() if k not in _COUNTS}
    best, best_n = None, 0
    for conf in cache_dir("kws").glob("corpus-*/config.json"):
        old = json.loads(conf.read_text())
        if {k: v for k, v in old.items() if k not in _COUNTS} != want or not (conf.parent / "corpus.pt").exists():
            continue
        n = sum(old["streams"]) + sum(old["clips_per_class"])
        if n > best_n:
            best, best_n = conf.parent / "corpus.pt", n
    return _load_corpus(best) if best is not None else None


def _load_corpus(path: Path) -> dict:
    """A cached corpus: tensors, plain containers and our two data classes only (never code from the file)."""
    return safe_torch_load(path, safe_globals=[ClipSet, StreamSet])


def build_corpus(cfg: DataConfig, force: bool = False, progress: bool = True) -> dict:
    """Synthesise (or load from cache) {"clips": {split: ClipSet}, "streams": {split: StreamSet}, "config": ...}."""
    path = cache_dir("kws", f"corpus-{cfg.key()}") / "corpus.pt"
    if path.exists() and not force:
        return _load_corpus(path)
    if not audio.espeak_available():
        raise RuntimeError("espeak-ng is needed to synthesise the KWS corpus: apt-get install espeak-ng")
    lm = LogMel(cfg.sample_rate)
    total = sum(cfg.clips_per_class) * len(CLASSES) + sum(cfg.streams)
    corpus: dict = {"clips": {}, "streams": {}, "config": asdict(cfg)}
    prior = None if force else _prior_corpus(cfg)
    if prior is not None:
        log.info("reusing cached clips/streams of a corpus with the same settings (a prefix of this one)")
    with tqdm(total=total, desc="kws data", disable=not progress, unit="item") as bar:
        for split, n_clip, n_stream in zip(SPLITS, cfg.clips_per_class, cfg.streams):
            old_clips, old_streams = (prior["clips"][split], prior["streams"][split]) if prior else (None, None)
            corpus["clips"][split] = _build_clips(cfg, split, n_clip, lm, bar, old_clips)
            corpus["streams"][split] = _build_streams(cfg, split, n_stream, lm, bar, old_streams)
    atomic_torch_save(corpus, path)
    atomic_write_text(path.parent / "config.json", json.dumps(asdict(cfg), indent=2))
    log.info("KWS corpus written to %s", path)
    return corpus


GSC12 = ("_silence_", "_unknown_", *COMMANDS)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile

    rate, data = wavfile.read(path)
    data = np.asarray(data)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return (data.mean(axis=1) if data.ndim == 2 else data).astype(np.float32), int(rate)


def load_speech_commands(
    root: str | Path, split: str = "test", sample_rate: int = 16000, silence_per_split: int = 0, seed: int = 0
) -> ClipSet:
    """Google Speech Commands v2 from a local folder (`<root>/<word>/*.wav`, validation_list.txt, testing_list.txt).

    Standard 12-class task: the 10 commands, `_unknown_` (every other word) and `_silence_` (1 s crops of
    `_background_noise_`). Returns a ClipSet over GSC12 with 1 s clips (zero-padded or cut).
    """
    root = Path(root)
    lists = {
        name: set((root / f"{name}_list.txt").read_text().split()) if (root / f"{name}_list.txt").exists() else set()
        for name in ("validation", "testing")
    }
    lm, n = LogMel(sample_rate), sample_rate
    feats, labels = [], []

    def add(wave: np.ndarray, rate: int, label: int) -> None:
        wave = audio.resample(wave, rate, sample_rate)[:n]
        feats.append(lm(np.pad(wave, (0, n - wave.size))))
        labels.append(label)

    for wav in sorted(root.glob("*/*.wav")):
        word, rel = wav.parent.name, f"{wav.parent.name}/{wav.name}"
        if word.startswith("_"):
            continue
        where = "val" if rel in lists["validation"] else "test" if rel in lists["testing"] else "train"
        if where == split:
            add(*_read_wav(wav), GSC12.index(word) if word in COMMANDS else 1)
    rng = np.random.default_rng(seed)
    noise_files = sorted((root / "_background_noise_").glob("*.wav"))
    for i in range(silence_per_split if noise_files else 0):
        wave, rate = _read_wav(noise_files[i % len(noise_files)])
        start = int(rng.integers(0, max(1, wave.size - rate)))
        add(wave[start : start + rate] * rng.uniform(0, 1), rate, 0)
    return ClipSet(
        torch.stack(feats) if feats else torch.zeros(0, lm.n_frames(n), lm.n_mels),
        torch.tensor(labels, dtype=torch.long),
        GSC12,
    )
