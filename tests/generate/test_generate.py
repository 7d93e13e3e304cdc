"""Generation: greedy equals transformers' greedy on tiny models; EOS, stop strings, streaming, edges."""

import pytest
import torch

import leaninfer
from helpers import ARCHES, tiny_model_dir
from leaninfer.generate.loop import TextStream


@pytest.mark.parametrize("arch", ARCHES)
def test_greedy_equals_transformers_greedy(arch, tmp_path):
    hf = tiny_model_dir(tmp_path, arch)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1, 17, 42, 5, 77, 9]
    ours = engine.generate(prompt, max_new_tokens=20, eos=False).token_ids
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=-1,
                          pad_token_id=0)
    assert ours == ref[0, len(prompt):].tolist()


def test_text_prompt_stats_and_streaming(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    pieces = []
    out = engine.generate("w5 w6 w7", max_new_tokens=8, eos=False, stream=pieces.append)
    assert engine.encode("w5 w6 w7") == [1, 5, 6, 7]
    assert len(out.token_ids) == 8 and "".join(pieces) == out.text
    for key in ("tokens_per_s", "ttft_s", "tpot_s", "mean_accepted_tokens"):
        assert key in out.stats
    assert out.stats["mean_accepted_tokens"] == 1.0 and out.stats["target_forwards"] == 8


def test_eos_stops_generation(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    free = engine.generate([1, 5, 6], max_new_tokens=10, eos=False).token_ids
    engine.eos_ids = {free[3]}
    out = engine.generate([1, 5, 6], max_new_tokens=10)
    assert out.token_ids == free[: free.index(free[3]) + 1] and out.finish_reason == "eos"


def test_stop_string_truncates(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    free = engine.generate([1, 5, 6], max_new_tokens=10, eos=False)
    word = free.text.split()[2]
    out = engine.generate([1, 5, 6], max_new_tokens=10, eos=False, stop=[word])
    assert out.finish_reason == "stop" and word not in out.text and free.text.startswith(out.text.rstrip())


def test_seeded_sampling_reproducible(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    a = engine.generate([1, 5], max_new_tokens=12, temperature=1.0, seed=3, eos=False).token_ids
    b = engine.generate([1, 5], max_new_tokens=12, temperature=1.0, seed=3, eos=False).token_ids
    c = engine.generate([1, 5], max_new_tokens=12, temperature=1.0, seed=4, eos=False).token_ids
    assert a == b and a != c


def test_bad_inputs(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate("")
    with pytest.raises(ValueError, match="token ids"):
        engine.generate([1, 500])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([1, 5], max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown method"):
        engine.generate([1, 5], method="nope")
    with pytest.raises(ValueError, match="exceeds the context"):
        engine.generate([1, 5], max_new_tokens=10**6)
    with pytest.raises(ValueError, match="precision"):
        leaninfer.load(tmp_path, precision="int3")


def test_quantized_precisions_generate(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANINFER_CACHE", str(tmp_path / "cache"))
    hf = tiny_model_dir(tmp_path / "m", "llama")
    del hf
    ref = leaninfer.load(tmp_path / "m", precision="fp32").generate([1, 5, 6], max_new_tokens=6, eos=False)
    for precision in ("bf16", "int8", "int4"):
        first = leaninfer.load(tmp_path / "m", precision=precision)  # quantises and caches
        again = leaninfer.load(tmp_path / "m", precision=precision)  # reads the cache
        a = first.generate([1, 5, 6], max_new_tokens=6, eos=False).token_ids
        assert a == again.generate([1, 5, 6], max_new_tokens=6, eos=False).token_ids
        assert len(a) == len(ref.token_ids)


def test_text_stream_holds_partial_characters():
    pieces = []
    table = {1: "a", 2: "\ufffd", 3: "é"}
    s = TextStream(lambda ids: "".join(table[i] for i in ids).replace("\ufffdé", "é"), on_text=pieces.append)
    s.push(1)
    s.push(2)
    assert pieces == ["a"]
    s.push(3)
    assert "".join(pieces) == s.finish()
