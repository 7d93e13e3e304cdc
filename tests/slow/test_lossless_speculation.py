"""Slow tier: lossless speculation on the real default model with verification blocks longer than 16 tokens
(the old SDPA fallback): output identical to plain decoding at the same precision, and block logits bit-equal
to one-token steps once the linears run row by row (attention is exact by itself). fp32 here; the int8 run
belongs with the int8 kernel's row-invariance (models/quant.py)."""

import pytest
import torch

pytestmark = pytest.mark.slow

PRECISIONS = ["fp32"]
REPEAT = ("The quick brown fox jumps over the lazy dog. " * 6 + "def add(a, b):\n    return a + b\n" * 3)


@pytest.fixture(scope="module", params=PRECISIONS)
def engine(request):
    import leaninfer

    return leaninfer.load("default", precision=request.param)


def _prompts():
    from leaninfer.eval.specbench import format_prompt, load_questions

    return [REPEAT] + [format_prompt(q) for q in load_questions(per_category=1)][:3]


@pytest.mark.parametrize("opts", [{"method": "ngram", "k": 24}, {"method": "ngram", "k": 63},
                                  {"method": "ngram_tree", "depth": 10, "branches": 6}])
def test_long_verification_blocks_are_lossless(engine, opts):
    for p in _prompts():
        plain = engine.generate(p, max_new_tokens=48, eos=False).token_ids
        assert engine.generate(p, max_new_tokens=48, eos=False, **opts).token_ids == plain, (opts, p[:40])


def test_block_of_40_equals_40_steps_with_row_by_row_linears(engine):
    from helpers import block_vs_steps, row_by_row_linears

    with row_by_row_linears():
        together, steps = block_vs_steps(engine.model, prompt_len=30, block=40)
    assert torch.equal(together, steps)


def test_verification_longer_than_exact_is_refused(engine):
    with pytest.raises(ValueError, match="longer than 64"):
        engine.generate(REPEAT, max_new_tokens=8, method="ngram", k=64)
