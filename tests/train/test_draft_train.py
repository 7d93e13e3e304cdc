"""Draft training on a tiny model: it learns (offline τ rises), checkpoints resume, the saved draft loads
through `Engine.draft` and decodes losslessly."""

import dataclasses

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.io.drafts import draft_dir
from leaninfer.models.draft_lm import init_draft_lm
from leaninfer.train.distill import DistillConfig, build_distill_set
from leaninfer.train.draft_losses import chain_tau, collate
from leaninfer.train.drafts import DraftTrainConfig, DraftTrainer
from leaninfer.train.vocab import DraftVocab


def test_chain_tau_counts_leading_correct_guesses():
    correct = torch.tensor([[[True, True, False], [False, True, True], [True, True, True]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert chain_tau(correct, valid) == pytest.approx(1 + (2 + 0 + 3) / 3)
    assert chain_tau(correct, valid, gamma=1) == pytest.approx(1 + 2 / 3)


def test_draft_vocab_keeps_frequent_and_forced_ids():
    v = DraftVocab.from_counts([torch.tensor([5, 5, 5, 7, 7, 9])], 20, 2, always=[1])
    assert v.d2t.tolist() == [1, 5] and v.t2d[5] == 1 and v.t2d[7] == -1
    assert v.coverage([torch.tensor([5, 7])]) == 0.5
    with pytest.raises(ValueError):
        DraftVocab(torch.tensor([3, 3]), 10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    tiny_model_dir(root / "m", "gemma3")
    engine = leaninfer.load(root / "m", precision="fp32")
    data = build_distill_set(engine, root / "data", DistillConfig(n_prompts=40, new_tokens=24, feature_layers=[1, 2, 3],
                                                                  shard_size=20))
    return engine, data


def test_draft_lm_with_every_target_layer_and_token_is_the_target(setup):
    engine, _ = setup
    target = engine.model
    draft = init_draft_lm(target, torch.arange(target.cfg.vocab_size), list(range(target.cfg.n_layers)))
    ids = torch.tensor([[1, 5, 9, 33, 4, 70, 2]])
    with torch.no_grad():
        want = target(ids).logits
        got = draft(ids).logits
        assert torch.allclose(got, want, atol=1e-4)
        cache = draft.new_cache(1, 16)  # cached decoding agrees with the full forward
        step = torch.cat([draft(ids[:, :4], cache=cache).logits, draft(ids[:, 4:], cache=cache).logits], 1)
        assert torch.allclose(step, want, atol=1e-4)


def test_draft_lm_reduced_vocabulary_maps_ids_both_ways(setup):
    engine, _ = setup
    d2t = torch.tensor([1, 4, 9, 33, 70])
    draft = init_draft_lm(engine.model, d2t, [0])
    ids = torch.tensor([[1, 9, 50, 33]])  # 50 is outside: read as "other"
    assert draft.t2d[ids].tolist() == [[0, 2, 5, 3]]
    with torch.no_grad():
        logits = draft(ids, last_only=True).logits[0, -1]
    assert logits.shape[0] == engine.cfg.vocab_size
    assert torch.isfinite(logits[d2t]).all() and int(torch.isfinite(logits).sum()) == 5


@pytest.mark.parametrize("kind", ["eagle", "medusa", "hydra", "draft-lm"])
def test_training_learns_resumes_and_decodes_losslessly(setup, kind):
    engine, data = setup
    folder = draft_dir(engine.source, kind)
    cfg = DraftTrainConfig(kind=kind, minutes=5, max_steps=30, batch_tokens=512, lr=3e-3, warmup=3,
                           draft_vocab=64, feature_layers=(1, 2, 3), heldout=6, eval_every=15, n_heads=3,
                           lm_layers=(0, 2))
    trainer = DraftTrainer(engine.model, data, folder, dataclasses.replace(cfg, max_steps=15))
    batch = collate(trainer.train[:6], trainer.index)
    with torch.no_grad():
        before = float(trainer.loss(batch)[0])
    trainer.run(progress=False)
    again = DraftTrainer(engine.model, data, folder, cfg)  # a new process would do this
    assert again.resume() and again.state["step"] == 15
    info = again.run(progress=False)
    assert info["steps"] == 30 and len(info["curve"]) >= 2
    with torch.no_grad():
        assert float(again.loss(batch)[0]) < before  # it learns
    assert info["curve"][-1]["chain_tau"][3] >= 1.0
    prompt = [1, 5, 6, 7, 8, 9]
    plain = engine.generate(prompt, max_new_tokens=16, eos=False).token_ids
    method = "sd" if kind == "draft-lm" else kind
    out = engine.generate(prompt, max_new_tokens=16, eos=False, method=method)  # found in the cache
    assert out.token_ids == plain
