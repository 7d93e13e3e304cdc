"""Pure sharding functions and the SPD block algebra, in one process."""

from __future__ import annotations

import pytest
import torch

from helpers import hf_model
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder
from leaninfer.models.config import ModelConfig
from leaninfer.parallel.plan import SPDPlan, resolve_plan
from leaninfer.parallel.shard import layout, rank_config, shard_state
from leaninfer.parallel.spd import SimSPDBlock, block_forward


def _gemma270m(**kw) -> ModelConfig:
    return ModelConfig(arch="gemma3", vocab_size=262144, dim=640, n_layers=18, n_heads=4, n_kv_heads=1,
                       head_dim=256, intermediate_size=2048, **kw)


def test_layout_replicates_a_single_kv_head():
    cfg = _gemma270m()
    for world, heads, reps in [(2, 2, 2), (4, 1, 4)]:
        lays = [layout(cfg, world, r) for r in range(world)]
        assert all(lay.heads == heads and lay.kv_heads == 1 and lay.kv0 == 0 and lay.kv_replicas == reps
                   for lay in lays)
        assert [lay.head0 for lay in lays] == list(range(0, 4, heads))
        assert rank_config(cfg, world).intermediate_size == 2048 // world
    with pytest.raises(ValueError, match="query heads"):
        layout(cfg, 8, 0)


def test_shards_reassemble_the_full_weights(tmp_path):
    hf_model("qwen2_moe").save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    shards = [shard_state(state, cfg, 2, r) for r in range(2)]
    for name in ("layers.0.attn.q_proj.weight", "layers.0.attn.k_proj.bias", "embed.weight"):
        torch.testing.assert_close(torch.cat([s[name] for s in shards]), state[name])
    torch.testing.assert_close(torch.cat([s["layers.1.attn.o_proj.weight"] for s in shards], 1),
                               state["layers.1.attn.o_proj.weight"])
    gu = state["layers.0.ffn.gate_up"]  # (E, 2I, D): each rank holds matching gate and up rows
    half = gu.shape[1] // 2
    torch.testing.assert_close(shards[1]["layers.0.ffn.gate_up"],
                               torch.cat([gu[:, half // 2 : half], gu[:, half + half // 2 :]], 1))
    assert shards[0]["layers.0.ffn.router.weight"] is state["layers.0.ffn.router.weight"]  # replicated


def test_spd_block_keeps_the_exact_attention_output_in_the_residual():
    torch.manual_seed(0)
    p, x = 3, torch.randn(2, 5, 8)
    Wo = [torch.randn(8, 8) for _ in range(p)]
    Wm = [torch.randn(8, 8) for _ in range(p)]
    rank = {"i": 0}

    def attn(t):
        return torch.tanh(t) @ Wo[rank["i"]]

    def ffn(t):
        return torch.relu(t) @ Wm[rank["i"]]

    # run each rank with a reduce that records partials, then replay with the true sums
    partials = []
    for i in range(p):
        rank["i"] = i
        block_forward(x, attn, ffn, lambda t: (partials.append(t), t)[1], sync_attn=False)
    total = sum(partials)
    outs = []
    for i in range(p):
        rank["i"] = i
        outs.append(block_forward(x, attn, ffn, lambda t: total, sync_attn=False))
    o = [torch.tanh(x) @ w for w in Wo]
    expect = x + sum(o) + sum(torch.relu(x + o[i]) @ Wm[i] for i in range(p))
    for out in outs:
        torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_simulated_spd_block_matches_per_rank_shards(arch, tmp_path):
    """The one-process SPD block equals running each rank's shard block by hand and summing."""
    hf_model(arch).save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    model = build_decoder(cfg, state)
    tokens = torch.randint(3, 96, (1, 9))
    seen = {}
    hook = model.layers[1].register_forward_pre_hook(lambda m, a: seen.setdefault("a", a))
    with torch.no_grad():
        model(tokens)
    hook.remove()
    x, cos, sin, mask = seen["a"][:4]
    from leaninfer.models.transformer import Block

    blk = model.layers[1]
    shards = []
    for r in range(2):
        st = shard_state({k[len("layers.1."):]: v for k, v in state.items() if k.startswith("layers.1.")}, cfg, 2, r)
        with torch.device("meta"):
            b = Block(rank_config(cfg, 2), 1)
        b.load_state_dict(st, assign=True)
        shards.append(b)
    with torch.no_grad():
        o = [b.attn(b.input_norm(x), cos, sin, mask) for b in shards]
        pa = blk.post_attn_norm if blk.sandwich else (lambda t: t)
        pf = blk.post_ffn_norm if blk.sandwich else (lambda t: t)
        m = [b.ffn(b.ffn_norm(x + pa(oi))) for b, oi in zip(shards, o, strict=True)]
        expect = x + pa(sum(o)) + pf(sum(m))
        got = SimSPDBlock(blk, 2)(x, cos, sin, mask)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_plans():
    cfg = _gemma270m()
    assert resolve_plan(None, "/nowhere", cfg, 2) is None and resolve_plan("0", "/nowhere", cfg, 2) is None
    plan = resolve_plan("3", "/nowhere-model", cfg, 2)  # no stored plan: the last blocks, as the paper starts
    assert plan.drop == [15, 16, 17]
    assert SPDPlan(2, [], order=[4, 2, 9]).with_drop(2).drop == [2, 4]
    with pytest.raises(ValueError):
        resolve_plan("19", "/nowhere", cfg, 2)
