"""Trained drafts in the user cache: one folder per (target, kind) with `config.json` and `weights.pt`.

`save_draft` writes both atomically; `load_draft` rebuilds the module from its config (no pickled code).
`leaninfer.load(...)` engines find their drafts here through `Engine.draft(kind)`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from leaninfer.io.cachefs import atomic_torch_save, atomic_write_text, safe_torch_load
from leaninfer.models.eagle import EagleConfig, EagleDraft
from leaninfer.models.heads import DraftHeads, HeadsConfig
from leaninfer.paths import cache_dir

KINDS = ("eagle", "medusa", "hydra", "draft-lm", "mirror")


class DraftNotFoundError(FileNotFoundError):
    pass


def target_key(source: str | Path) -> str:
    """Cache key of a target model: its file or folder name plus a short hash of its absolute path (two
    different models in folders of the same name must not share drafts)."""
    path = Path(str(source)).resolve()
    return f"{path.name or 'target'}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def draft_dir(source: str | Path, kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown draft kind {kind!r}; choose from {', '.join(KINDS)}")
    return cache_dir("drafts", target_key(source), kind, create=False)  # a lookup creates nothing


def build_draft(kind: str, config: dict) -> nn.Module:
    if kind == "eagle":
        return EagleDraft(EagleConfig(**config))
    if kind in ("medusa", "hydra"):
        return DraftHeads(HeadsConfig(**config))
    if kind == "draft-lm":
        from leaninfer.models.draft_lm import build_draft_lm

        return build_draft_lm(config)
    if kind == "mirror":  # the speculative-streaming draft Mirror-SD rolls out with
        from leaninfer.models.stream_draft import build_stream_draft

        return build_stream_draft(config)
    raise ValueError(f"unknown draft kind {kind!r}")


def save_draft(folder: Path, kind: str, config: dict, module: nn.Module, info: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, folder / "weights.pt")
    atomic_write_text(folder / "config.json", json.dumps({"kind": kind, "config": config, "info": info or {}},
                                                         indent=2))
    return folder


def quantize_draft(module: nn.Module, precision: str) -> nn.Module:
    """Weight-only quantise every linear of a draft for CPU inference (drafting is memory-bound: a draft
    step reads all of its weights for a handful of rows)."""
    from leaninfer.models.quant import QuantLinear

    if precision == "fp32":
        return module
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                q = QuantLinear.from_linear(sub.weight.detach(), None if sub.bias is None else sub.bias.detach(),
                                            precision)
                setattr(child, attr, q)
    return module


def load_draft(folder: Path, device: str | torch.device = "cpu",
               precision: str = "fp32") -> tuple[str, nn.Module, dict]:
    """Returns (kind, module in eval mode, meta); `precision` quantises its linears (CPU only)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "weights.pt").is_file():
        raise DraftNotFoundError(f"no trained draft in {folder}")
    try:
        meta = json.loads((folder / "config.json").read_text())
        module = build_draft(meta["kind"], meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad or truncated draft config {folder / 'config.json'}: {e}") from None
    module.load_state_dict(safe_torch_load(folder / "weights.pt"))
    return meta["kind"], quantize_draft(module.eval(), precision).to(device), meta
