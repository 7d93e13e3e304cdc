"""Checkpoints (config JSON + weights) and ONNX export of the re-parameterised model, checked with onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leaninfer.io.cachefs import atomic_torch_save, atomic_write_text, safe_torch_load
from leaninfer.streaming.kws.models import ModelConfig, build_model
from leaninfer.streaming.layers import set_streaming
from leaninfer.streaming.reparam import reparameterize


def save_model(model: nn.Module, folder: str | Path, deployed: bool = False) -> Path:
    """Write config.json (model config + whether it is re-parameterised) and weights.pt (state + feature norm)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": json.loads(model.cfg.to_json()), "deployed": deployed}
    atomic_torch_save({"state": model.state_dict(), "feat_norm": getattr(model, "feat_norm", None)},
                      folder / "weights.pt")
    atomic_write_text(folder / "config.json", json.dumps(meta, indent=2))
    return folder


def load_model(folder: str | Path) -> nn.Module:
    """Rebuild a saved model from its config.json; weights.pt is read as tensors only (never code)."""
    folder = Path(folder)
    check_checkpoint(folder)
    meta = json.loads((folder / "config.json").read_text())
    cfg = ModelConfig(**meta["model"])
    model = build_model(cfg).eval()
    if meta["deployed"]:
        model = reparameterize(model)
    blob = safe_torch_load(folder / "weights.pt")
    model.load_state_dict(blob["state"])
    model.feat_norm = blob["feat_norm"]
    model.cfg = cfg
    return model.eval()


def check_checkpoint(folder: str | Path) -> Path:
    """A clear FileNotFoundError when `folder` is not a saved model (config.json + weights.pt), before any work."""
    folder = Path(folder)
    missing = [n for n in ("config.json", "weights.pt") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"no KWS model in {folder} (missing {', '.join(missing)}); train one with "
                                "`leaninfer kws train`")
    return folder


class _Normalised(nn.Module):
    """Bakes the feature normalisation into the exported graph: raw log-mel (B, T, M) -> frame logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        mean, std = model.feat_norm
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model((feats - self.mean) / self.std)


def export_onnx(model: nn.Module, path: str | Path, n_frames: int = 98) -> Path:
    """Export a (re-parameterised) model, whole-clip mode with a dynamic time axis, opset 17."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    set_streaming(model, False)
    wrapped = _Normalised(model.eval()).eval()
    x = torch.zeros(1, n_frames, model.cfg.n_mels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["feats"],
            output_names=["logits"],
            dynamic_axes={"feats": {0: "B", 1: "T"}, "logits": {0: "B", 1: "T"}},
        )
    return path


def check_onnx(model: nn.Module, path: str | Path, feats: torch.Tensor) -> float:
    """Max |onnxruntime - PyTorch| on raw features (B, T, M)."""
    import onnxruntime as ort

    set_streaming(model, False)
    with torch.inference_mode():
        ref = _Normalised(model.eval())(feats).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"feats": feats.numpy().astype(np.float32)})[0]
    return float(np.abs(out - ref).max())
