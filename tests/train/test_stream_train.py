"""Training the speculative-streaming draft (kind "mirror") on a tiny distillation set: the future n-gram loss
falls, offline τ counts stream guesses, it starts from a trained draft LM when one is given, and the saved draft
drives Mirror-SD rollouts losslessly."""

import dataclasses

import pytest
import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.io.drafts import draft_dir
from leaninfer.train.distill import DistillConfig, build_distill_set
from leaninfer.train.draft_losses import collate
from leaninfer.train.drafts import DraftTrainConfig, DraftTrainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    tiny_model_dir(root / "m", "gemma3")
    engine = leaninfer.load(root / "m", precision="fp32")
    data = build_distill_set(engine, root / "data", DistillConfig(n_prompts=40, new_tokens=24, feature_layers=[3],
                                                                  shard_size=20))
    return engine, data


CFG = DraftTrainConfig(kind="mirror", minutes=5, max_steps=30, batch_tokens=512, lr=3e-3, warmup=3, draft_vocab=64,
                       heldout=6, eval_every=15, lm_layers=(0, 2), n_streams=2, stream_layers=1)


def test_stream_loss_shapes_and_depths(setup):
    engine, data = setup
    trainer = DraftTrainer(engine.model, data, draft_dir(engine.source, "mirror"), dataclasses.replace(CFG))
    batch = collate(trainer.train[:4], trainer.index)
    with torch.no_grad():
        loss, correct, valid = trainer.loss(batch, depth=5)
    assert correct.shape == (*valid.shape, 5) and torch.isfinite(loss)
    assert not bool(correct[..., 3:].any())  # 1 + S = 3 tokens per forward: nothing deeper is drafted


def test_training_learns_and_decodes_losslessly(setup):
    engine, data = setup
    folder = draft_dir(engine.source, "mirror")
    trainer = DraftTrainer(engine.model, data, folder, dataclasses.replace(CFG, max_steps=15))
    batch = collate(trainer.train[:6], trainer.index)
    with torch.no_grad():
        before = float(trainer.loss(batch)[0])
    trainer.run(progress=False)
    again = DraftTrainer(engine.model, data, folder, CFG)
    assert again.resume() and again.state["step"] == 15
    info = again.run(progress=False)
    assert info["steps"] == 30
    with torch.no_grad():
        assert float(again.loss(batch)[0]) < before  # it learns
    assert info["curve"][-1]["chain_tau"][5] <= 1 + 3  # 1 + S drafted per forward, plus the bonus at most
    prompt = [1, 5, 6, 7, 8, 9]
    plain = engine.generate(prompt, max_new_tokens=16, eos=False).token_ids
    for gamma in (1, 3):  # found in the cache
        out = engine.generate(prompt, max_new_tokens=16, eos=False, method="mirror", rollout="stream", gamma=gamma,
                              workers="serial")
        assert out.token_ids == plain


def test_starts_from_a_trained_draft_lm(setup, tmp_path):
    engine, data = setup
    lm_dir = tmp_path / "draft-lm"
    lm = DraftTrainer(engine.model, data, lm_dir, dataclasses.replace(CFG, kind="draft-lm", max_steps=4))
    lm.run(progress=False)
    cfg = dataclasses.replace(CFG, init_from=str(lm_dir))
    stream = DraftTrainer(engine.model, data, tmp_path / "mirror", cfg)
    trained = lm.module.state_dict()
    for k, v in stream.module.lm.state_dict().items():
        assert torch.equal(v, trained[k]), k
    learn = {n for n, p in stream.module.named_parameters() if p.requires_grad}
    assert learn == {"streams"} | {n for n, _ in stream.module.named_parameters() if n.startswith("stream_blocks.")}
    batch = collate(stream.train[:4], stream.index)
    stream.module.train()
    loss, correct, valid = stream.loss(batch)  # streams on a quarter of the positions
    loss.backward()
    assert stream.module.streams.grad is not None and stream.module.lm.body.embed.weight.grad is None
    fresh = DraftTrainer(engine.model, data, tmp_path / "m2", dataclasses.replace(CFG, init_from=str(tmp_path / "no")))
    assert not torch.equal(fresh.module.lm.body.embed.weight, trained["body.embed.weight"])
