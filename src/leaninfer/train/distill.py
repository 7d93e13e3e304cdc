"""Self-distillation sets for draft training: the target's own continuations of the project's prompts, with
the target's hidden states at chosen layers (what feature-level drafts such as EAGLE consume).

Each example stores `tokens` (prompt + continuation ids), `prompt_len`, and `features` (T, n_layers, dim) in
bf16. Shards are saved with `torch.save` under the user cache; building is resumable shard by shard."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.generate.loop import greedy_batch
from leaninfer.train.prompts import build_prompts, derived_prompts


@dataclass
class DistillConfig:
    n_prompts: int = 256
    new_tokens: int = 128
    temperature: float = 0.0
    feature_layers: list[int] = field(default_factory=list)  # layer outputs to keep; [] = tokens only
    shard_size: int = 32
    batch_size: int = 8  # greedy continuations are generated in left-padded batches
    derived: bool = False  # add the stage-2 prompts built from stage-1 outputs
    worker: int = 0  # this process builds shards s with s % n_workers == worker
    n_workers: int = 1
    seed: int = 0


def _hidden_at(model, tokens: list[int], layers: list[int]) -> torch.Tensor:
    """Hidden states after each listed layer count, (T, len(layers), dim) bf16 (Gemma's residual stream
    overflows fp16)."""
    x = torch.tensor([tokens], device=model.embed.weight.device)
    out = model(x, layers=(0, max(layers)), logits=False, taps=tuple(layers))
    return torch.stack([out.taps[n][0] for n in layers], 1).bfloat16().cpu()


def build_distill_set(engine, out_dir: Path, cfg: DistillConfig) -> Path:
    """Generate continuations with `engine` and write shards to `out_dir` (skips shards already written).

    Stage 1 continues the project's topic x task prompts; with `cfg.derived`, stage 2 continues prompts built
    from the stage-1 outputs (summaries, translations, questions on a passage, maths, code)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    first = build_prompts(cfg.n_prompts, cfg.seed)
    _write_stage(engine, out_dir, "shard", first, cfg)
    if cfg.derived:
        n_first = (len(first) + cfg.shard_size - 1) // cfg.shard_size
        while len(list(out_dir.glob("shard-0*.pt"))) < n_first:  # other workers still on stage 1
            time.sleep(10)
        decode = engine.tokenizer.decode
        firsts = [decode(ex["tokens"][ex["prompt_len"] :].tolist()) for ex in _load(out_dir, "shard-0")]
        _write_stage(engine, out_dir, "shard-d", derived_prompts(firsts, cfg.seed), cfg)
    return out_dir


def _write_stage(engine, out_dir: Path, prefix: str, prompts: list[str], cfg: DistillConfig) -> None:
    n_shards = (len(prompts) + cfg.shard_size - 1) // cfg.shard_size
    for s in tqdm(range(n_shards), desc=f"distillation {prefix}"):
        path = out_dir / f"{prefix}-{s:04d}.pt"
        if path.exists() or s % cfg.n_workers != cfg.worker:
            continue
        ids = [engine.encode(p) for p in prompts[s * cfg.shard_size : (s + 1) * cfg.shard_size]]
        examples = []
        for b in range(0, len(ids), cfg.batch_size):
            chunk = ids[b : b + cfg.batch_size]
            if cfg.temperature == 0.0:
                outs = greedy_batch(engine.model, chunk, cfg.new_tokens, engine.eos_ids)
            else:
                outs = [engine.generate(p, max_new_tokens=cfg.new_tokens, temperature=cfg.temperature,
                                        seed=cfg.seed + s * cfg.shard_size + b + i).token_ids
                        for i, p in enumerate(chunk)]
            for p, o in zip(chunk, outs):
                ex = {"tokens": torch.tensor(p + o), "prompt_len": len(p)}
                if cfg.feature_layers:
                    with torch.inference_mode():
                        ex["features"] = _hidden_at(engine.model, p + o, cfg.feature_layers)
                examples.append(ex)
        tmp = path.with_suffix(".tmp")
        torch.save(examples, tmp)
        tmp.rename(path)


def _load(out_dir: Path, prefix: str) -> list[dict]:
    return [ex for f in sorted(Path(out_dir).glob(f"{prefix}*.pt")) for ex in torch.load(f, weights_only=True)]


def load_distill_set(out_dir: Path) -> list[dict]:
    """Every example of every stage."""
    return _load(out_dir, "shard-")
