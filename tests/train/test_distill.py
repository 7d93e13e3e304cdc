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
        ref = engine.model(ex["tokens"][None]).hidden[0].bfloat16()
    torch.testing.assert_close(ex["features"][:, 1], ref, atol=1e-2, rtol=1e-2)
    first = (out / "shard-0000.pt").stat().st_mtime
    build_distill_set(engine, out, cfg)  # resumable: existing shards are kept
    assert (out / "shard-0000.pt").stat().st_mtime == first


def test_batched_greedy_equals_single_decoding_and_stops_at_eos(tmp_path):
    from leaninfer.generate.loop import greedy_batch

    tiny_model_dir(tmp_path / "m")
    engine = leaninfer.load(tmp_path / "m", precision="fp32")
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8]]
    outs = greedy_batch(engine.model, prompts, 10, set())
    for p, o in zip(prompts, outs):
        assert o == engine.generate(p, max_new_tokens=10, eos=False).token_ids
    first = outs[0][2]
    stopped = greedy_batch(engine.model, prompts[:1], 10, {first})[0]
    assert stopped == outs[0][: outs[0].index(first) + 1]


def test_derived_prompts_cover_the_evaluation_task_types():
    from leaninfer.train.prompts import derived_prompts

    passages = [f"Passage number {i} talks about rivers. It has a second sentence." for i in range(40)]
    out = derived_prompts(passages, seed=0)
    text = "\n".join(out)
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in out)
    for kind in ("Summarize:", "Translate English to", "Based on the text above", "Write a Python function"):
        assert kind in text
    assert derived_prompts(passages, seed=0) == out
