"""MoE runtime: top-k dialled per call and per layer, against a plain reference loop; Gumbel routing noise."""

import pytest
import torch

from helpers import hf_model
from leaninfer.io.hf import config_from_hf, map_hf_tensors
from leaninfer.models.build import build_decoder
from leaninfer.models.moe import Routing, gumbel_noise, route


def _model(arch):
    hf = hf_model(arch)
    cfg = config_from_hf(hf.config.to_dict())
    return build_decoder(cfg, map_hf_tensors(cfg, hf.state_dict()))


def reference_moe(moe, x, k, renorm):
    """Token by token, expert by expert: the definition the fast paths must match."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        p = torch.softmax(moe.router(x[n]).float(), -1)
        w, idx = torch.topk(p, k)
        if renorm:
            w = w / w.sum()
        for weight, e in zip(w, idx.tolist()):
            g, u = (moe.gate_up[e] @ x[n]).chunk(2)
            out[n] += weight * (moe.down[e] @ (moe.act(g) * u))
        if moe.shared is not None:
            out[n] += torch.sigmoid(moe.shared_gate(x[n])) * moe.shared(x[n][None])[0]
    return out


@pytest.mark.parametrize("arch", ["olmoe", "qwen2_moe", "mixtral"])
@pytest.mark.parametrize("rows", [1, 7, 70])  # per-pair exact path (<= 64 tokens) and grouped prefill path
def test_runtime_k_matches_reference_loop(arch, rows):
    model = _model(arch)
    moe = model.layers[0].ffn
    x = torch.randn(1, rows, model.cfg.dim)
    with torch.no_grad():
        for k in range(1, model.cfg.n_experts + 1):
            for renorm in (False, True):
                got = moe(x, Routing(top_k=k, renorm=renorm))[0]
                torch.testing.assert_close(got, reference_moe(moe, x[0], k, renorm), atol=1e-4, rtol=1e-4)


def test_native_k_and_default_routing_agree():
    model = _model("olmoe")
    x = torch.randint(3, 96, (1, 9))
    with torch.no_grad():
        a = model(x).logits
        b = model(x, routing=Routing(top_k=model.cfg.top_k, renorm=model.cfg.norm_topk_prob)).logits
        c = model(x, routing=[Routing(top_k=model.cfg.top_k)] * model.cfg.n_layers).logits
        d = model(x, routing=Routing(top_k=1)).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)


def test_bad_top_k():
    model = _model("mixtral")
    with pytest.raises(ValueError, match="top_k"):
        model(torch.tensor([[3, 4]]), routing=Routing(top_k=model.cfg.n_experts + 1))


def test_gumbel_top_k_is_seeded_without_replacement_and_follows_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n1, n2 = gumbel_noise((20000, 4), 1.0, g1), gumbel_noise((20000, 4), 1.0, g2)
    assert torch.equal(n1, n2)
    _, idx = route(logits, 2, False, n1)
    assert bool((idx[:, 0] != idx[:, 1]).all())  # two distinct experts per token
    first = torch.bincount(idx[:, 0], minlength=4).float() / 20000  # first pick ~ p
    assert torch.allclose(first, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    _, clean = route(logits[:1], 2, False, gumbel_noise((1, 4), 0.0))
    assert clean.tolist() == [[0, 1]]
