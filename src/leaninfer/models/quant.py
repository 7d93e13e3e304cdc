"""Linear precisions: W8A8 (the default: int8 weights on the Q8_0 grid and int8 block activations), and weight-only
bf16, int8 (per output channel) and int4 (group-wise, asymmetric) linears.

- w8a8: weights as int8 codes with one fp16 scale per 32 inputs (GGUF's Q8_0 grid: the default model's Q8_0
  head comes back exactly), activations quantised per row and 32-block inside the kernel, int32 dots and a
  fixed fp32 epilogue (models/kernels): every row is bit-identical whatever the block size, so speculative
  verification is exact by construction.

Kernels were chosen by measurement on a 2-core AVX-512 CPU (see docs/architecture.md):
- int8: `torch._weight_int8pack_mm` (bf16 activations) in chunks of 4 rows up to 16 rows; more rows (prefill)
  dequantise to bf16 first.
- int4: `torch._weight_int4pack_mm_for_cpu` (bf16 activations), any number of rows.
Activations enter and leave in the caller's dtype (fp32 residual stream); only the matmul is low precision.
The tied LM head gets its own quantised copy; the embedding lookup keeps full-precision rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models import kernels

PRECISIONS = ("fp32", "bf16", "int8", "int4", "w8a8")
INT8_PACK_MAX_ROWS = 4
INT8_PACK_CHUNKED_ROWS = 16


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w ≈ q * scale, q in [-127, 127]. Returns (q int8 (N, K), scale fp32 (N,))."""
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4 with 16 levels: w ≈ (q - 8) * scale + zero, q in [0, 15].

    Returns (q int32 (N, K), scale (N, K/group), zero (N, K/group)); `zero` is the value of level 8.
    """
    N, K = w.shape
    if K % group:
        raise ValueError(f"in_features {K} is not a multiple of the int4 group size {group}")
    wg = w.float().view(N, K // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = (hi - lo).clamp_min(1e-8) / 15.0
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).view(N, K)
    return q, scale, lo + 8.0 * scale


class QuantLinear(nn.Module):
    """A weight-only low-precision replacement for `nn.Linear` (bias kept in fp32).

    The constructor allocates empty buffers (so cached quantised weights can be loaded into it);
    `from_linear` quantises a float weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, precision: str, group: int = 32) -> None:
        super().__init__()
        if precision not in ("bf16", "int8", "int4", "w8a8"):
            raise ValueError(f"QuantLinear precision must be bf16|int8|int4|w8a8, got {precision!r}")
        if precision == "int4" and in_features % group:
            raise ValueError(f"in_features {in_features} is not a multiple of the int4 group size {group}")
        self.precision, self.group = precision, group
        self.in_features, self.out_features = in_features, out_features
        N, K = out_features, in_features
        self.bias = nn.Parameter(torch.empty(N), requires_grad=False) if bias else None
        if precision == "bf16":
            self.register_buffer("w", torch.empty(N, K, dtype=torch.bfloat16))
        elif precision == "w8a8":  # odd shapes are zero-padded to whole tiles/blocks (exact: zeros add nothing)
            Np, Kp = _ceil(N, kernels.TILE), _ceil(K, kernels.BLOCK)
            self.register_buffer("w", torch.empty(Np // kernels.TILE, Kp // kernels.BLOCK, 256, dtype=torch.int8))
            self.register_buffer("scale", torch.empty(Np // kernels.TILE, Kp // kernels.BLOCK, kernels.TILE,
                                                      dtype=torch.int16))  # fp16 bits
        elif precision == "int8":
            self.register_buffer("w", torch.empty(N, K, dtype=torch.int8))
            self.register_buffer("scale", torch.empty(N, dtype=torch.bfloat16))
        else:
            self.register_buffer("w", torch.empty(N, K // 2, dtype=torch.uint8))  # packed by the CPU kernel
            self.register_buffer("scale_zero", torch.empty(K // group, N, 2, dtype=torch.bfloat16))

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, precision: str, group: int = 32):
        N, K = weight.shape
        layer = cls(K, N, bias is not None, precision, group)
        w = weight.detach().float()
        if bias is not None:
            layer.bias.data = bias.detach().float().clone()
        if precision == "bf16":
            layer.w = w.to(torch.bfloat16)
        elif precision == "w8a8":
            wp = F.pad(w, (0, _ceil(K, kernels.BLOCK) - K, 0, _ceil(N, kernels.TILE) - N))
            layer.w, layer.scale = kernels.pack_q8(*kernels.quantize_weight_q8(wp))
        elif precision == "int8":
            q, s = quantize_int8(w)
            layer.w, layer.scale = q, s.to(torch.bfloat16)
        else:
            q, s, z = quantize_int4(w, group)
            layer.w = torch._convert_weight_to_int4pack_for_cpu(q, 2)
            layer.scale_zero = torch.stack([s, z], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        return layer

    def dequantized(self) -> torch.Tensor:
        """The weight this layer effectively multiplies by, in fp32 (N, K)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        if self.precision == "bf16":
            return self.w.float()
        if self.precision == "w8a8":
            q, d = kernels.unpack_q8(self.w, self.scale)
            w = (q.float().view(q.shape[0], -1, kernels.BLOCK) * d.float()[..., None]).view(q.shape)
            return w[: self.out_features, : self.in_features].contiguous()
        return self._matmul(eye).float().t().contiguous()

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:  # x2: (M, K) bf16 -> (M, N) bf16
        if self.precision == "bf16":
            return F.linear(x2, self.w)
        if self.precision == "int8":
            M = x2.shape[0]
            if M <= INT8_PACK_MAX_ROWS:
                return torch._weight_int8pack_mm(x2, self.w, self.scale)
            if M <= INT8_PACK_CHUNKED_ROWS:  # verification blocks: a few packed calls beat dequantising
                return torch.cat([torch._weight_int8pack_mm(c, self.w, self.scale)
                                  for c in x2.split(INT8_PACK_MAX_ROWS)])
            return F.linear(x2, self.w.to(torch.bfloat16) * self.scale[:, None])
        return torch._weight_int4pack_mm_for_cpu(x2, self.w, self.group, self.scale_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.precision == "w8a8":  # fp32 in, fp32 out; activations are quantised inside the kernel
            x2 = x.reshape(-1, shape[-1]).float()
            if self.w.shape[1] * kernels.BLOCK != self.in_features:
                x2 = F.pad(x2, (0, self.w.shape[1] * kernels.BLOCK - self.in_features))
            y = kernels.q8_matmul(x2, self.w, self.scale)
            if y.shape[1] != self.out_features:
                y = y[:, : self.out_features]
            y = y.to(x.dtype)
            if self.bias is not None:
                y = y + self.bias.to(x.dtype)
            return y.view(*shape[:-1], self.out_features)
        y = self._matmul(x.reshape(-1, shape[-1]).to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, {self.precision}"


def quantize_model(model: nn.Module, precision: str, group: int = 32, empty: bool = False) -> nn.Module:
    """Swap every `nn.Linear` for a `QuantLinear`, and give a tied head its own quantised copy (in place).

    With `empty`, layers get empty buffers of the right shapes (to load cached quantised weights into).
    MoE expert stacks stay in the model's dtype (they are gathered per token, not plain linears), except at w8a8,
    where they are packed per expert (models/moe_q8.py).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    _fuse_projections(model)
    if precision == "w8a8":  # MoE expert stacks: packed per expert, dispatched per chosen expert (models/moe_q8.py)
        from leaninfer.models.moe_q8 import pack_moe_experts

        pack_moe_experts(model, empty)
    from leaninfer.models.attention import Attention

    for module in model.modules():  # low-precision activations amplify last-bit attention differences
        if isinstance(module, Attention):
            module.row_invariant = True
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and _quantisable(child, precision, group):
                setattr(module, child_name, _make(child.weight, child.bias, precision, group, empty))
    head = nn.Linear(model.embed.weight.shape[1], model.embed.weight.shape[0], bias=False, device="meta") \
        if hasattr(model, "embed") else None
    if getattr(model, "lm_head", "absent") is None and _quantisable(head, precision, group):  # tied head: a copy
        model.lm_head = _make(model.embed.weight, None, precision, group, empty)
    return model


def align_buffers(model: nn.Module, alignment: int = 64) -> nn.Module:
    """Copy every quantised weight whose memory is not `alignment`-byte aligned (in place).

    Tensors loaded from a safetensors file can start at any byte offset; the packed int8/int4 CPU kernels
    read with aligned vector loads and crash on such weights (seen with a built MoE's cached int8 state)."""
    from leaninfer.models.moe_q8 import PackedExperts

    for module in model.modules():
        if isinstance(module, (QuantLinear, PackedExperts)):
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf.data_ptr() % alignment:
                    setattr(module, name, buf.clone())
    return model


def _quantisable(linear: nn.Linear, precision: str, group: int) -> bool:
    return precision == "w8a8" or linear.in_features % group == 0


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def _make(weight, bias, precision, group, empty) -> QuantLinear:
    if empty:
        return QuantLinear(weight.shape[1], weight.shape[0], bias is not None, precision, group)
    return QuantLinear.from_linear(weight, bias, precision, group)


def _fuse_projections(model: nn.Module) -> None:
    """Concatenate q/k/v and gate/up linears into one linear each: fewer, larger low-precision matmuls."""
    from leaninfer.models.attention import Attention
    from leaninfer.models.transformer import MLP

    def fuse(parts: list[nn.Linear]) -> nn.Linear:
        out = sum(p.out_features for p in parts)
        has_bias = parts[0].bias is not None
        fused = nn.Linear(parts[0].in_features, out, bias=has_bias, device=parts[0].weight.device)
        fused.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]), requires_grad=False)
        if has_bias:
            fused.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]), requires_grad=False)
        return fused

    for module in model.modules():
        if isinstance(module, Attention) and not hasattr(module, "qkv"):
            module.qkv = fuse([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
        elif isinstance(module, MLP) and not hasattr(module, "gate_up"):
            module.gate_up = fuse([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
