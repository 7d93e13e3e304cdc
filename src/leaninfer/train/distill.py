"""Self-distillation sets for draft training: the target's own continuations of the project's prompts, with
the target's hidden states at chosen layers (what feature-level drafts such as EAGLE consume).

Each example stores `tokens` (prompt + continuation ids), `prompt_len`, and `features` (T, n_layers, dim) in
bf16. Shards are saved with `torch.save` under the user cache (each written to a private temporary file and
renamed); building is resumable shard by shard, a folder built with other settings is refused, and
`complete.json` is written only when every shard of every stage exists: readers trust nothing else."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.generate.loop import greedy_batch
from leaninfer.io.cachefs import atomic_torch_save, atomic_write_text, safe_torch_load
from leaninfer.train.prompts import build_prompts, derived_prompts
from leaninfer.validate import check_float, check_int


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

    def __post_init__(self) -> None:
        for name in ("n_prompts", "new_tokens", "shard_size", "batch_size", "n_workers"):
            check_int(name, getattr(self, name), 1)
        check_int("worker", self.worker, 0, self.n_workers - 1)
        check_float("temperature", self.temperature, 0.0)

    def data_key(self) -> dict:
        """The settings the data depend on (not how the work is split)."""
        return {k: v for k, v in asdict(self).items() if k not in _SPLIT}


_SPLIT = ("worker", "n_workers", "batch_size")
COMPLETE = "complete.json"


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
    if is_complete(out_dir, cfg):
        return out_dir
    _claim(out_dir, cfg)
    first = build_prompts(cfg.n_prompts, cfg.seed)
    _write_stage(engine, out_dir, "shard", first, cfg)
    n_first = _n_shards(len(first), cfg)
    n_second = 0
    if cfg.derived:
        while _count(out_dir, "shard-0") < n_first:  # other workers still on stage 1
            time.sleep(10)
        decode = engine.tokenizer.decode
        firsts = [decode(ex["tokens"][ex["prompt_len"] :].tolist()) for ex in _load(out_dir, "shard-0")]
        second = derived_prompts(firsts, cfg.seed)
        _write_stage(engine, out_dir, "shard-d", second, cfg)
        n_second = _n_shards(len(second), cfg)
    if _count(out_dir, "shard-0") == n_first and _count(out_dir, "shard-d") == n_second:
        atomic_write_text(out_dir / COMPLETE, json.dumps({"config": cfg.data_key(), "shards": n_first + n_second}))
    return out_dir


def _n_shards(n: int, cfg: DistillConfig) -> int:
    return (n + cfg.shard_size - 1) // cfg.shard_size


def _count(out_dir: Path, prefix: str) -> int:
    return len(list(Path(out_dir).glob(f"{prefix}*.pt")))


def _claim(out_dir: Path, cfg: DistillConfig) -> None:
    """Start or resume a build in `out_dir`; a folder with shards of other settings is refused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    conf = out_dir / "config.json"
    if conf.exists():
        try:
            old = {k: v for k, v in json.loads(conf.read_text()).items() if k not in _SPLIT}
        except ValueError:
            old = None
        if old != cfg.data_key() and _count(out_dir, "shard-"):
            raise ValueError(f"{out_dir} holds a distillation set built with other settings ({old}); delete it or "
                             "choose another folder")
    atomic_write_text(conf, json.dumps(asdict(cfg), indent=2))


def is_complete(out_dir: Path, cfg: DistillConfig | None = None) -> bool:
    """True when every shard of the set in `out_dir` was written (and, given `cfg`, with these settings)."""
    try:
        done = json.loads((Path(out_dir) / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return cfg is None or done.get("config") == cfg.data_key()


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
        atomic_torch_save(examples, path)


def _load(out_dir: Path, prefix: str) -> list[dict]:
    return [ex for f in sorted(Path(out_dir).glob(f"{prefix}*.pt")) for ex in safe_torch_load(f)]


def load_distill_set(out_dir: Path) -> list[dict]:
    """Every example of every stage of a complete set (a partial build is never trusted)."""
    return _load(check_distill_set(out_dir), "shard-")


def check_distill_set(out_dir: Path) -> Path:
    """`out_dir` if it holds a complete distillation set, else a clear FileNotFoundError / ValueError."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        raise FileNotFoundError(f"no distillation set at {out_dir}: build one with `leaninfer draft data`")
    if not is_complete(out_dir):
        raise ValueError(f"the distillation set at {out_dir} is incomplete (an interrupted or running build); "
                         "rerun `leaninfer draft data` with the same settings to finish it")
    return out_dir
