"""EAGLE / Medusa / Hydra drafters: the draft layer's two forms agree, dynamic trees are well formed, and
every feature drafter is lossless (greedy output identical to plain decoding) on tiny random models."""

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.generate.dyntree import grow_tree
from leaninfer.generate.tree import verify_tree_typical
from leaninfer.models.draft_layer import DraftLayerConfig
from leaninfer.models.eagle import EagleConfig, EagleDraft
from leaninfer.models.heads import DraftHeads, HeadsConfig

SMALL = DraftLayerConfig(dim=32, n_heads=4, n_kv_heads=2, head_dim=8, hidden=48)


def _eagle(vocab=96, draft_vocab=40, layers=(1, 2, 3), seed=0):
    torch.manual_seed(seed)
    d = EagleDraft(EagleConfig(32, vocab, draft_vocab, list(layers), SMALL)).eval()
    d.d2t.copy_(torch.randperm(vocab)[:draft_vocab].sort().values)
    return d


def test_ttt_equals_chain_drafting_with_the_cache():
    """Training-time test step j at index t computes what drafting computes at depth j after context t."""
    draft = _eagle()
    T, S = 7, 3
    emb, feats = torch.randn(1, T + S - 1, 32), torch.randn(1, T, 96)
    with torch.no_grad():
        outs = [draft.logits(h) for h in draft.ttt(emb, feats, S)]
        for t in range(T):
            cache = draft.new_cache(32)
            h = draft.extend(emb[:, : t + 1], feats[:, : t + 1], torch.arange(t + 1)[None], cache)[:, -1:]
            torch.testing.assert_close(draft.logits(h)[0, 0], outs[0][0, t], atol=1e-4, rtol=1e-4)
            for j in range(1, S):
                if t + j >= emb.shape[1]:
                    break
                mask = torch.ones(1, cache.length + 1, dtype=torch.bool)
                h = draft.step(emb[:, t + j : t + j + 1], h, torch.tensor([[t + j]]), cache, mask)
                torch.testing.assert_close(draft.logits(h)[0, 0], outs[j][0, t], atol=1e-4, rtol=1e-4)


def test_grow_tree_keeps_the_best_nodes_and_respects_the_budget():
    def expand(nodes, idx):  # child c of any node has log-prob -(c + 1)
        return torch.tensor([[10, 11, 12]] * len(idx)), torch.tensor([[-1.0, -2.0, -3.0]] * len(idx))

    tree, nodes = grow_tree(5, (torch.tensor([7, 8, 9]), torch.tensor([-0.1, -3.0, -4.0])), expand, 4, 3, 6)
    assert tree.size == 6 and int(tree.tokens[0]) == 5
    assert all(int(tree.parents[i]) < i for i in range(1, 6))
    scores = sorted((n.score for n in nodes[1:]), reverse=True)
    assert scores[0] == pytest.approx(-0.1) and scores[1] == pytest.approx(-1.1)  # 7 then 7->10
    assert int(tree.depths().max()) >= 3  # a confident first guess makes the tree deep


def test_typical_acceptance_follows_probable_children():
    from leaninfer.generate.tree import TokenTree

    tree = TokenTree(torch.tensor([0, 3, 4]), torch.tensor([-1, 0, 1]))
    logits = torch.full((3, 6), -5.0)
    logits[0, 3] = 5.0  # node 0 strongly predicts token 3 -> accept node 1
    logits[1, 2] = 5.0  # node 1 predicts 2, not 4 -> stop, emit 2
    assert verify_tree_typical(tree, logits) == ([1], 2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model_dir(folder, "gemma3")
    return leaninfer.load(folder, precision="fp32")


PROMPTS = [[1, 5, 6, 7, 8, 5, 6, 7], [1, 9, 3, 4, 9, 3, 4, 9, 3], [1, 2 + 10, 20, 30]]


@pytest.mark.parametrize("max_nodes,depth", [(4, 3), (8, 5)])
def test_eagle_is_lossless(engine, max_nodes, depth):
    draft = _eagle()
    for p in PROMPTS:
        plain = engine.generate(p, max_new_tokens=20, eos=False).token_ids
        out = engine.generate(p, max_new_tokens=20, eos=False, method="eagle", draft=draft, max_nodes=max_nodes,
                              depth=depth)
        assert out.token_ids == plain
        assert out.stats["mean_accepted_tokens"] >= 1.0


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_heads_are_lossless(engine, kind):
    torch.manual_seed(1)
    heads = DraftHeads(HeadsConfig(kind, 32, 96, 50, n_heads=3, feature_layer=3)).eval()
    for p in heads.parameters():
        p.data.normal_(0, 0.3)
    for p in PROMPTS:
        plain = engine.generate(p, max_new_tokens=20, eos=False).token_ids
        out = engine.generate(p, max_new_tokens=20, eos=False, method=kind, draft=heads, max_nodes=6)
        assert out.token_ids == plain


def test_feature_tree_accepts_everything_from_an_oracle(engine):
    """A drafter that knows the plain continuation: every draft token is accepted, output still identical."""
    from leaninfer.generate.sampling import SamplingConfig
    from leaninfer.generate.speculative import decode_feature_tree
    from leaninfer.generate.tree import TokenTree

    prompt = PROMPTS[0]
    plain = engine.generate(prompt, max_new_tokens=24, eos=False).token_ids

    class Oracle:
        taps = (3,)

        def begin(self, prompt):
            self.seen = 0

        def observe(self, feats, next_tokens):
            assert feats.shape == (len(next_tokens), 32)
            self.seen += len(next_tokens)

        def propose_tree(self, depth, max_nodes):
            done = self.seen - len(prompt)  # plain tokens emitted so far (the last one is the root)
            path = plain[done + 1 : done + depth]
            return TokenTree.from_paths(plain[done], [path] if path else [])

    out = decode_feature_tree(engine.model, Oracle(), prompt, 24, SamplingConfig(), set(), depth=4, max_nodes=8)
    assert out.tokens == plain
    assert out.extra["acceptance_rate"] == 1.0
    assert out.target_forwards <= 1 + -(-23 // 4)


def test_quantised_draft_stays_lossless(engine):
    from leaninfer.io.drafts import quantize_draft

    draft = quantize_draft(_eagle(seed=3), "int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in draft.modules())
    for p in PROMPTS:
        plain = engine.generate(p, max_new_tokens=16, eos=False).token_ids
        assert engine.generate(p, max_new_tokens=16, eos=False, method="eagle", draft=draft).token_ids == plain
