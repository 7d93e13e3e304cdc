"""Sync-Point Drop (arXiv 2502.20727): the block algebra, written once for real ranks and for a single-process
simulation of them.

Dense TP block (2 all-reduces):  Y = X + A(AllReduce(O_i));  Z = Y + F(AllReduce(M_i(Y)))
SPD block (1 all-reduce):        Z = X + AllReduce(O_i + M_i(X + O_i))
where O_i is rank i's partial attention output (its heads through its columns of W_O) and M_i its partial MLP
output (input norm included). Because the all-reduce is linear the residual stream still receives the exact
attention output O = sum_i O_i; the one approximation is that MLP shard i sees X + O_i instead of X + O.

Gemma's sandwich norms (A, F: post-attention / post-FFN RMSNorms) act on the *summed* outputs, so there the
one all-reduce carries [O_i, M_i] side by side (2x the bytes of one sync, one latency) and
Z = X + A(O) + F(sum_i M_i(X + A(O_i))): still exact attention in the residual, still one sync point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from leaninfer.parallel.shard import layout

Fn = Callable[[torch.Tensor], torch.Tensor]


def block_forward(x: torch.Tensor, attn: Fn, ffn: Fn, reduce: Fn, post_attn: Fn | None = None,
                  post_ffn: Fn | None = None, sync_attn: bool = True) -> torch.Tensor:
    """One TP block. x: (B, T, d), the same on every rank. attn(x) -> this rank's partial attention output,
    ffn(y) -> its partial FFN output (each with its input norm); reduce(t) sums a partial over ranks.
    sync_attn=False is the SPD block. Returns (B, T, d), the same on every rank."""
    o = attn(x)
    if sync_attn:
        y = x + (post_attn(reduce(o)) if post_attn else reduce(o))
        m = reduce(ffn(y))
        return y + (post_ffn(m) if post_ffn else m)
    m = ffn(x + (post_attn(o) if post_attn else o))  # rank-local residual: X + O_i
    if post_attn is None and post_ffn is None:
        return x + reduce(o + m)  # the one sync: O_i rides along with M_i
    o, m = reduce(torch.cat([o, m], dim=-1)).chunk(2, dim=-1)  # (B, T, 2d) -> two (B, T, d)
    return x + (post_attn(o) if post_attn else o) + (post_ffn(m) if post_ffn else m)


def norms(block: nn.Module) -> tuple[Fn | None, Fn | None]:
    return (block.post_attn_norm, block.post_ffn_norm) if block.sandwich else (None, None)


class SimSPDBlock(nn.Module):
    """A dense `Block` evaluated as `world` SPD ranks in one process (fp32 dense FFN families).

    Rank i's partial attention output comes from the dense attention's head outputs for rank i's heads through
    the matching columns of W_O (exactly what rank i computes); its partial MLP output from its slice of the
    intermediate units. Differentiable in the dense block's weights (block-to-block distillation trains them);
    works with a KV cache (the dense attention writes it). Returns what every rank holds after the block."""

    def __init__(self, block: nn.Module, world: int) -> None:
        super().__init__()
        cfg = block.attn.cfg
        layout(cfg, world, 0)  # validates the split
        if cfg.is_moe or not isinstance(block.attn.o_proj, nn.Linear) or not hasattr(block.ffn, "down_proj") \
                or not isinstance(block.ffn.down_proj, nn.Linear):
            raise ValueError("the SPD simulation needs an fp32 model with dense FFNs")
        self.block, self.world = block, world

    def forward(self, x, cos, sin, mask, cache=None, start=0, routing=None) -> torch.Tensor:
        b, p = self.block, self.world

        def attn(x):
            seen = []
            hook = b.attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            try:
                b.attn(b.input_norm(x), cos, sin, mask, cache, start)
            finally:
                hook.remove()
            heads = seen[0].unflatten(-1, (p, -1))  # (B, T, p, H/p * hd)
            w = b.attn.o_proj.weight.unflatten(1, (p, -1))  # (d, p, H/p * hd)
            return torch.einsum("btpc,dpc->pbtd", heads, w)  # (p, B, T, d): O_i per rank

        def ffn(y):  # y: (p, B, T, d), rank i's MLP input in y[i]
            f = b.ffn
            n = b.ffn_norm(y)
            g = torch.einsum("pbtd,pid->pbti", n, f.gate_proj.weight.unflatten(0, (p, -1)))
            u = torch.einsum("pbtd,pid->pbti", n, f.up_proj.weight.unflatten(0, (p, -1)))
            return torch.einsum("pbti,dpi->pbtd", f.act(g) * u, f.down_proj.weight.unflatten(1, (p, -1)))

        post_attn, post_ffn = norms(b)
        return block_forward(x, attn, ffn, lambda t: t.sum(0), post_attn, post_ffn, sync_attn=False)


@contextmanager
def simulate_spd(model: nn.Module, world: int, drop: Iterable[int]):
    """Within the block, `model` runs blocks `drop` as simulated `world`-rank SPD blocks; the other blocks run
    dense (numerically TP up to float summation order). Restores the original blocks on exit."""
    old = list(model.layers)
    try:
        for i in drop:
            model.layers[i] = SimSPDBlock(old[i], world)
        yield model
    finally:
        for i, blk in enumerate(old):
            model.layers[i] = blk
