"""One request combines techniques: speculation on a compressed (KV-budget) cache, and on a MoE at a chosen k,
each lossless against plain decoding under the same cache policy / routing."""

import pytest

import leaninfer
from helpers import tiny_model_dir
from leaninfer.cache.compressed import CompressedKVCache
from leaninfer.request import GenerateRequest


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense")
    tiny_model_dir(folder)
    return leaninfer.load(folder, precision="fp32")


@pytest.mark.parametrize("press, budget", [("snapkv", 6), ("streaming_llm", 8), ("keydiff", 64)])
def test_ngram_with_kv_budget_is_lossless(dense, press, budget):
    prompt = [1] + [5, 6, 7, 8] * 8 + [9, 10]
    kv = f"{press}:budget={budget},block=8"
    plain = dense.generate(prompt, max_new_tokens=24, eos=False, kv=kv)
    spec = dense.generate(prompt, max_new_tokens=24, eos=False, kv=kv, method="ngram:k=3")
    assert spec.token_ids == plain.token_ids
    assert spec.stats["kv_budget"] == budget and spec.stats["target_forwards"] <= plain.stats["target_forwards"]


def test_compressed_rollback():
    import torch

    c = CompressedKVCache(1, 2, 4, [None])
    c.begin(torch.arange(5)[None])
    c.attend(0, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), None, 1.0)
    c.end()
    c.keep_entries(0, 0, torch.tensor([0, 2, 4]))
    c.rollback(2)
    assert c.next_position == 3 and c.pos[0][0].tolist() == [0, 2] and c.pos[0][1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        c.rollback(4)


def test_speculation_on_moe_at_chosen_k(tmp_path):
    tiny_model_dir(tmp_path, "olmoe")
    moe = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1] + [5, 6, 7] * 6
    for k in (1, 3):
        plain = moe.generate(prompt, max_new_tokens=20, eos=False, moe_k=k)
        spec = moe.generate(prompt, max_new_tokens=20, eos=False, moe_k=k, method="ngram:k=3")
        assert spec.token_ids == plain.token_ids and spec.stats["moe_k"] == k
    assert moe.generate(prompt, max_new_tokens=20, eos=False, moe_k=1).token_ids != \
        moe.generate(prompt, max_new_tokens=20, eos=False).token_ids  # k matters on this model


def test_refused_combinations(dense):
    with pytest.raises(ValueError, match="does not run"):
        dense.generate([1, 5, 6], max_new_tokens=4, kv="snapkv:budget=4", method="ngram_tree")
    with pytest.raises(ValueError, match="no option"):
        GenerateRequest(method="ngram:colour=1")
    with pytest.raises(ValueError, match="MoE"):
        dense.generate([1, 5, 6], max_new_tokens=4, moe_k=1, method="ngram")
