"""W8A8 MoE experts (models/moe_q8.py): close to the float experts, exact under any block, lossless speculation."""

from __future__ import annotations

import pytest
import torch

MOE_ARCHES = ["mixtral", "olmoe", "qwen2_moe"]
# head_dim 32: the row-invariant native attention applies (its fallback for other head sizes is not block-exact)
WIDE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1)


def _float_experts(gate_up, down, x, weights, idx, act):
    from leaninfer.models.moe import act_fn

    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(idx.shape[1]):
            g, u = (gate_up[idx[n, j]] @ x[n]).chunk(2)
            out[n] += weights[n, j] * (down[idx[n, j]] @ (act_fn(act)(g) * u))
    return out


@pytest.mark.parametrize("dim,hidden", [(64, 32), (40, 24)])  # whole blocks; odd shapes (zero-padded)
def test_packed_experts_match_float_experts_and_are_row_invariant(dim, hidden):
    from leaninfer.models.moe_q8 import PackedExperts

    torch.manual_seed(0)
    E, N, k = 6, 9, 3
    gate_up, down = torch.randn(E, 2 * hidden, dim) * 0.2, torch.randn(E, dim, hidden) * 0.2
    x = torch.randn(N, dim)
    weights = torch.softmax(torch.randn(N, k), -1)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(N)])
    packed = PackedExperts.from_stacks(gate_up, down, "silu")
    with torch.inference_mode():
        block = packed(x, weights, idx)
        rows = torch.cat([packed(x[n : n + 1], weights[n : n + 1], idx[n : n + 1]) for n in range(N)])
        shuffled = packed(x.flip(0), weights.flip(0), idx.flip(0)).flip(0)
    assert torch.equal(block, rows) and torch.equal(block, shuffled)
    ref = _float_experts(gate_up, down, x, weights, idx, "silu")
    assert (block - ref).norm() / ref.norm() < 0.03


def _tiny(tmp_path, arch):
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, arch, **WIDE)
    import leaninfer

    return leaninfer.load(tmp_path, precision="w8a8")


@pytest.mark.parametrize("arch", MOE_ARCHES)
def test_w8a8_moe_packs_experts_and_block_logits_equal_one_token_steps(tmp_path, arch):
    from helpers import block_vs_steps
    from leaninfer.models.moe import MoE
    from leaninfer.models.moe_q8 import PackedExperts

    engine = _tiny(tmp_path, arch)
    model = engine.model
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert moes and all(isinstance(m.packed, PackedExperts) and not hasattr(m, "gate_up") for m in moes)
    toks = torch.randint(3, 96, (1, 30), generator=torch.Generator().manual_seed(1))
    block, steps = block_vs_steps(model, prompt_len=6, block=24, seed=1)  # 24 tokens at once vs one at a time
    assert torch.equal(block, steps)
    fp32 = __import__("leaninfer").load(tmp_path, precision="fp32").model
    with torch.inference_mode():
        ref = fp32(toks).logits
        got = model(toks).logits
    assert (got - ref).norm() / ref.norm() < 0.15  # random weights of std 0.3: a sanity bound, not garbage


@pytest.mark.parametrize("arch", MOE_ARCHES)
def test_w8a8_moe_ngram_speculation_equals_plain_decoding(tmp_path, arch):
    engine = _tiny(tmp_path, arch)
    prompt = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain = engine.generate(prompt, max_new_tokens=32, eos=False).token_ids
    for opts in ({"k": 4}, {"k": 20}):
        assert engine.generate(prompt, max_new_tokens=32, eos=False, method="ngram", **opts).token_ids == plain


def test_w8a8_moe_cached_state_loads_back(tmp_path):
    """The second load reads the cached packed state (meta-built empty buffers) and decodes the same tokens."""
    import leaninfer
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, "qwen2_moe", **WIDE)
    first = leaninfer.load(tmp_path, precision="w8a8").generate([1, 5, 6, 7], max_new_tokens=12, eos=False)
    again = leaninfer.load(tmp_path, precision="w8a8")
    assert all(b.data_ptr() % 64 == 0 for b in again.model.buffers() if b.dtype == torch.int8)
    assert again.generate([1, 5, 6, 7], max_new_tokens=12, eos=False).token_ids == first.token_ids


def test_bench_moefied_structure_bytes_and_report(tmp_path):
    """bench moe-decode's pieces on a tiny dense model: the MoE structure, bytes per token, the report files."""
    from helpers import tiny_model_dir
    from leaninfer.bench.moe_decode import moefied_structure, weight_bytes_per_token, write_moe_decode_report
    from leaninfer.io.store import read_model_dir
    from leaninfer.models.quant import quantize_model

    tiny_model_dir(tmp_path / "m", "gemma3", intermediate_size=64)
    cfg, state, _ = read_model_dir(tmp_path / "m")
    moe = moefied_structure(cfg, state, n_experts=4)
    assert moe.cfg.n_experts == 4 and moe.layers[0].ffn.gate_up.shape == (4, 32, cfg.dim)
    quantize_model(moe, "w8a8")
    b1, b2, b4 = (weight_bytes_per_token(moe, k) for k in (1, 2, 4))
    assert 0 < b1 < b2 and b4 - b2 == 2 * (b2 - b1)  # each expert adds the same bytes
    row = {"ms_per_token": 2.0, "ms_runs": [2.0], "weight_bytes_per_token": b2, "weight_gb_per_s": 1.0, "vs_dense": 1}
    result = {"config": {"model": "m", "precision": "w8a8", "n_experts": 4, "max_new_tokens": 8, "repeats": 1,
                         "ks": [2], "note": ""}, "machine": {"cores": 2}, "loadavg_before": [1.0],
              "loadavg_after": [1.0], "threads_used": [1], "settings": {"dense": row, "moe_k2": row},
              "headline": {"dense_ms": 2.0, "moe_k4_ms": None, "moe_k4_faster_than_dense": False}}
    paths = write_moe_decode_report(result, tmp_path / "r" / "moe_decode.json")
    assert all(p.exists() for p in paths) and "moe_k2" in paths[1].read_text()
