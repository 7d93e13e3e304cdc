"""MoEfication pieces: balanced clustering, an exact split of the dense FFN, router and layer fits."""

import torch

from leaninfer.models.moe import act_fn
from leaninfer.moe import moefy


def _ffn(seed=0, D=16, H=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(H, D, generator=g) / 4, torch.randn(H, D, generator=g) / 4, torch.randn(D, H, generator=g) / 4,
            torch.randn(256, D, generator=g))


def test_balanced_kmeans_gives_equal_groups_and_keeps_coactive_neurons_together():
    base = torch.randn(4, 50)
    feats = torch.cat([base[i].expand(8, 50) + 0.01 * torch.randn(8, 50) for i in range(4)])  # 4 clean clusters
    assign = moefy.balanced_kmeans(feats.abs(), 4, seed=1)
    assert torch.bincount(assign, minlength=4).tolist() == [8, 8, 8, 8]
    for i in range(4):
        assert len(set(assign[8 * i : 8 * i + 8].tolist())) == 1


def test_split_experts_sum_to_the_dense_ffn():
    gate, up, down, x = _ffn()
    assign = torch.arange(32) % 4
    gate_up, downs, groups = moefy.split_experts(gate, up, down, assign, 4)
    f = act_fn("gelu_tanh")
    dense = (f(x @ gate.t()) * (x @ up.t())) @ down.t()
    total = torch.zeros_like(dense)
    for e in range(4):
        g, u = (x @ gate_up[e].t()).chunk(2, dim=-1)
        total += (f(g) * u) @ downs[e].t()
    torch.testing.assert_close(total, dense, atol=1e-5, rtol=1e-5)
    acts = moefy.neuron_activations(x, gate, up, "gelu_tanh")
    norms = moefy.expert_norms(acts, down, groups)
    assert norms.shape == (256, 4) and bool((norms >= 0).all())


def test_router_and_layer_fit_reduce_the_error():
    gate, up, down, x = _ffn(1)
    assign = moefy.balanced_kmeans(moefy.neuron_activations(x, gate, up, "silu").abs().t(), 4)
    gate_up, downs, groups = moefy.split_experts(gate, up, down, assign, 4)
    acts = moefy.neuron_activations(x, gate, up, "silu")
    y = acts @ down.t()
    router = moefy.fit_router(x, moefy.expert_norms(acts, down, groups), steps=100)
    downs = downs * moefy.init_scales(x, router, 2)[:, None, None]
    err0 = float((moefy.sparse_ffn(x, router, gate_up, downs, 2, "silu") - y).pow(2).sum() / y.pow(2).sum())
    *_, err = moefy.fit_layer(x, y, router, gate_up, downs, 2, "silu", steps=60, batch=128, lr=3e-3)
    assert err < err0
