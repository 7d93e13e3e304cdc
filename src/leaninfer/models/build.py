"""Build a `Decoder` from a config and a state dict of our parameter names."""

from __future__ import annotations

import torch

from leaninfer.io import ModelLoadError
from leaninfer.models.config import ModelConfig
from leaninfer.models.transformer import Decoder


def build_decoder(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Decoder:
    """Instantiate without initialising (meta device), then assign the weights; strict name/shape checks."""
    with torch.device("meta"):
        model = Decoder(cfg)
    expected = dict(model.state_dict())
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"weights do not match {cfg.arch}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ModelLoadError(f"{name}: shape {tuple(t.shape)} != expected {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True, strict=True)
    return model.eval()
