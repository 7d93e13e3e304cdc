"""KV cache update / rollback / compaction properties."""

import pytest
import torch

from leaninfer.cache.kv import KVCache


def _kv(T, fill):
    return torch.full((1, 2, T, 4), float(fill)), torch.full((1, 2, T, 4), float(-fill))


def test_write_returns_filled_prefix_and_rollback_forgets():
    c = KVCache(n_layers=2, batch=1, n_kv_heads=2, max_len=8, head_dim=4)
    c.reserve(0, torch.arange(3)[None])
    k, v = c.write(0, 0, *_kv(3, 1))
    assert k.shape == (1, 2, 3, 4) and c.length == 3
    c.reserve(3, torch.tensor([[3, 4]]))
    k, _ = c.write(0, 3, *_kv(2, 2))
    assert k.shape[2] == 5 and torch.equal(k[0, 0, :, 0], torch.tensor([1.0, 1, 1, 2, 2]))
    c.rollback(2)
    assert c.length == 3 and c.pos[0, 3:].eq(-1).all()
    c.reserve(3, torch.tensor([[3]]))
    k, _ = c.write(0, 3, *_kv(1, 7))
    assert torch.equal(k[0, 0, :, 0], torch.tensor([1.0, 1, 1, 7]))


def test_rollback_bounds_and_overflow():
    c = KVCache(1, 1, 1, 4, 2)
    c.reserve(0, torch.arange(4)[None])
    with pytest.raises(ValueError, match="cache overflow"):
        c.reserve(4, torch.tensor([[4]]))
    with pytest.raises(ValueError, match="cannot roll back"):
        c.rollback(5)
    with pytest.raises(ValueError, match="outside the filled cache"):
        c.reserve(6, torch.tensor([[6]]))


def test_keep_compacts_accepted_path():
    c = KVCache(1, 1, 1, 10, 1)
    c.reserve(0, torch.tensor([[0, 1, 2, 3, 3, 4]]))  # a tree block from slot 2
    for s in range(6):
        c.k[0, 0, 0, s, 0] = s
    c.keep_path(2, torch.tensor([2, 4, 5]))
    assert c.length == 5
    assert c.k[0, 0, 0, :5, 0].tolist() == [0, 1, 2, 4, 5]
    assert c.pos[0, :6].tolist() == [0, 1, 2, 3, 4, -1]


def test_cache_equals_no_cache_after_rollback_and_redecode():
    from helpers import hf_model
    from leaninfer.io.hf import config_from_hf, map_hf_tensors
    from leaninfer.models.build import build_decoder

    hf = hf_model("llama")
    cfg = config_from_hf(hf.config.to_dict())
    model = build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))
    x = torch.randint(3, 96, (1, 10))
    with torch.no_grad():
        ref = model(x).logits[:, -1]
        c = model.new_cache(1, 16)
        model(x[:, :6], cache=c)
        model(torch.randint(3, 96, (1, 3)), cache=c)  # a rejected speculation
        c.rollback(3)
        got = model(x[:, 6:], cache=c).logits[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
