"""W8A8 experts for the MoE layer: every expert's fused gate/up (2H, D) and down (D, H) matrices packed on the
Q8_0 grid (models/kernels, the same packing as `QuantLinear(precision="w8a8")`), stacked over experts.

Dispatch runs only the experts that some token of the block chose: one `q8_matmul` per expert and matrix over the
rows routed to it. The kernel is row-invariant (a row's result never depends on the other rows), the activation
is elementwise, and each token sums its k weighted expert outputs in the order of its own top-k slots with plain
adds (never a scatter-add whose order depends on the block), so a token's output is bit-identical whether it is
decoded alone or inside a verification block: speculative decoding of MoE models stays lossless.

Odd shapes are zero-padded: D to whole 32-blocks (gate/up inputs) and 8-tiles (down outputs), H to whole
32-blocks (gate and up rows each, down inputs). Padded neurons compute act(0) * 0 = 0 and meet zero weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models import kernels
from leaninfer.models.moe import act_fn


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


class PackedExperts(nn.Module):
    """Stacked W8A8 experts: gate_up_w int8 (E, 2Hp/8, Dk/32, 256) + gate_up_s int16 (E, 2Hp/8, Dk/32, 8) (fp16
    bits), down_w int8 (E, Dn/8, Hp/32, 256) + down_s int16 (E, Dn/8, Hp/32, 8); Dk, Dn, Hp are D and H padded.

    The constructor allocates empty buffers (to load cached packed weights into); `from_stacks` packs float ones.
    """

    def __init__(self, n_experts: int, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.n_experts, self.dim, self.hidden, self.act_name = n_experts, dim, hidden, act
        self.act = act_fn(act)
        T, B = kernels.TILE, kernels.BLOCK
        self.dk, dn, self.hp = _ceil(dim, B), _ceil(dim, T), _ceil(hidden, B)
        E = n_experts
        self.register_buffer("gate_up_w", torch.empty(E, 2 * self.hp // T, self.dk // B, 256, dtype=torch.int8))
        self.register_buffer("gate_up_s", torch.empty(E, 2 * self.hp // T, self.dk // B, T, dtype=torch.int16))
        self.register_buffer("down_w", torch.empty(E, dn // T, self.hp // B, 256, dtype=torch.int8))
        self.register_buffer("down_s", torch.empty(E, dn // T, self.hp // B, T, dtype=torch.int16))

    @classmethod
    def from_stacks(cls, gate_up: torch.Tensor, down: torch.Tensor, act: str) -> PackedExperts:
        """gate_up (E, 2H, D) ([gate; up] rows), down (E, D, H), float -> packed experts."""
        E, H2, D = gate_up.shape
        H = H2 // 2
        layer = cls(E, D, H, act)
        hp, dk, dn = layer.hp, layer.dk, layer.down_w.shape[1] * kernels.TILE
        gu, dw, gs, ds = [], [], [], []
        for e in range(E):
            g, u = gate_up[e].detach().float().chunk(2)  # (H, D) each
            w = torch.cat([F.pad(g, (0, dk - D, 0, hp - H)), F.pad(u, (0, dk - D, 0, hp - H))])  # (2Hp, Dk)
            q, s = kernels.pack_q8(*kernels.quantize_weight_q8(w))
            gu.append(q)
            gs.append(s)
            q, s = kernels.pack_q8(*kernels.quantize_weight_q8(F.pad(down[e].detach().float(), (0, hp - H, 0, dn - D))))
            dw.append(q)
            ds.append(s)
        # fresh stacks start 64-byte aligned and every expert's slice is a multiple of 256 bytes long
        layer.gate_up_w, layer.gate_up_s = torch.stack(gu), torch.stack(gs)
        layer.down_w, layer.down_s = torch.stack(dw), torch.stack(ds)
        return layer

    def _experts(self) -> list[tuple[torch.Tensor, ...]]:
        """Per expert (gate_up_w, gate_up_s, down_w, down_s) views, made once per set of buffers (indexing the
        stacks on every call costs more than a small expert's matmul)."""
        key = tuple(b.data_ptr() for b in (self.gate_up_w, self.gate_up_s, self.down_w, self.down_s))
        if getattr(self, "_views_key", None) != key:
            self._views = list(zip(*(b.unbind(0) for b in (self.gate_up_w, self.gate_up_s, self.down_w,
                                                             self.down_s))))
            self._views_key = key
        return self._views

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e on the rows x (m, Dk) fp32 -> (m, D) fp32 (row-invariant)."""
        return self._expert(x, *self._experts()[e])

    def _expert(self, x: torch.Tensor, gw, gs, dw, ds) -> torch.Tensor:
        h = kernels.q8_matmul(x, gw, gs)  # (m, 2Hp)
        y = kernels.q8_matmul(self.act(h[:, : self.hp]) * h[:, self.hp :], dw, ds)  # (m, Dn)
        return y if y.shape[1] == self.dim else y[:, : self.dim]

    def forward(self, flat: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """flat (N, D), routing weights (N, k) and expert ids (N, k) -> sum_j weights[:, j] * expert_idx[:, j](flat)
        (N, D), the k terms added in slot order per token."""
        N, k = idx.shape
        x = flat.float()
        if self.dk != self.dim:
            x = F.pad(x, (0, self.dk - self.dim))
        views = self._experts()
        if N == 1:  # decode: the k chosen experts on the one row
            y_all = torch.cat([self._expert(x, *views[e]) for e in idx[0].tolist()])  # (k, D)
        else:  # a block: each chosen expert once over the rows routed to it, results put back per (token, slot)
            flat_idx = idx.reshape(-1)  # (N*k,), token-major
            order = torch.argsort(flat_idx, stable=True)
            counts = torch.bincount(flat_idx, minlength=self.n_experts).tolist()
            y_all = x.new_empty(N * k, self.dim)
            start = 0
            for e, c in enumerate(counts):
                if c:
                    pos = order[start : start + c]  # (c,) positions token * k + slot
                    y_all[pos] = self._expert(x[pos // k], *views[e])
                    start += c
        terms = y_all.view(N, k, self.dim) * weights.float()[:, :, None]  # (N, k, D): one fp32 multiply each
        out = terms[:, 0]
        for j in range(1, k):  # fixed order: the token's own slots, plain adds (no fused multiply-add)
            out = out + terms[:, j]
        return out.to(flat.dtype)

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, {self.dim}->{self.hidden}->{self.dim}, w8a8"


def pack_moe_experts(model: nn.Module, empty: bool = False) -> nn.Module:
    """Replace every MoE layer's float expert stacks by `PackedExperts` (`MoE.packed`), in place.

    With `empty`, the packed buffers are allocated but not filled (to load a cached quantised state into)."""
    from leaninfer.models.moe import MoE

    for module in model.modules():
        if isinstance(module, MoE) and not hasattr(module, "packed"):
            E, H2, D = module.gate_up.shape
            if empty:
                module.packed = PackedExperts(E, D, H2 // 2, module.cfg.act)
            else:
                module.packed = PackedExperts.from_stacks(module.gate_up.data, module.down.data, module.cfg.act)
            del module.gate_up, module.down
    return model
