"""`ModelConfig`: one decoder family, with architecture variants as typed fields.

Families: Gemma 3 (sliding/global layers with their own RoPE bases, QK-norm, sandwich norms, scaled
embeddings, (1 + w) RMSNorm), Llama / Qwen2 / Mistral, and the MoE families OLMoE, Qwen2-MoE
(shared expert) and Mixtral.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCHES = ("gemma3", "llama", "qwen2", "mistral", "olmoe", "qwen2_moe", "mixtral")
MOE_ARCHES = ("olmoe", "qwen2_moe", "mixtral")


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_theta_local: float | None = None  # RoPE base of sliding-window layers (Gemma 3); None = rope_theta
    rope_scaling_factor: float = 1.0  # linear position interpolation
    # Llama 3.x "llama3" frequency scaling of the global RoPE base: factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings (None = not used)
    rope_llama3: dict[str, float] | None = None
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)  # "full" or "sliding" per layer
    qk_norm: str = "none"  # "none" | "head" (per head, Gemma 3) | "full" (over all heads, OLMoE)
    sandwich_norm: bool = False  # post-attention / post-FFN norms (Gemma)
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + w); Gemma uses 1
    embed_scale: float = 1.0  # embeddings multiplied by this (Gemma: sqrt(dim))
    tie_embeddings: bool = False
    act: str = "silu"  # "silu" | "gelu_tanh"
    attn_scale: float | None = None  # None = head_dim ** -0.5
    qkv_bias: bool = False
    # mixture of experts
    n_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    max_seq_len: int = 8192

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"unsupported architecture {self.arch!r}; supported: {', '.join(ARCHES)}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if not self.layer_types:
            kind = "sliding" if self.sliding_window else "full"
            self.layer_types = [kind] * self.n_layers
        if len(self.layer_types) != self.n_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        if any(t not in ("full", "sliding") for t in self.layer_types):
            raise ValueError(f"layer_types must be 'full' or 'sliding': {self.layer_types}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding layers need sliding_window")
        if self.qk_norm not in ("none", "head", "full"):
            raise ValueError(f"qk_norm must be none|head|full, got {self.qk_norm!r}")
        if self.act not in ("silu", "gelu_tanh"):
            raise ValueError(f"act must be silu|gelu_tanh, got {self.act!r}")
        if self.rope_llama3 is not None:
            keys = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
            if set(self.rope_llama3) != keys:
                raise ValueError(f"rope_llama3 needs exactly {sorted(keys)}, got {sorted(self.rope_llama3)}")
            if self.rope_llama3["high_freq_factor"] <= self.rope_llama3["low_freq_factor"]:
                raise ValueError("rope_llama3: high_freq_factor must exceed low_freq_factor")
        if self.is_moe and not (0 < self.top_k <= self.n_experts):
            raise ValueError(f"MoE needs 0 < top_k <= n_experts, got top_k={self.top_k}, n_experts={self.n_experts}")

    @property
    def is_moe(self) -> bool:
        """MoE families, or any family given experts (an MoE derived from a dense model, e.g. Gemma 3)."""
        return self.arch in MOE_ARCHES or bool(self.n_experts)

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5

    def rope_base(self, layer: int) -> float:
        if self.layer_types[layer] == "sliding" and self.rope_theta_local is not None:
            return self.rope_theta_local
        return self.rope_theta

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls(**json.loads(Path(path).read_text()))
