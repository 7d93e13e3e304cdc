"""Multi-token prediction with mask tokens and gated LoRA ("Your LLM Knows the Future", arXiv 2507.11851).

`MTPAdapter` holds everything that is trained; the target `Decoder` stays frozen and unedited:
- `mask_embed` (K, dim): K learnable input rows, placed where a block carries mask slots;
- gated LoRA on every attention and MLP projection (q/k/v/o, gate/up/down; the fused `qkv` / `gate_up` of
  quantised models get the concatenation of the same parts): `y = W x + 1(t) * scale * B A x` where the gate
  1(t) is 1 at mask rows and 0 elsewhere. At gate-0 rows the LoRA is not added at all (`index_add` on the mask
  rows only), so those rows are bit-identical to the base model;
- a sampler head: a two-layer MLP over [embedding of the previous chosen token; mask latent] added to the
  (normalised) mask latent, read out by the shared head restricted to a reduced draft vocabulary.

`adapter.attached(model)` patches the decoder's linears from outside for the duration of a `with` block and
restores them after; `adapter.gate(rows)` sets which flat rows (B*T) of the next forwards are mask rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models import attention as attention_mod
from leaninfer.models.attention import Attention
from leaninfer.models.quant import INT8_PACK_CHUNKED_ROWS, QuantLinear
from leaninfer.models.transformer import MLP, Decoder

SLOTS = ("q", "k", "v", "o", "gate", "up", "down")
# (module type, attribute) -> LoRA parts whose outputs it concatenates, for plain and fused projections
_ATTRS = {"q_proj": ("q",), "k_proj": ("k",), "v_proj": ("v",), "qkv": ("q", "k", "v"), "o_proj": ("o",),
          "gate_proj": ("gate",), "up_proj": ("up",), "gate_up": ("gate", "up"), "down_proj": ("down",)}


@dataclass
class MTPConfig:
    dim: int
    n_layers: int
    q_dim: int  # n_heads * head_dim
    kv_dim: int  # n_kv_heads * head_dim
    hidden: int  # MLP intermediate size
    n_masks: int = 8
    rank: int = 8
    alpha: float = 16.0
    draft_vocab: int = 16384
    sampler: bool = True

    def __post_init__(self) -> None:
        if self.n_masks < 1 or self.rank < 1 or self.draft_vocab < 2:
            raise ValueError("n_masks, rank must be >= 1 and draft_vocab >= 2")

    @classmethod
    def for_model(cls, cfg, **kw) -> MTPConfig:
        return cls(cfg.dim, cfg.n_layers, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim,
                   cfg.intermediate_size, **kw)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each LoRA slot."""
        d = self.dim
        return {"q": (d, self.q_dim), "k": (d, self.kv_dim), "v": (d, self.kv_dim), "o": (self.q_dim, d),
                "gate": (d, self.hidden), "up": (d, self.hidden), "down": (self.hidden, d)}

    def to_dict(self) -> dict:
        return asdict(self)


class LoRA(nn.Module):
    """x (N, in) -> B A x (N, out); B starts at zero so a fresh adapter changes nothing."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, n_in) / math.sqrt(n_in))
        self.B = nn.Parameter(torch.zeros(n_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))


class Gate:
    """Which flat rows (B*T) of the current forward are mask rows: None = none (pure base model), a (n,) long
    tensor of row indices, or "all" (plain, ungated LoRA: the ablation that drifts the base model)."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | str | None = None


class GatedLinear(nn.Module):
    """A frozen base linear plus gated LoRA parts (their outputs concatenated, for fused projections)."""

    def __init__(self, base: nn.Module, parts: list[LoRA], scale: float, gate: Gate) -> None:
        super().__init__()
        self.base, self.parts, self.scale, self.gate = base, parts, scale, gate

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        # quantised kernels change with the row count: keep every row on the path a short verification block
        # takes (<= 16 rows), so non-mask rows compute exactly what plain decoding computes
        n = x.numel() // x.shape[-1]
        if not isinstance(self.base, QuantLinear) or n <= INT8_PACK_CHUNKED_ROWS or self.gate.rows is None:
            return self.base(x)
        flat = x.reshape(n, x.shape[-1])
        y = torch.cat([self.base(c) for c in flat.split(INT8_PACK_CHUNKED_ROWS)])
        return y.view(*x.shape[:-1], y.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        rows = self.gate.rows
        if rows is None:
            return y
        shape = y.shape
        xf, yf = x.reshape(-1, x.shape[-1]), y.reshape(-1, shape[-1])
        if isinstance(rows, str):  # plain LoRA on every row
            delta = torch.cat([p(xf.float()) for p in self.parts], -1) * self.scale
            return (yf + delta.to(yf.dtype)).view(shape)
        if rows.numel() == 0:
            return y
        delta = torch.cat([p(xf[rows].float()) for p in self.parts], -1) * self.scale  # (n, out)
        return yf.index_add(0, rows, delta.to(yf.dtype)).view(shape)


class Sampler(nn.Module):
    """u = z + fc2(silu(fc1([norm(e_prev); norm(z)]))): a refinement of the normalised mask latent z conditioned on the
    embedding of the previously chosen token; fc2 starts at zero (u = z: the base head's prediction)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_e, self.norm_z = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1 = nn.Linear(2 * dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, prev_emb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.norm_e(prev_emb), self.norm_z(z)], -1)
        return z + self.fc2(F.silu(self.fc1(x)))


class MTPAdapter(nn.Module):
    def __init__(self, cfg: MTPConfig, d2t: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_embed = nn.Parameter(torch.randn(cfg.n_masks, cfg.dim) * 0.02)
        shapes = cfg.shapes()
        self.loras = nn.ModuleDict({f"{i}_{s}": LoRA(*shapes[s], cfg.rank) for i in range(cfg.n_layers) for s in SLOTS})
        self.sampler = Sampler(cfg.dim) if cfg.sampler else None
        d2t = torch.arange(cfg.draft_vocab) if d2t is None else d2t.long()
        if d2t.numel() != cfg.draft_vocab:
            raise ValueError(f"d2t has {d2t.numel()} ids, config says {cfg.draft_vocab}")
        self.register_buffer("d2t", d2t)
        self.gate_state = Gate()
        self._head: dict[int, torch.Tensor] = {}

    @property
    def scale(self) -> float:
        return self.cfg.alpha / self.cfg.rank

    # --- patching ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self, model: Decoder, max_rows: int = 64, lossless: bool = True):
        """Wrap every attention / MLP projection of `model` while the block runs; restore them after. Inside,
        row-invariant attention (quantised models) also covers blocks of up to `max_rows` new tokens, so the
        non-mask rows of a mask-carrying block compute what a short verification block computes. Blocks that
        verify drafts (`lossless`) are refused beyond that; evaluation blocks (perplexity) are not."""
        if model.cfg.n_layers != self.cfg.n_layers or model.cfg.dim != self.cfg.dim:
            raise ValueError("this MTP adapter was trained for another model shape")
        swapped = []
        for i, layer in enumerate(model.layers):
            for mod in (layer.attn, layer.ffn):
                if not isinstance(mod, Attention | MLP):
                    raise ValueError("MTP adapters support dense (non-MoE) decoders only")
                for attr, slots in _ATTRS.items():
                    base = mod.__dict__["_modules"].get(attr)
                    if base is None:
                        continue
                    parts = [self.loras[f"{i}_{s}"] for s in slots]
                    mod._modules[attr] = GatedLinear(base, parts, self.scale, self.gate_state)
                    swapped.append((mod, attr, base))
        if lossless:
            attention_mod.check_exact_block(max_rows, "an MTP block")  # attention is exact up to EXACT_MAX_T rows
        try:
            yield self
        finally:
            for mod, attr, base in swapped:
                mod._modules[attr] = base
            self.gate_state.rows = None

    def gate(self, rows: torch.Tensor | str | None) -> None:
        self.gate_state.rows = rows

    # --- inputs and outputs --------------------------------------------------------------------
    def embed(self, model: Decoder, tokens: torch.Tensor, mask_slot: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) ids (any id at mask rows); mask_slot (B, T): -1 for a real token, j in [0, K) for the
        j-th mask. Returns (B, T, dim) input hidden states; real rows are exactly the model's embeddings."""
        h = model.embed_tokens(tokens)
        m = self.mask_embed.to(h.dtype)[mask_slot.clamp_min(0)]  # (B, T, dim)
        return torch.where((mask_slot >= 0)[..., None], m, h)

    def head_rows(self, model: Decoder, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(Vd, dim) rows of the model's output matrix for the draft vocabulary (cached per model)."""
        key = (id(model), dtype)
        if key not in self._head:
            if model.lm_head is None or model.cfg.tie_embeddings:
                w = model.embed.weight
            elif isinstance(model.lm_head, QuantLinear):
                w = model.lm_head.dequantized()
            else:
                w = model.lm_head.weight
            self._head[key] = w.detach()[self.d2t.to(w.device)].to(dtype)
        return self._head[key]

    def latent(self, model: Decoder, hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm latent of last-layer hidden states (..., dim), fp32: what the head reads."""
        return model.norm(hidden).float()

    def draft_logits(self, model: Decoder, z: torch.Tensor) -> torch.Tensor:
        """(..., dim) normalised latents -> (..., Vd) logits over the draft vocabulary (base head)."""
        w = self.head_rows(model, torch.bfloat16 if not torch.is_grad_enabled() else torch.float32)
        return F.linear(z.to(w.dtype), w).float()

    def sampler_logits(self, model: Decoder, prev_tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """prev_tokens (...,) ids, z (..., dim) normalised mask latents -> (..., Vd) sampler logits."""
        if self.sampler is None:
            return self.draft_logits(model, z)
        e = model.embed_tokens(prev_tokens).float()
        return self.draft_logits(model, self.sampler(e, z))


def adapter_state(adapter: MTPAdapter) -> dict[str, torch.Tensor]:
    """The trained tensors (fp16 to keep the shipped asset small; d2t as int32)."""
    out = {k: v.detach().cpu().to(torch.float16) for k, v in adapter.state_dict().items() if k != "d2t"}
    out["d2t"] = adapter.d2t.cpu().to(torch.int32)
    return out


def load_adapter_state(cfg: MTPConfig, state: dict[str, torch.Tensor]) -> MTPAdapter:
    adapter = MTPAdapter(cfg, state["d2t"].long())
    adapter.load_state_dict({k: (v.float() if k != "d2t" else v.long()) for k, v in state.items()}, strict=True)
    return adapter.eval().requires_grad_(False)


ASSET = "adapter.safetensors"


def asset_dir() -> Path:
    """The package asset folder with the adapter trained for the default model."""
    return Path(__file__).resolve().parent.parent / "assets" / "mtp"


def user_dir(source: str | Path) -> Path:
    """Where `leaninfer draft train --kind mtp` saves the adapter of a target model (user cache)."""
    from leaninfer.io.drafts import target_key
    from leaninfer.paths import cache_dir

    return cache_dir("drafts", target_key(source), "mtp")


def save_adapter(folder: Path, adapter: MTPAdapter, manifest: dict) -> Path:
    """adapter.safetensors (fp16 tensors, no pickle) + manifest.json (config, target, training record, sha256)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter_state(adapter).items()}, str(folder / ASSET))
    digest = hashlib.sha256((folder / ASSET).read_bytes()).hexdigest()
    meta = {**manifest, "config": adapter.cfg.to_dict(), "file": ASSET, "sha256": digest,
            "bytes": (folder / ASSET).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_adapter(folder: Path) -> MTPAdapter:
    """Load and checksum-verify a saved adapter."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "manifest.json").read_text())
    data = (folder / meta["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"checksum mismatch for {folder / meta['file']}")
    return load_adapter_state(MTPConfig(**meta["config"]), load_file(str(folder / meta["file"])))


def _model_name(folder_name: str) -> str:
    """A converted model's folder name without its cache-key suffix (the key scheme may change between versions)."""
    return folder_name.rsplit("-", 1)[0]


def find_adapter(source: str | Path, model_cfg) -> MTPAdapter:
    """The user-cache adapter of this target if trained, else the shipped asset when it was trained for a
    model of this name and shape."""
    for folder in (user_dir(source), asset_dir()):
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            continue
        meta = json.loads(manifest.read_text())
        target = meta.get("target", {})
        same = all(target.get(f) == getattr(model_cfg, f) for f in ("vocab_size", "dim", "n_layers"))
        shipped_for_it = _model_name(target.get("name", "")) == _model_name(Path(str(source)).name)
        if same and (folder != asset_dir() or shipped_for_it):
            return load_adapter(folder)
    raise FileNotFoundError(f"no MTP adapter for {source}: train one with `leaninfer draft train --kind mtp`")
