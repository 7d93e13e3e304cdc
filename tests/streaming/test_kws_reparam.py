"""Re-parameterisation: the folded single-branch conv equals the multi-branch block (fp32, <= 1e-5)."""

import pytest
import torch
from torch import nn

from leaninfer.streaming.kws.models import ModelConfig, build_model, n_params
from leaninfer.streaming.reparam import (
    ConvBlock,
    ConvBNBlock,
    RepConvBlock,
    dilate_kernel,
    identity_kernel,
    reparameterize,
)

torch.set_num_threads(1)  # tiny models; the machine is shared


def _randomise_bn(module: nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.3, 2.0)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)


CASES = {
    "kxk only": dict(branches=((5, 1),), identity=False),
    "multi-scale": dict(branches=((7, 1), (5, 1), (3, 1)), identity=False),
    "1x1": dict(branches=((7, 1), (1, 1)), identity=False),
    "identity": dict(branches=((7, 1),), identity=True),
    "dilated branch": dict(branches=((7, 1), (3, 3), (3, 2)), identity=False),
    "all": dict(branches=((7, 1), (5, 1), (3, 1), (1, 1), (3, 3), (2, 6)), identity=True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dilation", [1, 3])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_block_fold_exact(case, dilation, groups, stride):
    block = RepConvBlock(8, 8, 7, dilation, groups=groups, stride=stride, **CASES[case])
    _randomise_bn(block)
    block.eval()
    fused = block.reparameterize()
    assert isinstance(fused, ConvBlock)
    x = torch.randn(3, 8, 64)
    y = block(x)
    assert y.shape[-1] == 64 // stride
    assert (y - fused(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_block_is_causal_and_aligned_to_newest_frame(stride):
    """Output j uses input frames <= j*stride + stride - 1 and no later one; T frames give floor(T / stride)."""
    block = RepConvBlock(4, 4, 5, 2, branches=((5, 1), (3, 2), (1, 1)), stride=stride)
    _randomise_bn(block)
    block.eval()
    fused = block.reparameterize()
    x = torch.randn(1, 4, 31)
    y = fused(x)
    assert y.shape[-1] == 31 // stride
    for j in range(y.shape[-1]):
        last = j * stride + stride - 1
        x2 = x.clone()
        x2[..., last + 1 :] += 5.0  # the future of output j
        torch.testing.assert_close(fused(x2)[..., j], y[..., j])
        x3 = x.clone()
        x3[..., last] += 5.0  # its newest frame
        assert not torch.allclose(fused(x3)[..., j], y[..., j])


def test_causal_alignment_is_past_side():
    """A centred merge would leak the future: check the fused block is causal and a centred merge is wrong."""
    block = RepConvBlock(4, 4, 5, 1, branches=((5, 1), (3, 1)), identity=False)
    _randomise_bn(block)
    block.eval()
    fused = block.reparameterize()
    x = torch.randn(1, 4, 30)
    y = fused(x)
    x2 = x.clone()
    x2[..., 20:] += 5.0
    torch.testing.assert_close(fused(x2)[..., :20], y[..., :20])
    w3 = block.convs[1].weight
    assert torch.equal(torch.nn.functional.pad(w3, (2, 0))[..., :2], torch.zeros_like(w3[..., :2]))


def test_convbn_and_channel_change():
    for block in (ConvBNBlock(6, 10, 5, 2), RepConvBlock(6, 10, 5, 2, branches=((5, 1), (3, 2), (1, 1)))):
        _randomise_bn(block)
        block.eval()
        x = torch.randn(2, 6, 40)
        assert (block(x) - block.reparameterize()(x)).abs().max().item() <= 1e-5


def test_helpers():
    w = torch.arange(3.0).reshape(1, 1, 3)
    assert dilate_kernel(w, 2).tolist() == [[[0.0, 0.0, 1.0, 0.0, 2.0]]]
    k = identity_kernel(4, 2, 3, w)
    x = torch.randn(1, 4, 9)
    torch.testing.assert_close(torch.nn.functional.conv1d(torch.nn.functional.pad(x, (2, 0)), k, groups=2), x)
    with pytest.raises(ValueError):
        RepConvBlock(4, 4, 3, branches=((3, 2),))


def test_repcnn_model_folds_to_unibranch_graph():
    rep = build_model(ModelConfig(kind="repcnn", channels=16))
    uni = build_model(ModelConfig(kind="unibranch", channels=16))
    _randomise_bn(rep)
    rep.eval()
    fused = reparameterize(rep)
    x = torch.randn(2, 50, 40)
    assert (rep(x) - fused(x)).abs().max().item() <= 1e-5
    uni_fused = reparameterize(uni.eval())
    assert n_params(fused) == n_params(uni_fused) < n_params(rep)
    assert [type(m).__name__ for m in fused.modules()] == [type(m).__name__ for m in uni_fused.modules()]
