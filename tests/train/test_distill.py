"""Self-distillation set builder on a tiny model."""

import torch

import leaninfer
from helpers import tiny_model_dir
from leaninfer.train.distill import DistillConfig, build_distill_set, load_distill_set
from leaninfer.train.prompts import build_prompts


def test_prompts_are_distinct_and_deterministic():
    a, b = build_prompts(50, seed=1), build_prompts(50, seed=1)
    assert a == b and len(set(a)) == 50 and build_prompts(50, seed=2) != a


def test_distill_set_has_target_continuations_and_features(tmp_path):
    tiny_model_dir(tmp_path / "m")
    engine = leaninfer.load(tmp_path / "m", precision="fp32")
    cfg = DistillConfig(n_prompts=5, new_tokens=6, feature_layers=[1, 3], shard_size=2)
    out = build_distill_set(engine, tmp_path / "set", cfg)
    data = load_distill_set(out)
    assert len(data) == 5 and len(list(out.glob("shard-*.pt"))) == 3
    ex = data[0]
    prompt = ex["tokens"][: ex["prompt_len"]].tolist()
    assert ex["tokens"][ex["prompt_len"]:].tolist() == engine.generate(prompt, max_new_tokens=6, eos=False).token_ids
    assert ex["features"].shape == (len(ex["tokens"]), 2, engine.cfg.dim)
    with torch.no_grad():  # the last feature layer is the model's final hidden state (before the norm)
        ref = engine.model(ex["tokens"][None]).hidden[0].half()
    torch.testing.assert_close(ex["features"][:, 1], ref, atol=1e-2, rtol=1e-2)
    first = (out / "shard-0000.pt").stat().st_mtime
    build_distill_set(engine, out, cfg)  # resumable: existing shards are kept
    assert (out / "shard-0000.pt").stat().st_mtime == first
