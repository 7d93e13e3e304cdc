"""CompressedKVCache: exact attention without eviction, real memory release, positions kept, snapshots."""

import pytest
import torch

from helpers import hf_model
from leaninfer.cache.compressed import CompressedKVCache, ScoreSpec
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder


def tiny(arch, tmp_path, **kw):
    hf = hf_model(arch, **kw)
    hf.save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    return build_decoder(cfg, state)


@pytest.mark.parametrize("arch", ["gemma3", "llama", "mistral"])
def test_blockwise_varlen_equals_full_forward(arch, tmp_path):
    model = tiny(arch, tmp_path)
    tokens = torch.randint(3, 96, (1, 23))
    with torch.no_grad():
        full = model(tokens).logits
        cache = CompressedKVCache.for_model(model)
        parts = [model(tokens[:, i : i + 6], cache=cache).logits for i in range(0, 18, 6)]
        parts += [model(tokens[:, i : i + 1], cache=cache).logits for i in range(18, 23)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    assert cache.next_position == 23


def test_sliding_layers_hold_only_the_window(tmp_path):
    model = tiny("gemma3", tmp_path)  # sliding window 5 on layers 0 and 2
    cache = CompressedKVCache.for_model(model)
    with torch.no_grad():
        for i in range(0, 20, 4):
            model(torch.randint(3, 96, (1, 4)), cache=cache)
    cache.trim_windows()
    assert cache.lengths(1) == [20, 20]  # global layer keeps everything
    assert cache.lengths(0) == [4, 4] and cache.pos[0][0].tolist() == [16, 17, 18, 19]


def test_keep_frees_memory_and_keeps_positions():
    c = CompressedKVCache(1, 2, 4, [None])
    c.begin(torch.arange(6)[None])
    q = torch.randn(1, 4, 6, 4)
    c.attend(0, q, torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), None, 0.5)
    c.end()
    before, k0 = c.nbytes(), c.k[0][0].clone()
    c.keep_entries(0, 0, torch.tensor([4, 1]))
    c.keep_entries(0, 1, torch.tensor([5]))
    assert c.pos[0][0].tolist() == [1, 4] and c.pos[0][1].tolist() == [5]
    torch.testing.assert_close(c.k[0][0], k0[[1, 4]])
    assert c.nbytes() < before and c.lengths(0) == [2, 1]


def test_mark_restore_and_scores():
    c = CompressedKVCache(1, 1, 4, [None])
    c.begin(torch.arange(5)[None])
    c.attend(0, torch.randn(1, 2, 5, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4), None, 0.5)
    c.end()
    snap = c.mark()
    c.scoring = ScoreSpec(keys="past")
    c.begin(torch.arange(5, 8)[None])
    c.attend(0, torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), None, 0.5)
    c.end()
    c.scoring = None
    s = c.take_scores()[0][0]
    assert s.shape == (5,) and bool((s > 0).all()) and bool((s <= 1).all())
    assert c.lengths(0) == [8]
    c.restore(snap)
    assert c.lengths(0) == [5] and c.next_position == 5


def test_rejects_batches_and_block_masks(tmp_path):
    model = tiny("llama", tmp_path)
    cache = CompressedKVCache.for_model(model)
    with pytest.raises(ValueError, match="one sequence"):
        model(torch.randint(3, 96, (2, 3)), cache=cache)
    with pytest.raises(ValueError, match="block_mask"):
        model(torch.randint(3, 96, (1, 3)), cache=cache, block_mask=torch.ones(3, 3, dtype=torch.bool))
