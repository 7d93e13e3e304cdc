"""SPD plans: which blocks drop their attention sync point at a TP degree, and the B2B-distilled weights of
the blocks that need them. Saved as JSON (+ a safetensors file of full, unsharded block tensors)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from leaninfer.models.config import ModelConfig
from leaninfer.paths import cache_dir


@dataclass
class SPDPlan:
    world: int
    drop: list[int]  # blocks whose attention all-reduce is dropped
    order: list[int] = field(default_factory=list)  # every block, least sensitive first
    tiers: dict[str, list[int]] = field(default_factory=dict)  # insensitive / sensitive / extreme
    sensitivity: list[float] = field(default_factory=list)  # per block: ppl increase when it drops its sync
    weights: str | None = None  # safetensors of B2B-distilled full tensors ("layers.{j}.…" names)

    def __post_init__(self) -> None:
        if self.world < 2:
            raise ValueError(f"an SPD plan needs world >= 2, got {self.world}")
        if len(set(self.drop)) != len(self.drop) or any(j < 0 for j in self.drop):
            raise ValueError(f"drop must list distinct block indices, got {self.drop}")

    def with_drop(self, n: int) -> SPDPlan:
        """The same plan dropping the n least sensitive blocks (in `order`)."""
        if not 0 <= n <= len(self.order):
            raise ValueError(f"can drop 0..{len(self.order)} blocks, asked for {n}")
        return SPDPlan(self.world, sorted(self.order[:n]), self.order, self.tiers, self.sensitivity, self.weights)

    def load_weights(self) -> dict[str, torch.Tensor] | None:
        """The distilled tensors of the dropped blocks (blocks that keep their sync keep the original weights)."""
        if not self.weights or not self.drop:
            return None
        from safetensors.torch import load_file

        keep = set(self.drop)
        state = load_file(self.weights)
        out = {k: v for k, v in state.items() if int(re.match(r"layers\.(\d+)\.", k).group(1)) in keep}
        return out or None

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> SPDPlan:
        return cls(**json.loads(Path(path).read_text()))


def plan_path(folder: str | Path, world: int) -> Path:
    """Where `leaninfer tp plan` stores the plan of a model folder at a TP degree."""
    return cache_dir("tp") / f"{Path(folder).name}-tp{world}.json"


def resolve_plan(spd: str | int | None, folder: str | Path, cfg: ModelConfig, world: int) -> SPDPlan | None:
    """`spd`: None (no SPD), a number N (drop the N least sensitive blocks of the stored plan, with its B2B
    weights; without a stored plan the last N blocks, where the paper starts), or a plan file."""
    if spd is None or str(spd) == "0":
        return None
    if str(spd).isdigit():
        n = int(spd)
        if n > cfg.n_layers:
            raise ValueError(f"--spd {n}: the model has {cfg.n_layers} blocks")
        stored = plan_path(folder, world)
        if stored.exists():
            return SPDPlan.load(stored).with_drop(n)
        order = list(range(cfg.n_layers - 1, -1, -1))
        return SPDPlan(world, sorted(order[:n]), order)
    path = Path(spd)
    if not path.exists():
        raise ValueError(f"--spd {spd!r} is neither a block count nor a plan file")
    plan = SPDPlan.load(path)
    if plan.world != world:
        raise ValueError(f"plan {path} is for TP={plan.world}, running TP={world}")
    if any(j >= cfg.n_layers for j in plan.drop):
        raise ValueError(f"plan {path} drops blocks outside 0..{cfg.n_layers - 1}")
    return plan
