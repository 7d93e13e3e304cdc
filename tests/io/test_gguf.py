"""GGUF loader on tiny GGUF files written here with the `gguf` writer in llama.cpp's conventions."""

import gguf
import numpy as np
import pytest
import torch

from helpers import hf_model
from leaninfer.io import ModelLoadError
from leaninfer.io.gguf_reader import read_gguf
from leaninfer.io.hf import map_hf_tensors
from leaninfer.models.build import build_decoder

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


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_gguf_logits_match_source_model(arch, tmp_path):
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path, arch)
    cfg, tensors = read_gguf(path, progress=False)
    ours = build_decoder(cfg, map_hf_tensors(cfg, tensors))
    tokens = torch.randint(3, 96, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens).logits, hf(tokens).logits, atol=2e-4, rtol=2e-4)


def test_quantized_gguf_tensor_is_dequantized(tmp_path):
    path = tmp_path / "q8.gguf"
    hf = write_tiny_gguf(path, "gemma3", quantize_embedding=True)
    cfg, tensors = read_gguf(path, progress=False)
    ref = hf.model.embed_tokens.weight.detach()
    got = tensors["model.embed_tokens.weight"]
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < ref.abs().max() / 100  # Q8_0: 8-bit blocks of 32


def test_load_gguf_path_converts_once_and_runs(tmp_path, monkeypatch):
    import leaninfer

    monkeypatch.setenv("LEANINFER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "gemma3")
    engine = leaninfer.load(path, precision="fp32")
    out = engine.generate([1, 5, 9, 11], max_new_tokens=5, eos=False)
    assert len(out.token_ids) == 5
    converted = [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")]
    assert len(converted) == 1 and (converted[0] / "leaninfer.json").exists()
    again = leaninfer.load(path, precision="fp32").generate([1, 5, 9, 11], max_new_tokens=5, eos=False)
    assert again.token_ids == out.token_ids


def test_missing_path_error(tmp_path):
    import leaninfer

    with pytest.raises(ModelLoadError, match="no such model"):
        leaninfer.load(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        read_gguf(bad)


def test_truncated_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "gemma3")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        read_gguf(cut)


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'"):
        read_gguf(path)
