"""Presses and block-wise prefill: exact top-k eviction, positions kept, bounded peak, lossless at a large budget."""

import pytest
import torch

from helpers import hf_model
from leaninfer.cache.budget import allocate, full_lengths, select_keep, uniform_budgets
from leaninfer.cache.episodic import EpisodicPress
from leaninfer.cache.prefill import block_prefill, evict
from leaninfer.cache.press import PRESSES, KVzipPress, Press, PyramidKVPress, StreamingLLMPress
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder


def tiny(arch, tmp_path, **kw):
    hf = hf_model(arch, **kw)
    hf.save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    return build_decoder(cfg, state)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {a: tiny(a, tmp_path_factory.mktemp(a), max_position_embeddings=512) for a in ("llama", "gemma3")}


def presses(headwise=False):
    out = [cls(headwise=headwise) for name, cls in PRESSES.items() if name != "kvzip"]
    out.append(KVzipPress(headwise=headwise, prefix_ids=[5, 6, 7]))
    out.append(EpisodicPress(headwise=headwise, prompt_ids=(8, 9, 10, 11)))
    return out


class FirstDimPress(Press):
    """Test press: score = first key component (known in advance)."""

    name = "firstdim"

    def score(self, cache, layer, attn):
        return [k[:, 0].float() for k in cache.k[layer]]


def test_select_keep_per_head_and_headwise():
    s = [torch.tensor([0.1, 0.9, 0.5, 0.7]), torch.tensor([0.8, 0.2, 0.95])]
    keep = select_keep(s, 2)
    assert [k.tolist() for k in keep] == [[1, 3], [0, 2]]
    keep = select_keep(s, 2, headwise=True)  # top 4 of all 7: 0.95, 0.9, 0.8, 0.7
    assert [k.tolist() for k in keep] == [[1, 3], [0, 2]]
    keep = select_keep([torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2, 0.3])], 2, headwise=True)
    assert [k.tolist() for k in keep] == [[0, 1, 2], [2]]


@pytest.mark.parametrize("headwise", [False, True])
def test_evict_keeps_exactly_the_top_scored_entries_with_positions(models, headwise):
    model = models["llama"]  # 2 KV heads, global layers
    cache, _ = block_prefill(model, torch.randint(3, 96, (20,)).tolist(), block=20)
    before = [[(k.clone(), p.clone()) for k, p in zip(cache.k[i], cache.pos[i])] for i in range(cache.n_layers)]
    press = FirstDimPress(headwise=headwise)
    evict(model, cache, press, [6] * cache.n_layers, [], {})
    for i in range(cache.n_layers):
        want = select_keep([k[:, 0] for k, _ in before[i]], 6, headwise)
        total = 0
        for h, (k, p) in enumerate(before[i]):
            torch.testing.assert_close(cache.k[i][h], k[want[h]])
            assert torch.equal(cache.pos[i][h], p[want[h]])  # original positions, original order
            total += len(want[h])
        assert total == 12 and (headwise or cache.lengths(i) == [6, 6])


CASES = [("gemma3", p) for p in presses()] + [("llama", p) for p in presses(headwise=True)]


@pytest.mark.parametrize("arch,press", CASES, ids=lambda x: x if isinstance(x, str) else f"{x.name}-{x.headwise}")
def test_block_prefill_peak_is_budget_plus_block(arch, press, models):
    model = models[arch]
    ids = torch.randint(3, 96, (90,)).tolist()
    mc = model.cfg
    budgets = uniform_budgets(mc.layer_types, mc.sliding_window, len(ids), 4.0)
    budgets = press.layer_budgets(budgets, full_lengths(mc.layer_types, mc.sliding_window, len(ids)))
    cache, st = block_prefill(model, ids, press, budgets, block=16)
    H = mc.n_kv_heads
    for layer, b in enumerate(budgets):
        limit = b * H if press.headwise else b
        assert st.peak_tokens[layer] <= limit + 16
        assert (sum(cache.lengths(layer)) if press.headwise else max(cache.lengths(layer))) <= limit
    assert st.evictions > 0 and cache.next_position == 90
    full, fst = block_prefill(model, ids, block=16)
    assert st.peak_context_bytes < fst.peak_context_bytes


@pytest.mark.parametrize("press", presses() + [KVzipPress(headwise=True, prefix_ids=[5])],
                         ids=lambda p: f"{p.name}-{p.headwise}")
def test_budget_at_least_history_equals_uncompressed(press, models):
    model = models["gemma3"]
    ids = torch.randint(3, 96, (40,)).tolist()
    question = torch.randint(3, 96, (1, 5))
    with torch.no_grad():
        want = model(torch.cat([torch.tensor([ids]), question], 1)).logits[:, -5:]
        cache, st = block_prefill(model, ids, press, [40] * model.cfg.n_layers, block=8)
        got = model(question, cache=cache).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_allocate_sums_to_total_within_floors_and_caps():
    got = allocate([0.0, 1.0, 3.0, 1.0], 100, caps=[50, 50, 40, 50], floors=[5, 5, 5, 5])
    assert sum(got) == 100 and got[2] == 40 and got[0] == 5 and all(5 <= g <= c for g, c in zip(got, [50, 50, 40, 50]))
    assert allocate([1, 1], 1000, caps=[10, 20]) == [10, 20]
    with pytest.raises(ValueError):
        allocate([1, 1], 5, caps=[10, 10], floors=[4, 4])


def test_uniform_budgets_and_pyramid_totals():
    types = ["sliding", "full", "sliding", "full", "full"]
    u = uniform_budgets(types, 8, 100, 4.0)
    assert u == [7, 25, 7, 25, 25]  # sliding layers keep their window (7 past tokens)
    assert uniform_budgets(types, 8, 100, 4.0, compress_sliding=True)[0] == 2
    caps = full_lengths(types, 8, 100)
    p = PyramidKVPress().layer_budgets(u, caps)
    assert sum(p) == sum(u) and p[0] == 7 and p[1] > p[3] > p[4]


class EvenPositionsPress(Press):
    """Test press: keep even positions (the same entries on every layer and head)."""

    name = "even"

    def score(self, cache, layer, attn):
        return [(p % 2 == 0).float() + p.float() * 1e-4 for p in cache.pos[layer]]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_evicting_equals_masking_in_the_hf_reference(arch, tmp_path):
    """After eviction, later tokens see exactly what an HF forward sees when the evicted columns are masked."""
    hf = hf_model(arch, **({"sliding_window": 64} if arch == "gemma3" else {}))  # custom 4D masks ignore windows
    hf.save_pretrained(tmp_path)
    model = build_decoder(*read_hf_dir(tmp_path))
    n, q = 20, 5
    ids, question = torch.randint(3, 96, (n,)).tolist(), torch.randint(3, 96, (1, q))
    cache, _ = block_prefill(model, ids, block=n)
    evict(model, cache, EvenPositionsPress(), [n // 2] * cache.n_layers, [], {})
    allowed = torch.tril(torch.ones(n + q, n + q, dtype=torch.bool))
    allowed[n:, 1:n:2] = False  # the question rows lose the odd history positions
    mask = torch.zeros(1, 1, n + q, n + q).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        got = model(question, cache=cache).logits
        want = hf(torch.cat([torch.tensor([ids]), question], 1), attention_mask=mask).logits[:, n:]
    assert all(cache.lengths(i) == [n // 2 + q] * model.cfg.n_kv_heads for i in range(cache.n_layers))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_sinks_are_never_evicted_and_the_rest_is_top_scored(models):
    model = models["llama"]
    cache, _ = block_prefill(model, torch.randint(3, 96, (20,)).tolist(), block=20)
    before = [[(k.clone(), p.clone()) for k, p in zip(cache.k[i], cache.pos[i])] for i in range(cache.n_layers)]
    evict(model, cache, FirstDimPress(sinks=3), [8] * cache.n_layers, [], {})
    for i in range(cache.n_layers):
        for h, (k, p) in enumerate(before[i]):
            rest = k[3:, 0].topk(5).indices + 3  # the budget left after the 3 sinks
            want = torch.cat([torch.arange(3), rest.sort().values])
            assert torch.equal(cache.pos[i][h], p[want])


def test_streaming_llm_keeps_its_sinks_and_the_most_recent(models):
    model = models["llama"]
    for press, sinks in ((StreamingLLMPress(), 4), (StreamingLLMPress(sinks=6), 6)):
        c, _ = block_prefill(model, torch.randint(3, 96, (20,)).tolist(), block=20)
        evict(model, c, press, [10] * c.n_layers, [], {})
        want = list(range(sinks)) + list(range(20 - (10 - sinks), 20))
        assert all(p.tolist() == want for i in range(c.n_layers) for p in c.pos[i])
