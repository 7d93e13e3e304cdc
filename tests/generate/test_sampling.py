"""Pure sampling functions: greedy, temperature, top-k, top-p, seeds."""

import pytest
import torch

from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator, next_token, sample


def test_greedy_is_argmax_one_hot():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    assert next_token(logits, SamplingConfig()).item() == 1
    assert logits_to_probs(logits, SamplingConfig()).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_top_k_and_top_p_keep_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.7))  # 0.5 < 0.7 -> {0, 1}
    assert (p > 0).tolist() == [[True, True, False, False]]
    p = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.5))
    assert (p > 0).tolist() == [[True, False, False, False]]


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    hot = logits_to_probs(logits, SamplingConfig(temperature=2.0))
    cold = logits_to_probs(logits, SamplingConfig(temperature=0.5))
    assert cold[0, 1] > hot[0, 1]


def test_seeded_sampling_is_deterministic_and_matches_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(20000, 3)
    cfg = SamplingConfig(temperature=1.0, seed=7)
    a = next_token(logits, cfg, make_generator(7))
    b = next_token(logits, cfg, make_generator(7))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.02)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=0), dict(top_p=-0.1), dict(top_p=1.5)])
def test_bad_sampling_options(kw):
    with pytest.raises(ValueError):
        SamplingConfig(**kw)


@pytest.mark.parametrize("temperature", [3.6e-174, 5e-324, 1e-30])
def test_a_tiny_temperature_is_a_valid_near_greedy_distribution(temperature):
    """logits / 3.6e-174 overflowed to inf and softmax gave nan (found by the robustness fuzz)."""
    logits = torch.tensor([[2.0, 7.0, -1.0, 7.0 - 1e-3]])
    probs = logits_to_probs(logits, SamplingConfig(temperature=temperature))
    assert torch.isfinite(probs).all() and probs[0, 1] == 1.0
    assert int(sample(probs, torch.Generator().manual_seed(0))) == 1
