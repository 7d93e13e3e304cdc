"""`leaninfer moe phds`: PHDS SFT of a built MoE, and the fixed-k oracle SFT baselines at the same budget.

PHDS (arXiv 2509.23012): each step draws one global k from `k_set` (uniformly), runs the native top-k_pre
experts and scales the experts ranked below k by eps (`Routing(top_k=k_pre, keep=k, eps)`; renormalised
afterwards only when the family renormalises); from `anchor_start` of training the draw shifts linearly over
`ramp` to the low `anchor_k`. Oracle-k: the same steps, data, order and learning rates, always at hard top-k.
Loss (`SFTConfig.loss`): "kd" (default), KL to the next-token distribution of the dense model the MoE was
derived from (the base's build.json `config.source`, loaded like the build's teacher), or "ce", next-token
cross-entropy on the training text. Only routers and experts train.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from leaninfer.engine import load
from leaninfer.models.moe import Routing
from leaninfer.models.transformer import Decoder
from leaninfer.moe.build import load_dense, model_dir, save_model
from leaninfer.moe.data import chunk_tokens, train_texts
from leaninfer.moe.phds import PHDSSchedule
from leaninfer.moe.train import TrainConfig, train_moe
from leaninfer.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    base: str = "gemma3-moe"  # name of a built MoE (cache_dir("moe")/<base>) or a model folder
    steps: int = 200
    seq_len: int = 128
    lr: float = 1e-4
    router_lr: float = 1e-3
    k_set: list[int] = field(default_factory=lambda: [4, 6, 8])
    anchor_k: int | None = 4
    anchor_start: float = 0.7
    ramp: float = 0.1
    eps: float = 1e-6
    seed: int = 1
    max_minutes: float | None = None
    loss: str = "kd"  # "kd": KL to the dense source model; "ce": next-token cross-entropy on the text
    teacher: str | None = None  # dense teacher for "kd" (default: the base's build.json config.source)

    def __post_init__(self) -> None:
        if self.loss not in ("kd", "ce"):
            raise ValueError(f"loss must be kd|ce, got {self.loss!r}")
        if self.steps < 1 or not self.k_set:
            raise ValueError("need steps >= 1 and a non-empty k_set")
        if self.anchor_k is not None and self.anchor_k not in self.k_set:
            raise ValueError(f"anchor_k {self.anchor_k} is not in k_set {self.k_set}")


def base_dir(base: str) -> Path:
    p = Path(base)
    return p if p.is_dir() else model_dir(base)


def run_name(cfg: SFTConfig, oracle_k: int | None) -> str:
    return f"{Path(cfg.base).name}-{'phds' if oracle_k is None else f'oracle{oracle_k}'}"


def run_sft(cfg: SFTConfig, oracle_k: int | None = None, force: bool = False) -> Path:
    """PHDS SFT (oracle_k None) or the oracle SFT at fixed k; returns the fine-tuned model folder."""
    src = base_dir(cfg.base)
    if not (src / "leaninfer.json").exists():
        raise FileNotFoundError(f"no built MoE at {src}: run `leaninfer moe build` first")
    name = run_name(cfg, oracle_k)
    out = cache_dir("moe") / name
    if (out / "sft.json").exists() and not force:
        done = json.loads((out / "sft.json").read_text()).get("config", {})
        if done != asdict(cfg):
            log.warning("%s exists with a different SFTConfig %s (asked: %s); reusing it, pass force to redo",
                        out, done, asdict(cfg))
        return out
    engine = load(src, precision="fp32")
    model, k_pre = engine.model, engine.cfg.top_k
    if max(cfg.k_set) > k_pre or (oracle_k is not None and not 0 < oracle_k <= k_pre):
        raise ValueError(f"k must be <= the native k_pre={k_pre}")
    chunks = chunk_tokens(engine.tokenizer.encode, train_texts(), cfg.seq_len)
    random.Random(cfg.seed).shuffle(chunks)
    if oracle_k is None:
        sched = PHDSSchedule(cfg.k_set, cfg.steps, cfg.anchor_k, cfg.anchor_start, cfg.ramp, k_pre, cfg.eps, cfg.seed)
        drawn: dict[int, int] = {}

        def routing_at(step: int) -> Routing:
            if step not in drawn:  # draws are sequential and seeded: replaying them restores a resumed run
                for s in range(len(drawn), step + 1):
                    drawn[s] = sched.sample_k(s)
            return Routing(top_k=k_pre, keep=drawn[step], eps=cfg.eps)
    else:
        fixed = Routing(top_k=oracle_k)
        drawn = {}

        def routing_at(step: int) -> Routing:
            return fixed

    teacher_dir, teacher = _teacher(cfg, src, model) if cfg.loss == "kd" else (None, None)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, router_lr=cfg.router_lr, loss=cfg.loss,
                       max_minutes=cfg.max_minutes)
    work = cache_dir("moe", name + ".work")
    result = train_moe(model, chunks, tcfg, routing_at, work / "train.pt", teacher=teacher)
    if not result["complete"]:
        raise RuntimeError(f"{name}: stopped at step {result['steps_done']} of {cfg.steps}; rerun to resume")
    k_counts = {str(k): sum(1 for v in drawn.values() if v == k) for k in cfg.k_set} if drawn else None
    save_model(model, src, out, {"config": asdict(cfg), "oracle_k": oracle_k, "k_draws": k_counts, "train": result,
                                 "base": str(src), "loss": cfg.loss,
                                 "teacher": None if teacher_dir is None else str(teacher_dir)}, meta_name="sft.json")
    return out


def teacher_source(cfg: SFTConfig, base: Path) -> str:
    """The dense model a KD SFT distils from: cfg.teacher, else the source the base MoE was built from."""
    if cfg.teacher is not None:
        return cfg.teacher
    meta = base / "build.json"
    if not meta.exists():
        raise FileNotFoundError(f"{base} has no build.json naming its dense source: pass SFTConfig.teacher")
    return json.loads(meta.read_text())["config"]["source"]


def _teacher(cfg: SFTConfig, base: Path, student: Decoder) -> tuple[Path, Decoder]:
    src, _, _, _, dense = load_dense(teacher_source(cfg, base))
    n = share_frozen(dense, student)
    log.info("KD SFT: teacher %s (%d tensors shared with the student)", src, n)
    return src, dense


def share_frozen(teacher: Decoder, student: Decoder) -> int:
    """Point the teacher's parameters at the student's tensors wherever name, shape and values are equal (the
    embedding, attention and norms an MoEfied model keeps frozen from its dense source), so the two models hold
    one copy. Only safe while those student parameters stay frozen, as in `train_moe`. Returns the count."""
    own = dict(student.named_parameters())
    same = {name: own[name].detach() for name, p in teacher.named_parameters()
            if name in own and own[name].shape == p.shape and torch.equal(own[name], p)}
    teacher.load_state_dict(same, strict=False, assign=True)
    return len(same)
