"""`leaninfer moe build`: derive a trained MoE from the default dense model (Gemma 3 270M).

Stages (each resumable; the work folder is `cache_dir("moe", name, "work")`):
1. collect: run the dense model over training text and keep each layer's FFN input (after the pre-FFN norm)
   for `collect_tokens` tokens;
2. moefy: per layer, balanced co-activation clustering of the 2048 neurons into `n_experts` experts, a router
   fitted to the experts' output norms, then router + experts fitted to the dense outputs (`moe.moefy`);
3. train: end-to-end distillation from the dense model (KL to its next-token distribution) of the MoE
   layers only, at the native top-k, for at most `train_steps` chunks of `seq_len` tokens and at most the time
   budget (`max_minutes` minus this run's set-up time); the learning rate decays (cosine) over whichever of
   the two ends first, so a run stopped by the budget ends annealed;
4. save: a model folder (leaninfer.json, model.safetensors, tokenizer.json, build.json) that
   `leaninfer.load(path)` reads like any other.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.io.cachefs import atomic_torch_save, check_name, file_lock, inside, safe_torch_load, writing
from leaninfer.io.store import read_model_dir, resolve
from leaninfer.io.tokenizer import Tokenizer
from leaninfer.models.build import build_decoder
from leaninfer.models.config import ModelConfig
from leaninfer.models.moe import Routing
from leaninfer.models.transformer import Decoder
from leaninfer.moe import moefy
from leaninfer.moe.data import chunk_tokens, train_texts
from leaninfer.moe.train import TrainConfig, train_moe
from leaninfer.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    name: str = "gemma3-moe"
    source: str = "default"
    n_experts: int = 16
    top_k: int = 8
    seq_len: int = 128
    collect_tokens: int = 4096
    cluster_tokens: int = 1024
    router_steps: int = 150
    fit_steps: int = 60
    train_steps: int = 2000
    lr: float = 1.5e-4
    router_lr: float = 1.5e-3
    max_minutes: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_name(self.name, "MoE name")
        if not 0 < self.top_k <= self.n_experts:
            raise ValueError(f"need 0 < top_k <= n_experts, got {self.top_k}, {self.n_experts}")
        if self.collect_tokens < self.cluster_tokens or self.seq_len < 2 or self.max_minutes <= 0:
            raise ValueError("need collect_tokens >= cluster_tokens, seq_len >= 2, max_minutes > 0")

    @classmethod
    def quick(cls, **kw) -> BuildConfig:
        return cls(**{"name": "gemma3-moe-quick", "collect_tokens": 1024, "cluster_tokens": 512, "router_steps": 30,
                      "fit_steps": 10, "train_steps": 4, "seq_len": 64, **kw})


def model_dir(name: str, create: bool = True) -> Path:
    """The folder of a built MoE in the user cache; `name` must be a plain name (no separators, no '..')."""
    root = cache_dir("moe", create=create)
    return inside(root, root / check_name(name, "MoE name"))


def built_model(name_or_path: str) -> Path | None:
    """The folder of a finished MoE build called `name_or_path`, or None (it may be a path or 'default')."""
    try:
        folder = model_dir(name_or_path, create=False)
    except ValueError:
        return None
    return folder if (folder / "leaninfer.json").is_file() else None


def load_dense(source: str | Path) -> tuple[Path, ModelConfig, dict, Tokenizer | None, Decoder]:
    """The dense model an MoE is derived from, at fp32: (folder, config, state dict, tokenizer, Decoder).

    The build distils from it and the KD loss of the PHDS / oracle SFT (`moe/sft.py`) uses it as the teacher."""
    src = resolve(source)
    dense_cfg, dense_state, tok = read_model_dir(src)
    if dense_cfg.is_moe:
        raise ValueError(f"{source} is already an MoE, not a dense model")
    dense = build_decoder(dense_cfg, dense_state)
    dense.eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    return src, dense_cfg, dense_state, tok, dense


def _collect(dense: Decoder, chunks: list[list[int]], n_tokens: int) -> list[torch.Tensor]:
    """FFN inputs per layer: n_layers tensors (n_tokens, D)."""
    store: list[list[torch.Tensor]] = [[] for _ in dense.layers]
    hooks = [layer.ffn.register_forward_pre_hook(lambda m, a, i=i: store[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, layer in enumerate(dense.layers)]
    n = 0
    with torch.inference_mode():
        for ids in tqdm(chunks, desc="collect", unit="chunk"):
            dense(torch.tensor([ids]), logits=False)
            n += len(ids)
            if n >= n_tokens:
                break
    for h in hooks:
        h.remove()
    return [torch.cat(s)[:n_tokens].clone() for s in store]


def _moefy_layer(dense: Decoder, i: int, x: torch.Tensor, cfg: BuildConfig) -> tuple[dict, float]:
    mlp = dense.layers[i].ffn
    gate, up, down = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()
    act = dense.cfg.act
    with torch.no_grad():
        acts = moefy.neuron_activations(x, gate, up, act)  # (N, I)
        y = acts @ down.t()  # (N, D) dense FFN output
        assign = moefy.balanced_kmeans(acts[: cfg.cluster_tokens].abs().t(), cfg.n_experts, seed=cfg.seed + i)
        gate_up, downs, groups = moefy.split_experts(gate, up, down, assign, cfg.n_experts)
        norms = moefy.expert_norms(acts, down, groups)
    router = moefy.fit_router(x, norms, cfg.router_steps)
    scale = moefy.init_scales(x, router, cfg.top_k)
    downs = downs * scale[:, None, None]
    router, gate_up, downs, err = moefy.fit_layer(x, y, router, gate_up, downs, cfg.top_k, act, cfg.fit_steps,
                                                  seed=cfg.seed + i)
    prefix = f"layers.{i}.ffn."
    return {prefix + "router.weight": router, prefix + "gate_up": gate_up, prefix + "down": downs}, err


def _moe_model(dense_state: dict, dense_cfg, cfg: BuildConfig, ffn: dict) -> Decoder:
    mcfg = replace(dense_cfg, n_experts=cfg.n_experts, top_k=cfg.top_k, norm_topk_prob=False,
                   moe_intermediate_size=dense_cfg.intermediate_size // cfg.n_experts,
                   shared_expert_intermediate_size=0, layer_types=list(dense_cfg.layer_types))
    state = {k: v for k, v in dense_state.items() if ".ffn." not in k}
    return build_decoder(mcfg, {**state, **ffn})


def _init_key(cfg: BuildConfig) -> dict:
    """The settings the MoEfied layers (init.pt) depend on."""
    keep = ("source", "n_experts", "top_k", "seq_len", "collect_tokens", "cluster_tokens", "router_steps",
            "fit_steps", "seed")
    return {k: v for k, v in asdict(cfg).items() if k in keep}


def build_moe(cfg: BuildConfig, force: bool = False) -> Path:
    """Run (or resume) the build; returns the model folder. An existing finished build is reused."""
    out = model_dir(cfg.name)
    if (out / "build.json").exists() and not force:
        log.info("MoE %s already built at %s", cfg.name, out)
        return out
    work = cache_dir("moe", check_name(cfg.name, "MoE name") + ".work")
    t0 = time.perf_counter()
    src, dense_cfg, dense_state, tok, dense = load_dense(cfg.source)
    chunks = chunk_tokens(tok.encode, train_texts(), cfg.seq_len)
    random.Random(cfg.seed).shuffle(chunks)
    log.info("%d training chunks of %d tokens", len(chunks), cfg.seq_len)
    init = work / "init.pt"
    saved = safe_torch_load(init) if init.exists() else None
    if saved is not None and saved.get("config") != _init_key(cfg):  # written by a build with other settings
        log.warning("ignoring %s: it was written with other settings", init)
        saved = None
    if saved is not None:
        ffn, errors = saved["ffn"], saved["errors"]
    else:
        xs = _collect(dense, chunks, cfg.collect_tokens)
        ffn, errors = {}, []
        for i in tqdm(range(dense_cfg.n_layers), desc="moefy", unit="layer"):
            state, err = _moefy_layer(dense, i, xs[i], cfg)
            ffn.update(state)
            errors.append(err)
        atomic_torch_save({"ffn": ffn, "errors": errors, "config": _init_key(cfg)}, init)
    model = _moe_model(dense_state, dense_cfg, cfg, ffn)
    init_s = time.perf_counter() - t0
    budget = cfg.max_minutes - init_s / 60
    tcfg = TrainConfig(steps=cfg.train_steps, lr=cfg.lr, router_lr=cfg.router_lr, loss="kd", max_minutes=budget,
                       time_decay=True)
    native = Routing(top_k=cfg.top_k)
    result = train_moe(model, chunks, tcfg, lambda step: native, work / "train.pt", teacher=dense)
    save_model(model, src, out, {
        "config": asdict(cfg), "layer_fit_rel_error": errors, "train": result,
        "seconds_init_this_run": init_s, "seconds_train": result["seconds"], "source_folder": str(src),
    })
    return out


def save_model(model: Decoder, src: Path, out: Path, meta: dict, meta_name: str = "build.json") -> None:
    """Write a model folder (config, weights, the source's tokenizer, a JSON of metadata) atomically."""
    with file_lock(out), writing(out, folder=True) as tmp:
        _write_model(model, src, tmp, meta, meta_name)


def _write_model(model: Decoder, src: Path, tmp: Path, meta: dict, meta_name: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    if (src / "tokenizer.json").exists():
        shutil.copy(src / "tokenizer.json", tmp / "tokenizer.json")
    model.cfg.save(tmp / "leaninfer.json")
    (tmp / meta_name).write_text(json.dumps(meta, indent=1))
