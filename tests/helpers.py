"""Tiny random-initialised Hugging Face reference models, built from configs (no downloads)."""

from __future__ import annotations

import contextlib

import gguf
import numpy as np
import torch
from torch import nn

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_config(arch: str, **overrides):
    import transformers as tf

    if arch == "gemma3":
        kw = dict(head_dim=16, sliding_window=5, query_pre_attn_scalar=12,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        return tf.Gemma3TextConfig(**{**TINY, **kw, **overrides})
    if arch == "llama":
        return tf.LlamaConfig(**TINY, rope_theta=500.0)
    if arch == "qwen2":
        return tf.Qwen2Config(**TINY)
    if arch == "mistral":
        return tf.MistralConfig(**TINY, sliding_window=6)
    if arch == "olmoe":
        return tf.OlmoeConfig(**{**TINY, "num_experts": 6, "num_experts_per_tok": 2, **overrides})
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(**{**TINY, "num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                                    "shared_expert_intermediate_size": 40, **overrides})
    if arch == "mixtral":
        return tf.MixtralConfig(**{**TINY, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None,
                                   **overrides})
    raise ValueError(arch)


def hf_model(arch: str, seed: int = 0, **overrides):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = hf_config(arch, **overrides)
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # larger than default init so differences show
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


ARCHES = ["gemma3", "llama", "qwen2", "mistral", "olmoe", "qwen2_moe", "mixtral"]


def write_word_tokenizer(folder, vocab_size: int = 96) -> list[str]:
    """A word-level tokenizer.json: ids 0-2 are <pad>, <bos>, <eos>; the rest are words w3..wN."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["<pad>", "<bos>", "<eos>"] + [f"w{i}" for i in range(3, vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    for special in words[:3]:
        tok.add_special_tokens([special])
    tok.save(str(folder / "tokenizer.json"))
    return words


def tiny_model_dir(folder, arch: str = "gemma3", seed: int = 0, **overrides):
    """An HF checkpoint folder (config, safetensors, tokenizer.json) of a tiny random model."""
    hf = hf_model(arch, seed, **overrides)
    hf.save_pretrained(folder)
    write_word_tokenizer(folder)
    return hf


# GGUF files in llama.cpp's conventions, written with the `gguf` writer (no downloads).
_BLOCK = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's q/k permutation
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch: str, quantize_embedding: bool = False):
    """Export a tiny random HF model as a GGUF file; returns the HF model."""
    if arch == "gemma3":  # llama.cpp's gemma3 conventions: every 6th layer global, scale 1/sqrt(head_dim)
        hf = hf_model("gemma3", query_pre_attn_scalar=16, num_hidden_layers=6,
                      layer_types=["sliding_attention"] * 5 + ["full_attention"])
    else:
        hf = hf_model("llama")
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_context_length(256)
    if arch == "gemma3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
        w.add_sliding_window(c.sliding_window)
    else:
        w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in hf.state_dict().items():
        a = t.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gname = "output.weight"
        else:
            parts = name.split(".")
            key = ".".join(parts[3:-1])
            if arch == "llama" and key == "post_attention_layernorm":
                key = "pre_feedforward_layernorm"
            gname = f"blk.{parts[2]}.{_BLOCK[key]}.weight"
        if arch == "gemma3" and gname.endswith("norm.weight"):
            a = a + 1.0
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            a = _permute(a, c.num_attention_heads if "attn_q" in gname else c.num_key_value_heads)
        if quantize_embedding and gname == "token_embd.weight":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@contextlib.contextmanager
def row_by_row_linears():
    """Every nn.Linear and the LM head compute one row at a time (the one-token decode computation), whatever the
    block; F.linear inside the MoE experts is left alone (it is under test)."""
    from leaninfer.models.transformer import Decoder

    lin, head = nn.Linear.forward, Decoder.head

    def linear(self, x):
        rows = x.reshape(-1, x.shape[-1])
        return torch.cat([lin(self, rows[i : i + 1]) for i in range(rows.shape[0])]).view(*x.shape[:-1], -1)

    def rowwise_head(self, h):  # (B, T, dim) -> (B, T, V)
        return torch.cat([head(self, h[:, t : t + 1]) for t in range(h.shape[1])], dim=1)

    nn.Linear.forward, Decoder.head = linear, rowwise_head
    try:
        yield
    finally:
        nn.Linear.forward, Decoder.head = lin, head


def block_vs_steps(model, prompt_len: int, block: int, seed: int = 0, routing=None):
    """Logits of one forward over `block` new tokens and of `block` one-token steps after the same prefill."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.vocab_size
    prompt = torch.randint(3, vocab, (1, prompt_len), generator=g)
    new = torch.randint(3, vocab, (1, block), generator=g)
    with torch.inference_mode():
        a = model.new_cache(1, prompt_len + block)
        model(prompt, cache=a, routing=routing)
        together = model(new, cache=a, routing=routing).logits[0]  # (block, V)
        b = model.new_cache(1, prompt_len + block)
        model(prompt, cache=b, routing=routing)
        steps = torch.cat([model(new[:, t : t + 1], cache=b, routing=routing).logits[0] for t in range(block)])
    return together, steps
