"""Training loop shared by the MoE build (distillation from the dense model) and the PHDS / oracle SFT runs.

Only the MoE layers train (routers and experts); attention, norms and the embedding/head stay frozen. Each
step sees one chunk of `seq_len` tokens; the routing of the step comes from `routing_at(step)` (native top-k,
a fixed oracle k, or the PHDS schedule). State is checkpointed every `save_every` steps and at the time limit,
so a run resumes where it stopped.

Learning rate: linear warmup over `warmup` steps, then (schedule "cosine") a cosine decay to `min_lr_frac` of
the peak at the end of training. The end is the last step, or, when `max_minutes` is set and `time_decay` is
on, whichever of the step count or the time budget comes first (`lr_scale`): a run cut by its time budget has
still annealed, instead of stopping at the peak rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.io.cachefs import atomic_torch_save, safe_torch_load
from leaninfer.models.moe import MoE, Routing
from leaninfer.models.transformer import Decoder
from leaninfer.moe.lm import Bf16Head, kd_loss, lm_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int
    lr: float = 3e-5
    router_lr: float = 3e-4
    loss: str = "ce"  # "ce": next-token LM loss on the text; "kd": KL to the dense teacher's distribution
    save_every: int = 10
    max_minutes: float | None = None
    warmup: int = 10
    schedule: str = "cosine"  # "cosine": warmup, then cosine decay to min_lr_frac; "constant": warmup only
    min_lr_frac: float = 0.1
    time_decay: bool = False  # decay over the time budget too (progress = max(step / steps, time / budget))
    clock: str = "cpu"  # what the budget counts: "cpu" (this process's CPU time) or "wall"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.router_lr <= 0:
            raise ValueError("need steps >= 1 and positive learning rates")
        if self.loss not in ("ce", "kd"):
            raise ValueError(f"loss must be ce|kd, got {self.loss!r}")
        if self.schedule not in ("cosine", "constant") or not 0 <= self.min_lr_frac <= 1 or self.warmup < 0:
            raise ValueError("schedule must be cosine|constant, 0 <= min_lr_frac <= 1, warmup >= 0")
        if self.time_decay and self.max_minutes is None:
            raise ValueError("time_decay needs max_minutes")
        if self.clock not in ("cpu", "wall"):
            raise ValueError(f"clock must be cpu|wall, got {self.clock!r}")


def lr_scale(cfg: TrainConfig, step: int, seconds: float = 0.0) -> float:
    """Multiplier of the peak learning rates at `step` (0-based) after `seconds` of training."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.schedule == "constant":
        return warm
    progress = step / cfg.steps
    if cfg.time_decay:
        progress = max(progress, seconds / (cfg.max_minutes * 60))
    progress = min(1.0, progress)
    return warm * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def moe_params(model: Decoder) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(router weights, expert stacks) of every MoE layer; freezes every other parameter."""
    for p in model.parameters():
        p.requires_grad_(False)
    routers, experts = [], []
    for m in model.modules():
        if isinstance(m, MoE):
            routers.append(m.router.weight)
            experts += [m.gate_up, m.down]
    for p in routers + experts:
        p.requires_grad_(True)
    if not routers:
        raise ValueError("the model has no MoE layers to train")
    return routers, experts


def train_moe(
    model: Decoder,
    chunks: list[list[int]],
    cfg: TrainConfig,
    routing_at: Callable[[int], Routing],
    ckpt: Path,
    teacher: Decoder | None = None,
    on_log: Callable[[int, float], None] | None = None,
) -> dict:
    """Train the MoE layers of `model` for cfg.steps steps over `chunks` (cycled in order); resumable from
    `ckpt`. Returns {"steps_done", "losses", "lr", "seconds" (budget clock), "wall_seconds", "clock", "complete",
    "tokens"}."""
    if cfg.loss == "kd" and teacher is None:
        raise ValueError("loss 'kd' needs the dense teacher")
    if not chunks:
        raise ValueError("no training chunks")
    routers, experts = moe_params(model)
    opt = torch.optim.AdamW([{"params": routers, "lr": cfg.router_lr}, {"params": experts, "lr": cfg.lr}],
                            weight_decay=0.0)
    base_lrs = [cfg.router_lr, cfg.lr]
    state = {"step": 0, "losses": [], "seconds": 0.0}
    if ckpt.exists():
        saved = safe_torch_load(ckpt)
        with torch.no_grad():
            for p, v in zip(routers + experts, saved["params"], strict=True):
                p.copy_(v)
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        log.info("resuming %s at step %d", ckpt, state["step"])
    head = Bf16Head(model)
    t_head = None
    if teacher is not None:  # a teacher that shares the student's frozen head shares its bf16 copy too
        shared = teacher.head_weight().data_ptr() == model.head_weight().data_ptr()
        t_head = Bf16Head(teacher, head.weight if shared else None)
    clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
    t0, w0, start = clock(), time.perf_counter(), state["step"]
    state.setdefault("wall_seconds", state["seconds"])

    def spent() -> tuple[float, float]:
        return state["seconds"] + clock() - t0, state["wall_seconds"] + time.perf_counter() - w0

    model.train()
    bar = tqdm(total=cfg.steps, initial=start, desc=ckpt.stem, unit="step")
    complete = True
    for step in range(start, cfg.steps):
        x = torch.tensor([chunks[step % len(chunks)]])
        scale = lr_scale(cfg, step, spent()[0])
        for group, lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = lr * scale
        value = _step(model, head, x, routing_at(step), opt, routers + experts, cfg.loss, teacher, t_head)
        state["losses"].append(value)
        state.setdefault("lr", []).append(base_lrs[1] * scale)
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
        if on_log:
            on_log(step, value)
        elapsed, wall = spent()
        out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
        if state["step"] % cfg.save_every == 0 or out_of_time or state["step"] == cfg.steps:
            _save(ckpt, routers + experts, opt, {**state, "seconds": elapsed, "wall_seconds": wall})
        if out_of_time and state["step"] < cfg.steps:
            log.warning("time limit reached at step %d of %d", state["step"], cfg.steps)
            complete = False
            break
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    seconds, wall = spent()
    return {"steps_done": state["step"], "losses": state["losses"], "lr": state.get("lr", []), "seconds": seconds,
            "wall_seconds": wall, "clock": cfg.clock, "complete": complete, "tokens": state["step"] * len(chunks[0])}


def _step(model: Decoder, head: Bf16Head, x: torch.Tensor, routing: Routing, opt, params, loss_kind: str,
          teacher: Decoder | None, t_head: Bf16Head | None) -> float:
    """One optimiser step on the chunk x (1, T); returns the loss."""
    logits = head(model(x, logits=False, routing=routing).hidden)  # (1, T, V)
    if loss_kind == "kd":
        with torch.no_grad():
            target = t_head(teacher(x, logits=False).hidden)
        loss = kd_loss(logits, target)
    else:
        loss = lm_loss(logits, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())


def _save(path: Path, params, opt, state: dict) -> None:
    atomic_torch_save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict(), "state": state}, path)
