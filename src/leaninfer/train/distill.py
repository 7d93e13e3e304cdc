"""Self-distillation sets for draft training: the target's own continuations of the project's prompts, with
the target's hidden states at chosen layers (what feature-level drafts such as EAGLE consume).

Each example stores `tokens` (prompt + continuation ids), `prompt_len`, and `features` (T, n_layers, dim) in
fp16. Shards are saved with `torch.save` under the user cache; building is resumable shard by shard."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.train.prompts import build_prompts


@dataclass
class DistillConfig:
    n_prompts: int = 256
    new_tokens: int = 128
    temperature: float = 0.0
    feature_layers: list[int] = field(default_factory=list)  # layer outputs to keep; [] = tokens only
    shard_size: int = 32
    seed: int = 0


def _hidden_at(model, tokens: list[int], layers: list[int]) -> torch.Tensor:
    """Hidden states after each listed layer count, (T, len(layers), dim) fp16."""
    x = torch.tensor([tokens], device=model.embed.weight.device)
    out = model(x, layers=(0, max(layers)), logits=False, taps=tuple(layers))
    return torch.stack([out.taps[n][0] for n in layers], 1).half().cpu()


def build_distill_set(engine, out_dir: Path, cfg: DistillConfig) -> Path:
    """Generate continuations with `engine` and write shards to `out_dir` (skips shards already written)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    prompts = build_prompts(cfg.n_prompts, cfg.seed)
    n_shards = (len(prompts) + cfg.shard_size - 1) // cfg.shard_size
    for s in tqdm(range(n_shards), desc="distillation shards"):
        path = out_dir / f"shard-{s:04d}.pt"
        if path.exists():
            continue
        examples = []
        for i, prompt in enumerate(prompts[s * cfg.shard_size : (s + 1) * cfg.shard_size]):
            ids = engine.encode(prompt)
            out = engine.generate(ids, max_new_tokens=cfg.new_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed + s * cfg.shard_size + i, eos=False)
            tokens = ids + out.token_ids
            ex = {"tokens": torch.tensor(tokens), "prompt_len": len(ids)}
            if cfg.feature_layers:
                with torch.inference_mode():
                    ex["features"] = _hidden_at(engine.model, tokens, cfg.feature_layers)
            examples.append(ex)
        tmp = path.with_suffix(".tmp")
        torch.save(examples, tmp)
        tmp.rename(path)
    return out_dir


def load_distill_set(out_dir: Path) -> list[dict]:
    return [ex for f in sorted(Path(out_dir).glob("shard-*.pt")) for ex in torch.load(f, weights_only=True)]
