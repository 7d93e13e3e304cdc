"""Block-to-block (B2B) distillation for SPD: the SPD version of block j (student, initialised with the block's
own weights) is trained to reproduce the original block's output (teacher) on hidden states entering block j
in the original model. Only block j's weights change; blocks are independent. Runs on the single-process
simulation, whose gradients reach the full (unsharded) weights, so the result shards like any checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from leaninfer.parallel.spd import SimSPDBlock

log = logging.getLogger(__name__)


@dataclass
class B2BConfig:
    steps: int = 60
    lr: float = 5e-5
    batch: int = 4  # sequences per step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.batch < 1:
            raise ValueError(f"bad B2B config {self}")


def capture_inputs(model: nn.Module, tokens: torch.Tensor, blocks: list[int]) -> dict[int, tuple]:
    """(x, cos, sin, mask) entering each block in `blocks` of the original model over `tokens` (N, T)."""
    seen: dict[int, tuple] = {}
    hooks = [model.layers[j].register_forward_pre_hook(lambda m, a, j=j: seen.__setitem__(j, a[:4]))
             for j in blocks]
    try:
        with torch.no_grad():
            model(tokens, logits=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE normalised by the target's mean square (scale-free across blocks)."""
    return (out - target).pow(2).mean() / target.pow(2).mean()


def distill_block(block: nn.Module, world: int, inputs: tuple, cfg: B2BConfig) -> tuple[dict, dict]:
    """Train a copy of `block` as a `world`-rank SPD block to match `block`. inputs: (x (N, T, d), cos, sin, mask)
    from `capture_inputs`. Returns (trained state dict of the block, {"loss_before", "loss_after", "seconds"})."""
    x, cos, sin, mask = inputs
    with torch.no_grad():
        target = block(x, cos, sin, mask)
    student = copy.deepcopy(block).train()
    for p in student.parameters():
        p.requires_grad_(True)
    sim = SimSPDBlock(student, world)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    N = x.shape[0]
    t0 = time.process_time()

    def full_loss() -> float:
        with torch.no_grad():
            return float(_loss(sim(x, cos, sin, mask), target))

    before = full_loss()
    for _ in range(cfg.steps):
        idx = torch.randperm(N, generator=gen)[: cfg.batch]
        m = mask if mask is None or mask.shape[0] == 1 else mask[idx]
        loss = _loss(sim(x[idx], cos[idx], sin[idx], m), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = full_loss()
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    return state, {"loss_before": before, "loss_after": after, "cpu_s": time.process_time() - t0}


def distill_blocks(model: nn.Module, world: int, tokens: torch.Tensor, blocks: list[int], cfg: B2BConfig
                   ) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
    """B2B for each block in `blocks`: ({"layers.{j}.<name>": tensor}, {j: losses})."""
    inputs = capture_inputs(model, tokens, blocks)
    weights, info = {}, {}
    for j in blocks:
        state, info[j] = distill_block(model.layers[j], world, inputs[j], cfg)
        weights.update({f"layers.{j}.{k}": v for k, v in state.items()})
        log.info("B2B block %d: %s", j, info[j])
    return weights, info
