"""Roster of Experts: tau = 0 equals plain decoding, the clean cache equals plain decoding's cache, a block
scored at once equals token-by-token steps over the clean cache, probabilities are averaged."""

import math

import pytest
import torch

from helpers import hf_model
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.io.hf import config_from_hf, map_hf_tensors
from leaninfer.models.build import build_decoder
from leaninfer.models.moe import Routing
from leaninfer.moe.decode import decode_moe
from leaninfer.moe.roe import CleanCache, RoEConfig, average_logprobs, roe_forward, roe_routing
from leaninfer.moe.score import Scorer


@pytest.fixture(scope="module")
def model():
    hf = hf_model("olmoe", num_experts=8, num_experts_per_tok=4)
    cfg = config_from_hf(hf.config.to_dict())
    return build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))


PROMPT = [1, 5, 9, 33, 12, 7, 40]


def test_tau_zero_roe_equals_plain_decoding(model):
    greedy = SamplingConfig(0.0)
    plain = decode_moe(model, PROMPT, 12, greedy, set(), top_k=2)
    roe = decode_moe(model, PROMPT, 12, greedy, set(), top_k=2, roe=RoEConfig(n=4, tau_per_layer=0.0))
    assert plain.tokens == roe.tokens
    s0 = Scorer(model, top_k=2).sequence_logprobs(PROMPT)
    s1 = Scorer(model, top_k=2, roe=RoEConfig(n=3, tau_per_layer=0.0, clean_layers=0)).sequence_logprobs(PROMPT)
    torch.testing.assert_close(s0, s1, atol=1e-5, rtol=1e-5)


def test_clean_cache_equals_plain_cache_and_member_zero_is_plain(model):
    x = torch.tensor([PROMPT])
    plain_cache = model.new_cache(1, 16)
    with torch.no_grad():
        plain = model(x, cache=plain_cache, logits=False, routing=Routing(top_k=3)).hidden
        cache = model.new_cache(1, 16)
        roe = RoEConfig(n=5, tau_per_layer=0.5, clean_layers=0, seed=1)
        hidden = roe_forward(model, x, cache, roe, 3, torch.Generator().manual_seed(1))
    assert cache.k.shape[1] == 1  # one sequence of keys/values, whatever n is
    torch.testing.assert_close(cache.k, plain_cache.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.v, plain_cache.v, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.pos, plain_cache.pos)
    torch.testing.assert_close(hidden[0], plain[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hidden[1], plain[0], atol=1e-3)  # noisy members route differently


def test_block_scoring_equals_token_by_token_over_clean_cache(model):
    n, T, E = 3, len(PROMPT), model.cfg.n_experts
    noise = torch.randn(n, T, E).abs() * 3
    noise[0] = 0
    x = torch.tensor([PROMPT])
    with torch.no_grad():
        cache = model.new_cache(1, T)
        block = model(x.expand(n, T), positions=torch.arange(T).expand(n, T), cache=CleanCache(cache, n), start=0,
                      block_mask=torch.eye(T, dtype=torch.bool), logits=False,
                      routing=Routing(top_k=2, noise=noise)).hidden
        step_cache = model.new_cache(1, T)
        for t in range(T):
            h = model(x[:, t : t + 1].expand(n, 1), positions=torch.full((n, 1), t), cache=CleanCache(step_cache, n),
                      start=t, block_mask=torch.eye(1, dtype=torch.bool), logits=False,
                      routing=Routing(top_k=2, noise=noise[:, t : t + 1])).hidden
            torch.testing.assert_close(h[:, 0], block[:, t], atol=1e-5, rtol=1e-5)


def test_roe_routing_noise_per_member_and_layer(model):
    roe = RoEConfig(n=4, tau_per_layer=0.3, clean_layers=1)
    assert roe.taus(3) == [0.0, 0.3, 0.0]
    r1 = roe_routing(model, roe, 5, 2, torch.Generator().manual_seed(0))
    r2 = roe_routing(model, roe, 5, 2, torch.Generator().manual_seed(0))
    assert r1[0].noise is None and r1[2].noise is None
    assert torch.equal(r1[1].noise, r2[1].noise)  # seeded
    assert bool((r1[1].noise[0] == 0).all()) and bool((r1[1].noise[1:] != 0).any())


def test_average_logprobs_is_log_of_mean_probability():
    lp = torch.log_softmax(torch.randn(4, 7), -1)
    torch.testing.assert_close(average_logprobs(lp), torch.log(lp.exp().mean(0)))
    assert math.isclose(float(average_logprobs(lp).exp().sum()), 1.0, rel_tol=1e-5)


def test_bad_roe_config():
    with pytest.raises(ValueError):
        RoEConfig(n=0)
    with pytest.raises(ValueError):
        RoEConfig(tau_per_layer=-0.1)
    with pytest.raises(ValueError):
        RoEConfig(tau_per_layer=[0.1, 0.2]).taus(3)
