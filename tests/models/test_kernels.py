"""The C++ kernels (models/kernels): W8A8 block matmul, row-invariant attention, fused norm/RoPE.

Each is checked against its PyTorch reference, and for row invariance: a row computed within a block of any size
equals the same row computed alone, bit for bit."""

from __future__ import annotations

import pytest
import torch

from leaninfer.models import kernels as K
from leaninfer.models.attention import apply_rope, build_mask, row_invariant_attention

native = pytest.mark.skipif(not K.native_available(), reason="C++ kernels not built on this machine")


def _packed(N=48, Kd=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, Kd, generator=g)
    q, d = K.quantize_weight_q8(W)
    return W, q, d, *K.pack_q8(q, d)


def test_pack_round_trip_and_q8_0_grid():
    W, q, d, w, s = _packed()
    q2, d2 = K.unpack_q8(w, s)
    assert torch.equal(q, q2) and torch.equal(d, d2)
    assert int(q.abs().max()) <= 127
    # a GGUF Q8_0 tensor dequantised to fp32 (codes with max |q| = 127, fp16 scales) comes back on its own grid
    deq = (q.float().view(48, -1, 32) * d.float()[..., None]).view(48, 96)
    q3, d3 = K.quantize_weight_q8(deq)
    full = q.view(48, -1, 32).abs().amax(-1) == 127
    assert torch.equal(d3[full], d[full]) and torch.equal(q3.view(48, -1, 32)[full], q.view(48, -1, 32)[full])


def test_reference_matmul_is_close_to_float():
    W, q, d, w, s = _packed()
    x = torch.randn(5, 96)
    deq = (q.float().view(48, -1, 32) * d.float()[..., None]).view(48, 96)
    y = K.q8_matmul_reference(x, w, s)
    torch.testing.assert_close(y, x @ deq.T, rtol=0.02, atol=0.05 * float((x @ deq.T).abs().max()))


@native
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 17, 33])
def test_native_matmul_equals_reference_bit_for_bit(rows):
    _, _, _, w, s = _packed()
    x = torch.randn(rows, 96) * 3
    assert torch.equal(K.q8_matmul(x, w, s), K.q8_matmul_reference(x, w, s))


@native
@pytest.mark.parametrize("threads", [1, 2])
def test_native_matmul_is_row_invariant(threads):
    _, _, _, w, s = _packed(N=256, Kd=128)
    x = torch.randn(19, 128)
    block = K.q8_matmul(x, w, s, threads)
    alone = torch.cat([K.q8_matmul(x[i : i + 1], w, s, 1) for i in range(19)])
    assert torch.equal(block, alone)
    for split in (4, 7, 16):  # any grouping of rows
        assert torch.equal(torch.cat([K.q8_matmul(c, w, s, threads) for c in x.split(split)]), block)


@native
def test_native_activation_quantisation_equals_reference():
    x = torch.randn(40, 64) * torch.logspace(-3, 3, 40)[:, None]
    x[3] = 0.0  # an all-zero block
    a, b = torch.ops.leaninfer_q8.q8_quantize(x), K.quantize_activations_reference(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@native
def test_row_attention_matches_reference_and_skips_masked_keys():
    torch.manual_seed(0)
    B, H, Hkv, D, S, T = 1, 4, 2, 64, 40, 9
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    mask = build_mask(torch.arange(S - T, S)[None], torch.arange(S)[None], window=12)
    got = K.row_attention(q, k, v, mask, 0.125)
    torch.testing.assert_close(got, row_invariant_attention(q, k, v, mask, 0.125), rtol=1e-5, atol=1e-5)
    for i in range(T):  # each row alone, over only the keys it may see: bit-identical
        keys = mask[0, 0, i].nonzero().flatten()
        one = K.row_attention(q[:, :, i : i + 1], k[:, :, keys], v[:, :, keys], None, 0.125)
        assert torch.equal(one[:, :, 0], got[:, :, i])


@native
def test_fused_rmsnorm_and_qk_prep_match_the_torch_path():
    from leaninfer.models.attention import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-6, 1.0)
    with torch.no_grad():
        norm.weight.normal_()
    x, r = torch.randn(3, 5, 64), torch.randn(3, 5, 64)
    with torch.inference_mode():
        fused = norm(x)
        res = K.rmsnorm(x, norm.weight, 1.0, 1e-6, residual=r)
    xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + norm.weight.detach())
    torch.testing.assert_close(fused, xf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res, r + xf, rtol=1e-5, atol=1e-5)
    H, Hkv, D, T = 4, 1, 64, 3
    qkv, cos, sin = torch.randn(1, T, (H + 2 * Hkv) * D), torch.randn(1, T, D), torch.randn(1, T, D)
    with torch.inference_mode():
        q, k, v = K.qk_prep(qkv, H, Hkv, norm, norm, cos, sin)
    rq, rk, rv = qkv.split([H * D, Hkv * D, Hkv * D], -1)
    ref = lambda t, h: apply_rope(norm(t.view(1, T, h, D)).transpose(1, 2), cos, sin)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(q.transpose(1, 2), ref(rq, H), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k.transpose(1, 2), ref(rk, Hkv), rtol=1e-5, atol=1e-5)
    assert torch.equal(v, rv.view(1, T, Hkv, D))


@pytest.mark.parametrize("method,opts", [("ngram", {"k": 20}), ("ngram_tree", {"branches": 3})])
def test_w8a8_speculation_is_exact_beyond_16_tokens(tmp_path, method, opts):
    import leaninfer
    from helpers import tiny_model_dir

    tiny_model_dir(tmp_path, "gemma3", head_dim=32)
    engine = leaninfer.load(tmp_path, precision="w8a8")
    prompt = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain = engine.generate(prompt, max_new_tokens=40, eos=False).token_ids
    assert engine.generate(prompt, max_new_tokens=40, eos=False, method=method, **opts).token_ids == plain


def test_w8a8_logits_of_a_block_equal_one_token_steps(tmp_path):
    import leaninfer
    from helpers import block_vs_steps, tiny_model_dir

    tiny_model_dir(tmp_path, "gemma3", head_dim=32)
    model = leaninfer.load(tmp_path, precision="w8a8").model
    block, steps = block_vs_steps(model, prompt_len=6, block=24)  # 24 tokens at once vs one at a time
    assert torch.equal(block, steps)


@native
def test_a_stale_build_baton_from_a_killed_build_does_not_hang_the_next():
    """torch's build baton (`lock`) survives a killed build; the next build removes it under our flock."""
    import subprocess
    import sys

    stale = K.build_dir() / "lock"
    stale.write_text("")
    code = "from leaninfer.models import kernels as K; K._build(); print('built')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "built" in done.stdout, done.stderr[-500:]
    assert not stale.exists()
