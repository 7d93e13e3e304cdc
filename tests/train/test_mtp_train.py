"""MTP adapter training: the loss falls on a tiny model, only the adapter learns, and a saved adapter decodes."""

import random

import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.models.mtp import load_adapter, save_adapter
from leaninfer.train.mtp import MTPTrainConfig, MTPTrainer, pick_anchors


def _data(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):  # a repeating pattern the masks can learn to continue
        start = rng.randrange(3, 60)
        out.append({"tokens": [1] + [3 + (start + i) % 90 for i in range(40)], "prompt_len": 6})
    return out


def test_mtp_training_lowers_loss_and_keeps_base_frozen(tmp_path):
    tiny_model_dir(tmp_path, "gemma3")
    engine = leaninfer.load(tmp_path, precision="fp32")
    model = engine.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = MTPTrainConfig(n_masks=3, rank=4, draft_vocab=64, anchors=6, max_len=41, lr=1e-2, warmup=2,
                         max_steps=40, eval_every=1000, minutes=5)
    trainer = MTPTrainer(model, _data(24, 0), _data(4, 1), cfg, {2})
    first = trainer.evaluate()
    info = trainer.run(progress=False)
    assert info["steps"] == 40
    assert sum(info["final"]["acc_base"]) > sum(first["acc_base"])
    assert info["curve"][-1]["total"] < 20
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    save_adapter(tmp_path / "ad", trainer.adapter, {"target": {"name": tmp_path.name}})
    ad = load_adapter(tmp_path / "ad")
    prompt = [1, 10, 11, 12, 13, 14]
    plain = engine.generate(prompt, max_new_tokens=20, eos=False)
    out = engine.generate(prompt, max_new_tokens=20, eos=False, method="mtp", adapter=ad, k=3)
    assert out.token_ids == plain.token_ids


def test_pick_anchors_range():
    rng = random.Random(0)
    a = pick_anchors(50, 20, 8, 4, rng)
    assert len(a) == 8 and min(a) >= 15 and max(a) <= 47 and a == sorted(a)
    assert pick_anchors(3, 1, 8, 4, rng) == [0]
