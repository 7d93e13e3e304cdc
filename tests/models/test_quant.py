"""Weight-only quantisers: round trips, level counts, kernels equal to their dequantised matmul."""

import pytest
import torch

from leaninfer.models.quant import QuantLinear, quantize_int4, quantize_int8, quantize_model


def test_int8_round_trip_and_levels():
    w = torch.randn(64, 128)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * s[:, None]) - w).abs().max() <= s.max() / 2 + 1e-6


def test_int4_uses_16_levels_and_round_trips():
    w = torch.randn(32, 64)
    q, s, z = quantize_int4(w, group=32)
    assert q.min() >= 0 and q.max() <= 15
    assert len(torch.unique(q[0, :32])) <= 16
    deq = ((q.view(32, 2, 32) - 8).float() * s[..., None] + z[..., None]).view(32, 64)
    assert (deq - w).abs().max() <= s.max() / 2 + 1e-5


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("rows", [1, 3, 9])
def test_quant_linear_matches_its_dequantised_weight(precision, rows):
    lin = torch.nn.Linear(64, 48, bias=True)
    q = QuantLinear.from_linear(lin.weight, lin.bias, precision)
    x = torch.randn(rows, 64)
    ref = x.bfloat16().float() @ q.dequantized().t() + lin.bias
    torch.testing.assert_close(q(x), ref, atol=0.05, rtol=0.02)
    assert (q(x) - lin(x)).abs().max() < 0.15 * lin(x).abs().max()


def test_quantize_model_gives_tied_head_its_own_copy():
    from helpers import hf_model
    from leaninfer.io.hf import config_from_hf, map_hf_tensors
    from leaninfer.models.build import build_decoder

    hf = hf_model("gemma3", hidden_size=64, head_dim=32)
    cfg = config_from_hf(hf.config.to_dict())
    model = build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))
    x = torch.randint(3, 96, (1, 8))
    with torch.no_grad():
        ref = model(x).logits
        quantize_model(model, "int8")
        got = model(x).logits
    assert isinstance(model.lm_head, QuantLinear)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


def test_row_invariant_attention_matches_sdpa_and_is_row_invariant():
    import torch.nn.functional as F

    from leaninfer.models.attention import row_invariant_attention

    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.rand(2, 1, 5, 9) > 0.3
    mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    got = row_invariant_attention(q, k, v, mask, 0.25)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    causal = torch.ones(5, 9, dtype=torch.bool).tril(4)[None, None].expand(2, 1, 5, 9)
    chain = row_invariant_attention(q, k, v, causal, 0.25)
    for t in range(5):  # a chain query alone gives bit-identical results to the same query in a block
        one = row_invariant_attention(q[:, :, t : t + 1], k[:, :, : 5 + t], v[:, :, : 5 + t], None, 0.25)
        assert torch.equal(one[:, :, 0], chain[:, :, t])


def test_row_invariant_tree_node_matches_plain_decoding_of_its_path():
    from leaninfer.generate.tree import TokenTree
    from leaninfer.models.attention import row_invariant_attention

    torch.manual_seed(0)
    tree = TokenTree(torch.arange(7), torch.tensor([-1, 0, 0, 1, 1, 2, 3]))
    ctx, n = 11, tree.size
    q, k, v = torch.randn(1, 4, n, 32), torch.randn(1, 2, ctx + n, 32), torch.randn(1, 2, ctx + n, 32)
    mask = torch.cat([torch.ones(n, ctx, dtype=torch.bool), tree.mask()], 1)[None, None]
    got = row_invariant_attention(q, k, v, mask, 0.2)
    for i in range(n):  # plain decoding of node i sees the context and its path, in order, nothing else
        path = [j for j in range(n) if tree.mask()[i, j]]
        idx = torch.tensor(list(range(ctx)) + [ctx + j for j in path])
        one = row_invariant_attention(q[:, :, i : i + 1], k[:, :, idx], v[:, :, idx], None, 0.2)
        assert torch.equal(one[:, :, 0], got[:, :, i])


def test_int8_speculation_is_exact(tmp_path):
    import leaninfer
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, "gemma3")
    engine = leaninfer.load(tmp_path, precision="int8")
    prompt = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain = engine.generate(prompt, max_new_tokens=24, eos=False).token_ids
    assert engine.generate(prompt, max_new_tokens=24, eos=False, method="ngram").token_ids == plain


def test_int8_tree_speculation_is_exact(tmp_path):
    import leaninfer
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, "gemma3")
    engine = leaninfer.load(tmp_path, precision="int8")
    for prompt in ([1, 5, 6, 7, 8, 5, 6, 9, 5, 6, 7, 5, 6], [2, 3, 4, 2, 3, 5, 2, 3, 6, 2, 3]):
        plain = engine.generate(prompt, max_new_tokens=24, eos=False).token_ids
        tree = engine.generate(prompt, max_new_tokens=24, eos=False, method="ngram_tree", branches=3)
        assert tree.token_ids == plain


def test_align_buffers_copies_unaligned_weights():
    from leaninfer.models.quant import QuantLinear, align_buffers

    q = QuantLinear.from_linear(torch.randn(16, 64), None, "int8")
    raw = torch.zeros(16 * 64 + 8, dtype=torch.int8)
    raw[8:] = q.w.flatten()
    q.w = raw[8:].view(16, 64)  # what a tensor at an odd offset of a safetensors file looks like
    assert q.w.data_ptr() % 64 != 0
    model = torch.nn.Sequential(q)
    align_buffers(model)
    assert model[0].w.data_ptr() % 64 == 0 and torch.equal(model[0].w, raw[8:].view(16, 64))
