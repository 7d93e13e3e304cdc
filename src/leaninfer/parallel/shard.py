"""Tensor-parallel sharding as pure functions: per-rank configs and which slice of each weight a rank holds.

Megatron layout: q/k/v and gate/up are column-parallel (output rows split by head / by intermediate unit),
o and down are row-parallel (input columns split the same way; their partial outputs are summed by one
all-reduce), the embedding and the LM head are vocabulary-parallel (rows split by token id). Norms, routers and
the shared-expert gate are replicated.

KV heads: rank r holds query heads [r*H/p, (r+1)*H/p). When n_kv_heads >= p each rank holds its n_kv_heads/p
KV heads; when n_kv_heads < p (Gemma 3 270M: 4 query heads, 1 KV head) the KV head a rank's query heads read
is *replicated* on every rank that needs it (p / n_kv_heads copies of each), so no rank ever reads another
rank's keys. A rank's query heads must then fall inside one KV group.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from leaninfer.models.config import ModelConfig

Ranges = list[tuple[int, int]]  # half-open index ranges along one dim, concatenated in order


@dataclass(frozen=True)
class RankLayout:
    """What rank `rank` of `world` holds. Heads and KV heads are global indices of the first one held."""

    world: int
    rank: int
    heads: int  # query heads on this rank
    head0: int
    kv_heads: int  # KV heads on this rank
    kv0: int
    kv_replicas: int  # how many ranks hold each KV head (1 = no replication)
    vocab0: int
    vocab1: int  # this rank's token ids are [vocab0, vocab1); shards are padded to `vocab_shard` rows
    vocab_shard: int


def layout(cfg: ModelConfig, world: int, rank: int) -> RankLayout:
    """The per-rank layout; raises ValueError when the model cannot be split `world` ways."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    if H % world:
        raise ValueError(f"{H} query heads cannot be split over {world} ranks (query heads are never replicated)")
    hq = H // world
    if Hkv >= world:
        if Hkv % world:
            raise ValueError(f"{Hkv} KV heads cannot be split over {world} ranks")
        kv, kv0, reps = Hkv // world, rank * (Hkv // world), 1
    else:
        group = H // Hkv
        if world % Hkv or group % hq:
            raise ValueError(f"{world} ranks with {hq} query heads each do not fall inside KV groups of {group}")
        kv, kv0, reps = 1, (rank * hq) // group, world // Hkv
    for name in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if getattr(cfg, name) % world:
            raise ValueError(f"{name} = {getattr(cfg, name)} is not a multiple of {world}")
    vs = -(-cfg.vocab_size // world)
    v0, v1 = min(rank * vs, cfg.vocab_size), min((rank + 1) * vs, cfg.vocab_size)
    return RankLayout(world, rank, hq, rank * hq, kv, kv0, reps, v0, v1, vs)


def rank_config(cfg: ModelConfig, world: int) -> ModelConfig:
    """The config a rank's modules are built with: its heads, KV heads and intermediate sizes (the vocabulary
    stays global: token ids are validated against it; the embedding and head are swapped for sharded ones)."""
    lay = layout(cfg, world, 0)
    return dataclasses.replace(
        cfg, n_heads=lay.heads, n_kv_heads=lay.kv_heads, intermediate_size=cfg.intermediate_size // world,
        moe_intermediate_size=cfg.moe_intermediate_size // world,
        shared_expert_intermediate_size=cfg.shared_expert_intermediate_size // world,
        layer_types=list(cfg.layer_types), eos_token_ids=list(cfg.eos_token_ids))


def _part(size: int, world: int, rank: int) -> tuple[int, int]:
    n = size // world
    return rank * n, (rank + 1) * n


def shard_spec(name: str, shape: tuple[int, ...], cfg: ModelConfig, lay: RankLayout) -> tuple[int, Ranges] | None:
    """Which slice of the global tensor `name` (our parameter names) rank `lay.rank` holds: (dim, ranges) or
    None when it is replicated."""
    hd, p, r = cfg.head_dim, lay.world, lay.rank
    q = [(lay.head0 * hd, (lay.head0 + lay.heads) * hd)]
    kv = [(lay.kv0 * hd, (lay.kv0 + lay.kv_heads) * hd)]
    leaf = re.sub(r"^layers\.\d+\.", "", name)
    if name in ("embed.weight", "lm_head.weight"):
        return 0, [(lay.vocab0, lay.vocab1)]
    full = cfg.qk_norm == "full"  # QK-norm over all heads: its weight is split like the heads
    if re.fullmatch(r"attn\.q_proj\.(weight|bias)", leaf) or (leaf == "attn.q_norm.weight" and full):
        return 0, q
    if re.fullmatch(r"attn\.[kv]_proj\.(weight|bias)", leaf) or (leaf == "attn.k_norm.weight" and full):
        return 0, kv
    if leaf == "attn.o_proj.weight":
        return 1, q
    if re.fullmatch(r"ffn\.(shared\.)?(gate|up)_proj\.weight", leaf):
        return 0, [_part(shape[0], p, r)]
    if re.fullmatch(r"ffn\.(shared\.)?down_proj\.weight", leaf):
        return 1, [_part(shape[1], p, r)]
    if leaf == "ffn.gate_up":  # (E, 2I, D): gate rows then up rows
        half = shape[1] // 2
        a, b = _part(half, p, r)
        return 1, [(a, b), (half + a, half + b)]
    if leaf == "ffn.down":  # (E, D, I)
        return 2, [_part(shape[2], p, r)]
    return None


def take(get: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...], spec: tuple[int, Ranges] | None,
         pad_to: int | None = None) -> torch.Tensor:
    """Assemble a shard with `get(dim, start, stop)` (a slice of the global tensor; dim -1 = whole tensor),
    zero-padding dim 0 to `pad_to` rows (uneven vocabulary splits)."""
    if spec is None:
        return get(-1, 0, 0)
    dim, ranges = spec
    parts = [get(dim, a, b) for a, b in ranges]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
    if pad_to is not None and out.shape[0] < pad_to:
        out = torch.cat([out, out.new_zeros(pad_to - out.shape[0], *out.shape[1:])])
    return out


def shard_state(state: dict[str, torch.Tensor], cfg: ModelConfig, world: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slice of a full state dict (views/slices: differentiable, no copies where possible)."""
    lay = layout(cfg, world, rank)
    out = {}
    for name, t in state.items():
        def get(dim, a, b, t=t):
            return t if dim < 0 else t.narrow(dim, a, b - a)

        pad = lay.vocab_shard if name in ("embed.weight", "lm_head.weight") else None
        out[name] = take(get, tuple(t.shape), shard_spec(name, tuple(t.shape), cfg, lay), pad)
    return out


def shard_file(path, cfg: ModelConfig, world: int, rank: int, override: dict[str, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
    """Rank `rank`'s shard read lazily from a safetensors file: only its slices are read, so a rank never holds
    the full 262k-row embedding. `override` replaces full tensors first (B2B-distilled blocks)."""
    from safetensors import safe_open

    lay = layout(cfg, world, rank)
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            if override and name in override:
                out.update(shard_state({name: override[name]}, cfg, world, rank))
                continue
            sl = f.get_slice(name)
            shape = tuple(sl.get_shape())

            def get(dim, a, b, sl=sl, name=name, n=len(shape)):
                if dim < 0:
                    return f.get_tensor(name)
                index = tuple(slice(a, b) if d == dim else slice(None) for d in range(n))
                return sl[index]

            pad = lay.vocab_shard if name in ("embed.weight", "lm_head.weight") else None
            out[name] = take(get, shape, shard_spec(name, shape, cfg, lay), pad)
    return out
