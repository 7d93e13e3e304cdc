"""RepCNN structural re-parameterisation for causal (and dilated) 1-D convolutions.

A train-time `RepConvBlock` sums several BN'd causal conv branches (kernel sizes k, dilation multipliers r,
a 1x1 and an identity) and applies ReLU. Every branch is linear up to the sum, so the block folds into one
causal conv of kernel K and dilation D with bias:

* BN folding: W' = W * g/s, b' = beta + (b - mu) * g/s with s = sqrt(var + eps).
* Dilation: a branch with dilation r*D is a dense kernel on the D grid of span (k-1)*r + 1 (zeros between).
* Causal alignment: a shorter kernel occupies the **last** (most recent) taps — pad on the past side.
* Identity: a kernel with a 1 on the last tap of the matching in-group channel.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.streaming.layers import CausalConv1d


def fuse_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BN into the preceding conv. weight (O, I/g, k) -> (W', b'), differentiable in gamma/beta/W."""
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std  # (O,)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale[:, None, None], bn.bias + (b - bn.running_mean) * scale


def dilate_kernel(weight: torch.Tensor, ratio: int) -> torch.Tensor:
    """(O, I, k) with dilation `ratio` -> dense (O, I, (k-1)*ratio + 1) with zeros between the taps."""
    if ratio == 1:
        return weight
    o, i, k = weight.shape
    dense = weight.new_zeros(o, i, (k - 1) * ratio + 1)
    dense[:, :, ::ratio] = weight
    return dense


def pad_past(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """Left-pad a causal kernel to `kernel` taps so it sits on the most recent taps."""
    k = weight.shape[-1]
    if k > kernel:
        raise ValueError(f"branch span {k} exceeds the fused kernel {kernel}")
    return F.pad(weight, (kernel - k, 0))


def identity_kernel(channels: int, groups: int, kernel: int, like: torch.Tensor) -> torch.Tensor:
    """(C, C/g, kernel) kernel that copies each channel through its last (current-frame) tap."""
    per_group = channels // groups
    w = like.new_zeros(channels, per_group, kernel)
    idx = torch.arange(channels)
    w[idx, idx % per_group, kernel - 1] = 1.0
    return w


class RepConvBlock(nn.Module):
    """Multi-branch causal conv block: ReLU(sum_b BN_b(conv_b(x)) [+ BN_id(x)]).

    Args:
        c_in, c_out: channels. kernel, dilation: the fused conv (K, D).
        branches: (k, r) pairs — kernel size and dilation multiplier on the D grid; needs (k-1)*r + 1 <= K.
        identity: add a BN'd identity branch (requires c_in == c_out and stride 1).
        groups: conv groups shared by all branches.
        stride: causal time stride shared by all branches (output aligned with the newest frame of each group).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        dilation: int = 1,
        branches: tuple[tuple[int, int], ...] = ((5, 1), (3, 1), (1, 1)),
        identity: bool = True,
        groups: int = 1,
        act: bool = True,
        stride: int = 1,
    ):
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.dilation, self.groups = c_in, c_out, kernel, dilation, groups
        self.stride = stride
        for k, r in branches:
            if (k - 1) * r + 1 > kernel:
                raise ValueError(f"branch (k={k}, r={r}) spans {(k - 1) * r + 1} > kernel {kernel}")
        self.specs = tuple(branches)
        self.convs = nn.ModuleList(
            CausalConv1d(c_in, c_out, k, dilation * r, groups, bias=False, stride=stride) for k, r in branches
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(c_out) for _ in branches)
        self.id_bn = nn.BatchNorm1d(c_out) if identity and c_in == c_out and stride == 1 else None
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C', T)
        y = sum(bn(conv(x)) for conv, bn in zip(self.convs, self.bns))
        if self.id_bn is not None:
            y = y + self.id_bn(x)
        return self.act(y)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused (c_out, c_in/g, K) kernel and (c_out,) bias, differentiable (uses BN running stats)."""
        weight, bias = 0.0, 0.0
        for (k, r), conv, bn in zip(self.specs, self.convs, self.bns):
            w, b = fuse_bn(conv.weight, conv.bias, bn)
            weight = weight + pad_past(dilate_kernel(w, r), self.kernel)
            bias = bias + b
        if self.id_bn is not None:
            w, b = fuse_bn(
                identity_kernel(self.c_out, self.groups, self.kernel, self.convs[0].weight), None, self.id_bn
            )
            weight, bias = weight + w, bias + b
        return weight, bias

    def reparameterize(self) -> ConvBlock:
        w, b = self.equivalent_kernel_bias()
        return ConvBlock.from_kernel(w.detach(), b.detach(), self.dilation, self.groups, self.act, self.stride)


class ConvBNBlock(nn.Module):
    """Single-branch train-time block: ReLU(BN(causal conv(x))). Folds into a ConvBlock."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1, act: bool = True, stride: int = 1
    ):
        super().__init__()
        self.conv = CausalConv1d(c_in, c_out, kernel, dilation, groups, bias=False, stride=stride)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = nn.ReLU() if act else nn.Identity()
        self.dilation, self.groups, self.stride = dilation, groups, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse_bn(self.conv.weight, None, self.bn)

    def reparameterize(self) -> ConvBlock:
        w, b = self.equivalent_kernel_bias()
        return ConvBlock.from_kernel(w.detach(), b.detach(), self.dilation, self.groups, self.act, self.stride)


class ConvBlock(nn.Module):
    """Inference block: ReLU(causal conv(x) + b) — the single-branch CNN layer."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1, act: bool = True, stride: int = 1
    ):
        super().__init__()
        self.conv = CausalConv1d(c_in, c_out, kernel, dilation, groups, bias=True, stride=stride)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv.weight, self.conv.bias

    @classmethod
    def from_kernel(
        cls, weight: torch.Tensor, bias: torch.Tensor, dilation: int, groups: int, act: nn.Module, stride: int = 1
    ) -> ConvBlock:
        c_out, per_group, k = weight.shape
        block = cls(per_group * groups, c_out, k, dilation, groups, act=not isinstance(act, nn.Identity), stride=stride)
        with torch.no_grad():
            block.conv.weight.copy_(weight)
            block.conv.bias.copy_(bias)
        return block


def reparameterize(model: nn.Module) -> nn.Module:
    """A deep copy of `model` (eval mode) with every RepConvBlock / ConvBNBlock folded into a ConvBlock."""
    model = copy.deepcopy(model).eval()

    def _swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (RepConvBlock, ConvBNBlock)):
                setattr(parent, name, child.reparameterize())
            else:
                _swap(child)

    _swap(model)
    return model


def fused_kernels(model: nn.Module) -> list[torch.Tensor]:
    """Differentiable fused kernels of every foldable block (for R^2 on the inference-time weights)."""
    return [
        m.equivalent_kernel_bias()[0] for m in model.modules() if isinstance(m, (RepConvBlock, ConvBNBlock, ConvBlock))
    ]
