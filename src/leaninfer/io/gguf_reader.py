"""GGUF files (read with the `gguf` package, dequantised to fp32) mapped onto HF names, then onto `Decoder`.

Supported GGUF architectures: gemma3 and llama. llama.cpp's converter stores Gemma norm weights as (1 + w)
and permutes Llama q/k rows for its interleaved RoPE; both are undone here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from leaninfer.io import ModelLoadError
from leaninfer.io.hf import context_cap
from leaninfer.models.config import ModelConfig

_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "ffn_norm": "pre_feedforward_layernorm",
}


def open_gguf(path: Path):
    """Open a GGUF file with clear errors for a missing, non-GGUF, corrupt or truncated file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no such GGUF file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the gguf package raises assorted errors for damaged files
        raise ModelLoadError(f"corrupt or truncated GGUF file {path}: {e}") from e
    return reader


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ("gemma3", "llama"):
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; supported: gemma3, llama")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_layers, dim, n_heads = g("block_count"), g("embedding_length"), g("attention.head_count")
    head_dim = g("attention.key_length") or dim // n_heads
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    common = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=g("attention.head_count_kv") or n_heads, head_dim=head_dim,
        intermediate_size=g("feed_forward_length"), norm_eps=g("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=g("rope.freq_base", 10000.0), tie_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=[_field(reader, "tokenizer.ggml.eos_token_id", 1)],
        max_seq_len=context_cap(int(g("context_length", 8192))),
    )
    if arch == "gemma3":
        # llama.cpp's gemma3 graph: every 6th layer is global, local layers use RoPE base 10000,
        # attention scale 1/sqrt(head_dim) (the 270M-12B sizes)
        return ModelConfig(
            arch="gemma3", **common, rope_theta_local=10000.0, sliding_window=g("attention.sliding_window"),
            layer_types=["full" if (i + 1) % 6 == 0 else "sliding" for i in range(n_layers)],
            qk_norm="head", sandwich_norm=True, norm_offset=1.0, embed_scale=math.sqrt(dim), act="gelu_tanh",
            attn_scale=head_dim**-0.5,
        )
    return ModelConfig(arch="llama", **common)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved -> rotate-half RoPE)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: Path, progress: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read and dequantise a GGUF file; returns our config and HF-named fp32 tensors."""
    from gguf.quants import dequantize

    reader = open_gguf(path)
    cfg = gguf_config(reader)
    out: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc="dequantising GGUF", disable=not progress, leave=False):
        if t.name in _TENSORS:
            name = _TENSORS[t.name]
        else:
            parts = t.name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK:
                raise ModelLoadError(f"unexpected GGUF tensor {t.name!r}")
            name = f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
            if cfg.arch == "llama" and parts[2] == "ffn_norm":
                name = f"model.layers.{parts[1]}.post_attention_layernorm.weight"
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as e:
            raise ModelLoadError(f"cannot dequantise {t.name} ({t.tensor_type.name}): {e}") from e
        w = w.reshape([int(x) for x in reversed(t.shape)])
        if cfg.arch == "gemma3" and t.name.endswith("norm.weight"):
            w = w - 1.0
        if cfg.arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _unpermute(w, cfg.n_heads if "attn_q" in t.name else cfg.n_kv_heads)
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))
    return cfg, out
