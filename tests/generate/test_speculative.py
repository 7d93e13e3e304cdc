"""Speculative decoding: verification maths, n-gram lookup, and greedy equality with plain decoding."""

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.generate.proposers.ngram import lookup
from leaninfer.generate.verify import verify_greedy, verify_sampling


def test_verify_greedy_prefix_and_bonus():
    logits = torch.full((4, 10), -5.0)
    for i, t in enumerate([3, 4, 9, 7]):
        logits[i, t] = 5.0
    assert verify_greedy(logits, torch.tensor([3, 4, 9])) == (3, 7)  # all accepted, bonus from the last row
    assert verify_greedy(logits, torch.tensor([3, 5, 9])) == (1, 4)  # first mismatch -> target's token
    assert verify_greedy(logits[:1], torch.tensor([], dtype=torch.long)) == (0, 3)


def test_speculative_sampling_reproduces_target_distribution():
    """vLLM-style: the histogram of the first emitted token matches p, not the draft q."""
    g = torch.Generator().manual_seed(0)
    V, n = 6, 12000
    p = torch.tensor([0.05, 0.4, 0.1, 0.2, 0.05, 0.2])
    q = torch.tensor([0.5, 0.05, 0.2, 0.05, 0.1, 0.1])
    counts = torch.zeros(V)
    for _ in range(n):
        d = torch.multinomial(q, 1, generator=g)
        _, nxt = verify_sampling(torch.stack([p, p]), d, q[None], g)
        n_acc = _
        counts[int(d) if n_acc == 1 else nxt] += 1
    freq = counts / n
    assert (freq - p).abs().max() < 0.015
    assert (freq - q).abs().max() > 0.2


def test_deterministic_draft_sampling_is_exact():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.1, 0.6, 0.3])
    counts = torch.zeros(3)
    for _ in range(10000):
        n_acc, nxt = verify_sampling(torch.stack([p, p]), torch.tensor([2]), None, g)
        counts[2 if n_acc == 1 else nxt] += 1
    assert (counts / counts.sum() - p).abs().max() < 0.015


def test_ngram_lookup():
    ctx = [1, 2, 3, 4, 9, 2, 3]
    assert lookup(ctx, 2, max_ngram=2) == [4, 9]
    assert lookup(ctx, 5, max_ngram=3) == [4, 9, 2, 3]
    assert lookup([1, 2, 3], 2, max_ngram=2) == []


@pytest.mark.parametrize("arch", ["gemma3", "mixtral"])
def test_ngram_greedy_equals_plain(arch, tmp_path):
    tiny_model_dir(tmp_path, arch)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain = engine.generate(prompt, max_new_tokens=30, eos=False)
    spec = engine.generate(prompt, max_new_tokens=30, eos=False, method="ngram", k=3)
    assert spec.token_ids == plain.token_ids
    assert spec.stats["target_forwards"] <= plain.stats["target_forwards"]
    assert spec.stats["draft_tokens_proposed"] > 0


def test_ngram_respects_eos_and_max_length(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1, 5, 6, 5, 6, 5, 6]
    free = engine.generate(prompt, max_new_tokens=12, eos=False).token_ids
    for m in (1, 2, 5, 12):
        assert engine.generate(prompt, max_new_tokens=m, eos=False, method="ngram").token_ids == free[:m]
    engine.eos_ids = {free[4]}
    out = engine.generate(prompt, max_new_tokens=12, method="ngram")
    assert out.token_ids == free[: free.index(free[4]) + 1] and out.finish_reason == "eos"


@pytest.mark.parametrize("same", [True, False])
def test_draft_lm_greedy_equals_plain(same, tmp_path):
    hf = tiny_model_dir(tmp_path / "t", "llama")
    del hf
    tiny_model_dir(tmp_path / "d", "llama", seed=1)
    target = leaninfer.load(tmp_path / "t", precision="fp32")
    draft = target if same else leaninfer.load(tmp_path / "d", precision="fp32")
    prompt = [1, 9, 33, 4, 70]
    plain = target.generate(prompt, max_new_tokens=25, eos=False)
    spec = target.generate(prompt, max_new_tokens=25, eos=False, method="sd", draft=draft, k=4)
    assert spec.token_ids == plain.token_ids
    if same:  # draft = target: everything accepted
        assert spec.stats["acceptance_rate"] == 1.0 and spec.stats["mean_accepted_tokens"] > 4.0
    else:  # a random draft: almost nothing accepted
        assert spec.stats["acceptance_rate"] < 0.3


def test_draft_lm_sampling_runs_seeded(tmp_path):
    tiny_model_dir(tmp_path, "llama")
    target = leaninfer.load(tmp_path, precision="fp32")
    a = target.generate([1, 9, 33], max_new_tokens=15, temperature=1.0, seed=5, eos=False, method="sd", draft=target)
    b = target.generate([1, 9, 33], max_new_tokens=15, temperature=1.0, seed=5, eos=False, method="sd", draft=target)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 15
    assert a.stats["acceptance_rate"] > 0.9  # p == q: every draft token is accepted
