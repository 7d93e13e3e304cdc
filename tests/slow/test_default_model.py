"""Slow tier: the real default model (Gemma 3 270M GGUF) against transformers on the same weights."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leaninfer.io.store import default_gguf

    gguf = default_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def engine():
    import leaninfer

    return leaninfer.load("default", precision="fp32")


def prompts(n=20):
    from leaninfer.eval.specbench import format_prompt, load_questions

    qs = load_questions(per_category=2)
    return [format_prompt(q) for q in qs][:n]


def test_tokenizer_ids_match_transformers(engine, hf_pair):
    tok, _ = hf_pair
    texts = prompts() + ["", " leading space", "emoji 🙂 and ünïcödé", "tabs\tand\nnewlines\n\n", "<start_of_turn>"]
    for t in texts:
        if t:
            assert engine.tokenizer.encode(t) == tok(t).input_ids, t


def test_logits_match_transformers(engine, hf_pair):
    tok, hf = hf_pair
    for p in prompts(4):
        ids = torch.tensor([tok(p).input_ids])
        with torch.no_grad():
            ref = hf(ids).logits
            got = engine.model(ids).logits
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)


def test_greedy_64_tokens_identical_on_20_prompts(engine, hf_pair):
    tok, hf = hf_pair
    for p in prompts(20):
        ids = tok(p).input_ids
        ours = engine.generate(ids, max_new_tokens=64, eos=False).token_ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=-1,
                              pad_token_id=0)[0, len(ids):].tolist()
        assert ours == ref, p


def test_second_load_is_fast():
    import time

    import leaninfer

    leaninfer.load("default")  # make sure the conversion and quantisation caches exist
    t0 = time.perf_counter()
    leaninfer.load("default")
    assert time.perf_counter() - t0 < 5.0
