"""Real text for building, fine-tuning and evaluating the MoE, with fixed held-out splits.

- Spec-Bench long turns (news articles to summarise and retrieved passages, `eval.perplexity.text_corpus`):
  passage i goes to `train` when i % 6 < 3, to `val` when i % 6 == 3 and to `test` when i % 6 >= 4
  (60 / 20 / 40 passages). Validation is for RoE tuning; test is never trained or tuned on.
- LoCoMo conversations (`../shared/data/locomo/locomo7.json`, CC BY-NC 4.0, read in place, never copied):
  training only, as "Speaker: text" lines per session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from leaninfer.eval.perplexity import text_corpus
from leaninfer.paths import shared_data

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _split_of(i: int) -> str:
    r = i % 6
    return "train" if r < 3 else ("val" if r == 3 else "test")


def passages(split: str) -> list[str]:
    """Spec-Bench long passages of one split (train / val / test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [t for i, t in enumerate(text_corpus()) if _split_of(i) == split]


def locomo_texts() -> list[str]:
    """One text per LoCoMo session ("Speaker: text" lines); empty when the shared data is absent."""
    path = shared_data("locomo", "locomo7.json")
    if not path.exists():
        log.warning("LoCoMo not found at %s; training on Spec-Bench passages only", path)
        return []
    texts = []
    for sample in json.loads(path.read_text()):
        conv = sample["conversation"]
        n = 1
        while f"session_{n}" in conv:
            lines = [f"{turn['speaker']}: {turn['text']}" for turn in conv[f"session_{n}"]]
            texts.append("\n".join(lines))
            n += 1
    return texts


def train_texts() -> list[str]:
    """All training text: the Spec-Bench train passages and the LoCoMo sessions, interleaved."""
    spec, loc = passages("train"), locomo_texts()
    out: list[str] = []
    for i in range(max(len(spec), len(loc))):
        out += ([spec[i]] if i < len(spec) else []) + ([loc[i]] if i < len(loc) else [])
    return out


def chunk_tokens(encode: Callable[[str], list[int]], texts: list[str], seq_len: int) -> list[list[int]]:
    """Tokenise each text (with BOS) and cut it into chunks of exactly seq_len tokens (tails dropped)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    chunks = []
    for text in texts:
        ids = encode(text)
        chunks += [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    return chunks
