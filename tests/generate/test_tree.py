"""Token trees: masks, depths, greedy tree verification, and KV compaction of the accepted path."""

import pytest
import torch

from helpers import hf_model
from leaninfer.generate.tree import TokenTree, verify_tree_greedy
from leaninfer.io.hf import config_from_hf, map_hf_tensors
from leaninfer.models.build import build_decoder


def test_tree_from_paths_mask_and_depths():
    tree = TokenTree.from_paths(7, [[1, 2, 3], [1, 4], [5]])
    assert tree.tokens.tolist() == [7, 1, 2, 3, 4, 5]
    assert tree.parents.tolist() == [-1, 0, 1, 2, 1, 0]
    assert tree.depths().tolist() == [0, 1, 2, 3, 2, 1]
    m = tree.mask()
    assert m[3].tolist() == [True, True, True, True, False, False]
    assert m[4].tolist() == [True, True, False, False, True, False]
    assert m[5].tolist() == [True, False, False, False, False, True]


def test_bad_tree():
    with pytest.raises(ValueError):
        TokenTree(torch.tensor([1, 2]), torch.tensor([-1, 1]))


def test_verify_tree_greedy_follows_matching_child():
    tree = TokenTree.from_paths(7, [[1, 2, 3], [1, 4], [5]])
    logits = torch.zeros(6, 10)
    for node, tok in enumerate([1, 4, 9, 0, 8, 0]):  # argmax per node
        logits[node, tok] = 1.0
    path, nxt = verify_tree_greedy(tree, logits)
    assert path == [1, 4] and nxt == 8


def test_tree_forward_equals_chain_forward_and_keep_compacts():
    hf = hf_model("gemma3")
    cfg = config_from_hf(hf.config.to_dict())
    model = build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))
    prompt = torch.randint(3, 96, (1, 6))
    tree = TokenTree.from_paths(11, [[12, 13, 14], [12, 20], [30, 31]])
    with torch.no_grad():
        cache = model.new_cache(1, 32)
        model(prompt, cache=cache)
        start = cache.length
        pos = (6 + tree.depths())[None]
        logits = model(tree.tokens[None], positions=pos, cache=cache, block_mask=tree.mask()).logits[0]
        for path in ([11, 12, 13, 14], [11, 12, 20], [11, 30, 31]):  # each branch equals a plain chain forward
            ref = model(torch.cat([prompt, torch.tensor([path])], 1)).logits[0, 6:]
            nodes = [0] + [i for i in range(1, tree.size) if tree.tokens[i] in path[1:]][: len(path) - 1]
            torch.testing.assert_close(logits[nodes], ref, atol=1e-4, rtol=1e-4)
        cache.keep_path(start, torch.tensor([start, start + 1, start + 4]))  # root, 12, 20
        nxt = model(torch.tensor([[21]]), cache=cache).logits[0, -1]
        ref = model(torch.cat([prompt, torch.tensor([[11, 12, 20, 21]])], 1)).logits[0, -1]
    torch.testing.assert_close(nxt, ref, atol=1e-4, rtol=1e-4)


def test_tree_sampling_reproduces_target_distribution():
    from leaninfer.generate.tree import verify_tree_sampling

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.3, 0.2, 0.4])
    tree = TokenTree.from_paths(9, [[1], [3], [0]])  # three one-token branches
    probs = torch.stack([p, p, p, p])
    counts = torch.zeros(4)
    for _ in range(12000):
        path, nxt = verify_tree_sampling(tree, probs, g)
        counts[int(tree.tokens[path[0]]) if path else nxt] += 1
    assert (counts / counts.sum() - p).abs().max() < 0.015


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_ngram_tree_greedy_equals_plain(arch, tmp_path):
    import leaninfer
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, arch)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1, 5, 6, 7, 8, 5, 6, 9, 8, 5, 6, 7, 10, 5, 6]
    plain = engine.generate(prompt, max_new_tokens=30, eos=False)
    for m in (1, 7, 30):
        spec = engine.generate(prompt, max_new_tokens=m, eos=False, method="ngram_tree", depth=3, branches=3)
        assert spec.token_ids == plain.token_ids[:m]
    assert spec.stats["draft_tokens_proposed"] > 0
