"""Tiny random-initialised Hugging Face reference models, built from configs (no downloads)."""

from __future__ import annotations

import contextlib

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
        return tf.OlmoeConfig(**TINY, num_experts=6, num_experts_per_tok=2)
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(**TINY, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
                                 shared_expert_intermediate_size=40)
    if arch == "mixtral":
        return tf.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
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
