"""Uniform per-channel PTQ and k-means palettisation."""

import pytest
import torch

from leaninfer.streaming.kws.models import ModelConfig, build_model
from leaninfer.streaming.quant import (
    dequantize_uniform,
    fake_quant_uniform,
    kmeans_1d,
    palettize,
    quantize_model,
    quantize_uniform,
    weight_stats,
)

torch.set_num_threads(1)  # tiny models; the machine is shared


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_uniform_level_count_and_range(bits):
    w = torch.randn(6, 200)
    q, scale = quantize_uniform(w, bits)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    for row in q:
        assert len(torch.unique(row)) <= 2**bits
    if bits <= 4:
        assert len(torch.unique(q)) == 2**bits  # full range: all levels used on gaussian weights
    torch.testing.assert_close(scale, w.abs().amax(1) / 2 ** (bits - 1))
    wq = dequantize_uniform(q, scale)
    err = (wq - w).abs()
    inside = w <= (2 ** (bits - 1) - 1) * scale[:, None]
    assert (err[inside] <= scale.max() / 2 + 1e-6).all()


def test_uniform_roundtrip_exact_on_grid():
    scale = torch.tensor([0.5, 0.25])
    q = torch.tensor([[-2, -1, 0, 1], [1, 0, -2, -1]], dtype=torch.int8)
    w = dequantize_uniform(q, scale)
    q2, s2 = quantize_uniform(w, 2)
    torch.testing.assert_close(dequantize_uniform(q2, s2), w)
    assert torch.equal(q2, q)
    assert torch.equal(fake_quant_uniform(w, 8), w)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_kmeans_level_count(bits):
    w = torch.randn(500)
    p = palettize(w, bits)
    assert len(torch.unique(p)) == 2**bits
    torch.testing.assert_close(palettize(p, bits), p)
    cent, assign = kmeans_1d(torch.tensor([0.0, 0.1, 5.0, 5.1]), 2)
    assert sorted(cent.tolist()) == pytest.approx([0.05, 5.05])


def test_quantize_model_touches_only_weights():
    model = build_model(ModelConfig(kind="unibranch", channels=8)).eval()
    q = quantize_model(model, 2, edge_bits=None)
    edge = quantize_model(model, 2)  # stem and head stay at 8 bits
    assert len(torch.unique(edge.stem.conv.weight[0])) > 4 and len(torch.unique(edge.blocks[0].conv.weight[0])) <= 4
    for (n, p), (_, p2) in zip(model.named_parameters(), q.named_parameters()):
        if n.endswith("weight") and p.dim() > 1:
            assert len(torch.unique(p2[0])) <= 4
        else:
            assert torch.equal(p, p2)
    stats = weight_stats(model)
    assert stats["max_abs"] > 0
