"""Self-distillation data for MTP: the target's own greedy continuations of the T0 prompt corpus
(`../shared/data/t0_prompts`, train split; the validation split is for tuning only; Spec-Bench is never used).

Each example is `{"tokens": prompt + continuation ids, "prompt_len": int}`; a set is a list of them in one
safetensors-free JSON file (ids only), written once and reused (resumable by chunk)."""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

from tqdm import tqdm

from leaninfer.generate.loop import greedy_batch
from leaninfer.paths import shared_data


def t0_prompts(split: str, n: int, seed: int = 0, max_chars: int = 1500) -> list[str]:
    """n prompts of the T0 corpus (`split` = "train" | "validation"), shuffled with `seed`, at most `max_chars`
    long, in the same completion format as the evaluation prompts."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be train or validation, got {split!r}")
    path = shared_data("t0_prompts", f"{split}.jsonl.gz")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line)["prompt"].strip() for line in f if line.strip()]
    rows = [r for r in rows if 0 < len(r) <= max_chars]
    random.Random(seed).shuffle(rows)
    return [f"Question: {r}\nAnswer:" for r in rows[:n]]


def build_mtp_data(engine, path: Path, split: str = "train", n_prompts: int = 384, new_tokens: int = 96,
                   batch_size: int = 8, minutes: float | None = None, seed: int = 0) -> list[dict]:
    """Greedy continuations of `n_prompts` T0 prompts by `engine` (the target at its inference precision),
    appended to the JSON-lines file `path` batch by batch (an existing file is resumed). `minutes` caps the
    wall time of this call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_mtp_data(path) if path.exists() else []
    prompts = t0_prompts(split, n_prompts, seed)
    t0 = time.perf_counter()
    with path.open("a") as f:
        for b in tqdm(range(len(done), len(prompts), batch_size), desc=f"mtp data ({split})"):
            if minutes is not None and time.perf_counter() - t0 > 60 * minutes:
                break
            ids = [engine.encode(p) for p in prompts[b : b + batch_size]]
            outs = greedy_batch(engine.model, ids, new_tokens, engine.eos_ids)
            for p, o in zip(ids, outs):
                ex = {"tokens": p + o, "prompt_len": len(p)}
                done.append(ex)
                f.write(json.dumps(ex) + "\n")
            f.flush()
    return done


def load_mtp_data(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
