"""GGUF loader on tiny GGUF files written here with the `gguf` writer in llama.cpp's conventions."""

import gguf
import numpy as np
import pytest
import torch

from helpers import write_tiny_gguf
from leaninfer.io import ModelLoadError
from leaninfer.io.gguf_reader import read_gguf
from leaninfer.io.hf import map_hf_tensors
from leaninfer.models.build import build_decoder


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
