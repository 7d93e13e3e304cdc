"""Llama 3.x checkpoints ("llama3" RoPE scaling) load and match transformers; the context cap is configurable and
logged."""

import logging

import pytest
import torch

from helpers import TINY
from leaninfer.io import ModelLoadError
from leaninfer.io.hf import config_from_hf, context_cap, read_hf_dir
from leaninfer.models.build import build_decoder

# a short original context so every band of the scaling (kept / interpolated / stretched) shows at head_dim 8
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def _hf_llama3(rope_scaling):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**TINY, rope_theta=500.0, rope_scaling=dict(rope_scaling))  # transformers edits it
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_llama3_rope_matches_transformers(tmp_path):
    hf = _hf_llama3(LLAMA3)
    hf.save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    assert cfg.rope_llama3 == {k: float(v) for k, v in LLAMA3.items() if k != "rope_type"}
    ours = build_decoder(cfg, state)
    tokens = torch.randint(3, 96, (1, 120))  # positions well past the original 32
    with torch.no_grad():
        ref, got = hf(tokens).logits, ours(tokens).logits
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
    plain = build_decoder(config_from_hf({**hf.config.to_dict(), "rope_parameters": {"rope_theta": 500.0,
                                                                                       "rope_type": "default"}}),
                          state)
    with torch.no_grad():  # the scaling matters at these positions: ignoring it would fail the check above
        assert (plain(tokens).logits - ref).abs().max() > 1e-2


def test_unknown_or_incomplete_rope_scaling_is_refused():
    d = _hf_llama3(LLAMA3).config.to_dict()
    with pytest.raises(ModelLoadError, match="not supported"):
        config_from_hf({**d, "rope_parameters": {"rope_theta": 500.0, "rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ModelLoadError, match="missing"):
        config_from_hf({**d, "rope_parameters": {"rope_theta": 500.0, "rope_type": "llama3", "factor": 8.0}})


def test_context_cap_is_logged_and_configurable(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert context_cap(8192) == 8192 and not caplog.records
        assert context_cap(131072) == 32768
    assert "capped at 32768" in caplog.text and "LEANINFER_MAX_SEQ_LEN" in caplog.text
    monkeypatch.setenv("LEANINFER_MAX_SEQ_LEN", "131072")
    assert context_cap(131072) == 131072
