"""Hugging Face checkpoint folders (config.json + safetensors) mapped onto our `Decoder`.

`config_from_hf` turns an HF config dict into a `ModelConfig`; `map_hf_tensors` renames HF tensors to our
parameter names (HF names are also what the GGUF reader produces, so both loaders share this map).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import torch

from leaninfer.io import ModelLoadError
from leaninfer.models.config import ModelConfig

log = logging.getLogger(__name__)
MAX_SEQ_LEN = 32768

_FAMILIES = {
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "llama": "llama",
    "qwen2": "qwen2",
    "mistral": "mistral",
    "olmoe": "olmoe",
    "qwen2_moe": "qwen2_moe",
    "mixtral": "mixtral",
}


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope(d: dict, kind: str | None = None) -> tuple[float | None, float, dict[str, float] | None]:
    """(rope_theta, linear scaling factor, llama3 scaling or None) from a v4 (`rope_theta`) or v5
    (`rope_parameters`) config."""
    params = d.get("rope_parameters") or {}
    if kind and kind in params:
        params = params[kind]
    theta = params.get("rope_theta", d.get("rope_theta"))
    scaling = params if params.get("rope_type") else (d.get("rope_scaling") or {})
    rtype = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rtype not in ("default", "linear", "llama3"):
        raise ModelLoadError(f"RoPE scaling type {rtype!r} is not supported (supported: default, linear, llama3)")
    if rtype == "llama3":
        missing = [k for k in LLAMA3_KEYS if k not in scaling]
        if missing:
            raise ModelLoadError(f"llama3 RoPE scaling is missing {missing}")
        return theta, 1.0, {k: float(scaling[k]) for k in LLAMA3_KEYS}
    return theta, float(scaling.get("factor", 1.0)) if rtype == "linear" else 1.0, None


def context_cap(n: int) -> int:
    """The longest context we allocate for: the checkpoint's own limit, capped at LEANINFER_MAX_SEQ_LEN
    (default 32768) so that caches and RoPE tables stay small on a CPU; the cap is logged, never silent."""
    cap = int(os.environ.get("LEANINFER_MAX_SEQ_LEN", MAX_SEQ_LEN))
    if n > cap:
        log.warning("context capped at %d tokens (the checkpoint allows %d); set LEANINFER_MAX_SEQ_LEN to change it",
                    cap, n)
    return min(n, cap)


def config_from_hf(d: dict) -> ModelConfig:
    """Map an HF `config.json` dict onto `ModelConfig`. Raises ModelLoadError for unsupported models."""
    if "text_config" in d and d.get("model_type") == "gemma3":
        d = {**d["text_config"], "model_type": "gemma3_text"}
    model_type = d.get("model_type")
    arch = _FAMILIES.get(model_type)
    if arch is None:
        raise ModelLoadError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(_FAMILIES))}")
    n_layers, dim, n_heads = d["num_hidden_layers"], d["hidden_size"], d["num_attention_heads"]
    head_dim = d.get("head_dim") or dim // n_heads
    eos = d.get("eos_token_id")
    common = dict(
        arch=arch,
        vocab_size=d["vocab_size"],
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=d.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        intermediate_size=d.get("intermediate_size", 0),
        norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
        max_seq_len=context_cap(int(d.get("max_position_embeddings", 8192))),
    )
    theta, factor, llama3 = _rope(d, "full_attention" if arch == "gemma3" else None)
    common.update(rope_theta=theta or 10000.0, rope_scaling_factor=factor, rope_llama3=llama3)
    act = d.get("hidden_activation") or d.get("hidden_act", "silu")
    common["act"] = "gelu_tanh" if act in ("gelu_pytorch_tanh", "gelu_tanh") else "silu"
    if act not in ("silu", "gelu_pytorch_tanh", "gelu_tanh"):
        raise ModelLoadError(f"unsupported activation {act!r}")
    if arch == "gemma3":
        if d.get("final_logit_softcapping") or d.get("attn_logit_softcapping"):
            raise ModelLoadError("logit soft-capping is not supported")
        local, _, _ = _rope(d, "sliding_attention")
        types = d.get("layer_types") or [
            "full_attention" if (i + 1) % d.get("sliding_window_pattern", 6) == 0 else "sliding_attention"
            for i in range(n_layers)
        ]
        common.update(
            rope_theta_local=d.get("rope_local_base_freq", local or 10000.0),
            sliding_window=d.get("sliding_window"),
            layer_types=["sliding" if t == "sliding_attention" else "full" for t in types],
            qk_norm="head", sandwich_norm=True, norm_offset=1.0, embed_scale=math.sqrt(dim),
            attn_scale=d.get("query_pre_attn_scalar", head_dim) ** -0.5,
        )
    else:
        window = d.get("sliding_window")
        if arch == "qwen2" and not d.get("use_sliding_window", False):
            window = None
        if arch in ("qwen2_moe", "olmoe"):
            window = None
        common.update(sliding_window=window or None, qkv_bias=arch in ("qwen2", "qwen2_moe") or
                      bool(d.get("attention_bias", False)))
        if arch == "olmoe":
            common["qk_norm"] = "full"
    if arch in ("olmoe", "qwen2_moe", "mixtral"):
        if d.get("mlp_only_layers") or d.get("decoder_sparse_step", 1) != 1:
            raise ModelLoadError("Qwen2-MoE checkpoints with dense (mlp_only) layers are not supported")
        common.update(
            n_experts=d.get("num_experts") or d.get("num_local_experts"),
            top_k=d["num_experts_per_tok"],
            moe_intermediate_size=d.get("moe_intermediate_size") or d.get("intermediate_size"),
            shared_expert_intermediate_size=d.get("shared_expert_intermediate_size", 0) if arch == "qwen2_moe" else 0,
            norm_topk_prob=True if arch == "mixtral" else bool(d.get("norm_topk_prob", False)),
        )
    return ModelConfig(**common)


_RENAMES = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.input_norm."),
    (r"^model\.layers\.(\d+)\.self_attn\.", r"layers.\1.attn."),
    (r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.", r"layers.\1.ffn_norm."),
    (r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.", r"layers.\1.post_ffn_norm."),
    (r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight$", r"layers.\1.ffn.router.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.shared_expert_gate\.", r"layers.\1.ffn.shared_gate."),
    (r"^model\.layers\.(\d+)\.mlp\.shared_expert\.", r"layers.\1.ffn.shared."),
    (r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.gate_up_proj$", r"layers.\1.ffn.gate_up"),
    (r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.down_proj$", r"layers.\1.ffn.down"),
    (r"^model\.layers\.(\d+)\.mlp\.", r"layers.\1.ffn."),
]
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$")


def map_hf_tensors(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF tensors to `Decoder` parameter names; stack per-expert weights into (E, ...) tensors."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in tensors.items():
        m = _EXPERT.match(name)
        if m:
            part = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(m.group(3), m.group(3))
            experts.setdefault((int(m.group(1)), part), {})[int(m.group(2))] = t
            continue
        if name.endswith("post_attention_layernorm.weight"):
            i = name.split(".")[2]
            out[f"layers.{i}.{'post_attn_norm' if cfg.sandwich_norm else 'ffn_norm'}.weight"] = t
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                out[new] = t
                break
        else:
            if not name.endswith("rotary_emb.inv_freq"):
                raise ModelLoadError(f"unexpected tensor {name!r} for architecture {cfg.arch}")
    for layer in sorted({k[0] for k in experts}):
        stack = {p: torch.stack([experts[(layer, p)][e] for e in range(cfg.n_experts)]) for p in
                 ("gate_proj", "up_proj", "down_proj")}
        out[f"layers.{layer}.ffn.gate_up"] = torch.cat([stack["gate_proj"], stack["up_proj"]], dim=1)
        out[f"layers.{layer}.ffn.down"] = stack["down_proj"]
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def read_hf_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config.json and every *.safetensors file in `path`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"no such model folder: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{path} has no config.json")
    try:
        cfg = config_from_hf(json.loads(cfg_file.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelLoadError(f"bad config.json in {path}: {e}") from e
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"corrupt or truncated safetensors file {f}: {e}") from e
    return cfg, map_hf_tensors(cfg, tensors)
