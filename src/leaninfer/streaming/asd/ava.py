"""Read AVA-ActiveSpeaker face tracks from a local folder into a `TrackSet` (same contract as the synthetic data).

The videos cannot be downloaded here; users who have them extracted can train and evaluate with the same code.
Expected layout (face crops at 25 fps, one folder per face track, one WAV per track starting at its first frame):

    root/csv/{split}_orig.csv                                 AVA label rows (header optional):
        video_id, frame_timestamp, x1, y1, x2, y2, label, entity_id
    root/clips_videos/{split}/{video_id}/{entity_id}/{timestamp:.2f}.jpg
    root/clips_audios/{split}/{video_id}/{entity_id}.wav

Labels: SPEAKING_AUDIBLE -> 1; NOT_SPEAKING -> 0; SPEAKING_NOT_AUDIBLE -> 0 (as in the official evaluation,
which scores only audible speech) unless `inaudible_as` says otherwise. Tracks are cut into chunks of `frames`
frames; the tail of the last chunk is padded with blank faces, silent audio and label -1 (ignored).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from leaninfer.streaming.asd.data import TrackSet, wave_to_mel
from leaninfer.streaming.asd.speech import SAMPLE_RATE, SAMPLES_PER_FRAME
from leaninfer.streaming.audio import resample
from leaninfer.streaming.features import LogMel

LABELS = {"SPEAKING_AUDIBLE": 1, "NOT_SPEAKING": 0}


def read_labels(path: Path, inaudible_as: int = 0) -> dict[tuple[str, str], list[tuple[float, int]]]:
    """{(video_id, entity_id): [(timestamp, label), ...] sorted by time} from an AVA label CSV."""
    tracks: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) < 8 or row[0] == "video_id":
                continue
            label = LABELS.get(row[6].strip(), inaudible_as if row[6].strip() == "SPEAKING_NOT_AUDIBLE" else None)
            if label is None:
                raise ValueError(f"unknown AVA label {row[6]!r} in {path}")
            tracks[(row[0].strip(), row[7].strip())].append((float(row[1]), int(label)))
    return {key: sorted(rows) for key, rows in tracks.items()}


def _read_face(path: Path, size: int) -> np.ndarray | None:
    from PIL import Image

    if not path.exists():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _read_wave(path: Path) -> np.ndarray:
    from scipy.io import wavfile

    rate, data = wavfile.read(path)
    data = np.asarray(data)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return resample(data, int(rate), SAMPLE_RATE)


def load_ava(root: Path | str, split: str = "val", frames: int = 200, size: int = 32, inaudible_as: int = 0,
             max_tracks: int | None = None) -> TrackSet:
    """Face tracks of one AVA split as a TrackSet (chunks of `frames` frames, `size` x `size` grayscale)."""
    root = Path(root)
    labels_by_track = read_labels(root / "csv" / f"{split}_orig.csv", inaudible_as)
    logmel = LogMel()
    faces, mels, labels, audio_index, names = [], [], [], [], []
    for n, ((video, entity), rows) in enumerate(sorted(labels_by_track.items())):
        if max_tracks is not None and n >= max_tracks:
            break
        crops = [_read_face(root / "clips_videos" / split / video / entity / f"{ts:.2f}.jpg", size) for ts, _ in rows]
        lab = np.array([lb if c is not None else -1 for (_, lb), c in zip(rows, crops)], np.int8)
        img = np.stack([c if c is not None else np.zeros((size, size), np.uint8) for c in crops])
        wav_path = root / "clips_audios" / split / video / f"{entity}.wav"
        wave = _read_wave(wav_path) if wav_path.exists() else np.zeros(0, np.float32)
        for start in range(0, len(rows), frames):
            chunk = slice(start, start + frames)
            n_valid = len(lab[chunk])
            f = np.zeros((frames, size, size), np.uint8)
            f[:n_valid] = img[chunk]
            lb = np.full(frames, -1, np.int8)
            lb[:n_valid] = lab[chunk]
            w = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
            piece = wave[start * SAMPLES_PER_FRAME : (start + n_valid) * SAMPLES_PER_FRAME]
            w[: len(piece)] = piece
            audio_index.append(len(mels))
            mels.append(wave_to_mel(w, logmel))
            faces.append(f)
            labels.append(lb)
            names.append(f"{video}/{entity}@{start}")
    if not faces:
        raise ValueError(f"no labelled face tracks found under {root} for split {split!r}")
    lab_arr = np.stack(labels)
    return TrackSet(np.stack(faces), np.stack(mels), np.asarray(audio_index, np.int64), lab_arr,
                    np.full_like(lab_arr, -1), {"source": "ava", "root": str(root), "split": split, "tracks": names})
