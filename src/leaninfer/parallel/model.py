"""A rank's share of a `Decoder`: sharded modules plus the collectives that glue the shards together.

The rank's `Decoder` is an ordinary one built with its per-rank config (`shard.rank_config`) and its weight
slices; then the embedding becomes vocabulary-parallel (one all-reduce), the head vocabulary-parallel (one
all-gather of the logits, so every rank samples from the same full distribution), and every block a `TPBlock`
(two all-reduces, or one for an SPD block). Everything that drives a `Decoder` (prefill, AR decoding, every
speculative method, the KV cache) therefore runs unchanged on every rank.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from leaninfer.models.attention import RMSNorm
from leaninfer.models.config import ModelConfig
from leaninfer.models.quant import quantize_model
from leaninfer.models.transformer import Decoder
from leaninfer.parallel.comm import Comm
from leaninfer.parallel.shard import layout, rank_config, shard_file, shard_state
from leaninfer.parallel.spd import block_forward, norms


class VocabParallelEmbedding(nn.Module):
    """Rows [vocab0, vocab0 + rows) of the embedding; ids outside give zeros; an all-reduce assembles them."""

    def __init__(self, rows: int, dim: int, vocab0: int, comm: Comm) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim), requires_grad=False)
        self.vocab0, self.comm = vocab0, comm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab0
        inside = (local >= 0) & (local < self.weight.shape[0])
        h = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * inside[..., None]  # (B, T, d)
        return self.comm.all_reduce(h)


class VocabParallelHead(nn.Module):
    """This rank's rows of the LM head; the logits of every rank are gathered so all ranks see all V."""

    def __init__(self, proj: nn.Module | None, embed: VocabParallelEmbedding, vocab: int, comm: Comm) -> None:
        super().__init__()
        self.proj, self.vocab, self.comm = proj, vocab, comm
        self._embed = [embed]  # tied head (fp32): read the embedding rows, not a registered second copy

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        local = self.proj(h) if self.proj is not None else F.linear(h, self._embed[0].weight)  # (B, T, V/p)
        return self.comm.all_gather_last(local)[..., : self.vocab]


class ShardedFullNorm(nn.Module):
    """QK-norm over all heads (OLMoE) when the heads are split: the mean square is all-reduced over ranks
    (divided by the replication count of KV heads)."""

    def __init__(self, norm: RMSNorm, full_dim: int, replicas: int, comm: Comm) -> None:
        super().__init__()
        self.norm, self.full_dim, self.replicas, self.comm = norm, full_dim, replicas, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ss = self.comm.all_reduce(xf.pow(2).sum(-1, keepdim=True)) / self.replicas  # (B, T, 1)
        xf = xf * torch.rsqrt(ss / self.full_dim + self.norm.eps)
        return (xf * (self.norm.offset + self.norm.weight.float())).to(x.dtype)


class TPBlock(nn.Module):
    """A rank's block: its attention heads and FFN slice, one all-reduce after each (or one in all: SPD)."""

    def __init__(self, block: nn.Module, comm: Comm, sync_attn: bool = True) -> None:
        super().__init__()
        self.block, self.comm, self.sync_attn = block, comm, sync_attn

    def forward(self, x, cos, sin, mask, cache=None, start=0, routing=None) -> torch.Tensor:
        b = self.block
        post_attn, post_ffn = norms(b)
        return block_forward(x, lambda t: b.attn(b.input_norm(t), cos, sin, mask, cache, start),
                             lambda t: b.ffn(b.ffn_norm(t), routing), self.comm.all_reduce, post_attn, post_ffn,
                             self.sync_attn)


def build_rank_model(cfg: ModelConfig, shard: dict[str, torch.Tensor], comm: Comm, precision: str = "fp32",
                     drop: tuple[int, ...] = ()) -> Decoder:
    """Rank `comm.rank`'s model from its weight shard: build, quantise the shard (`models.quant`), then wire
    the collectives. `drop`: blocks whose attention sync point is dropped (SPD)."""
    lay = layout(cfg, comm.world, comm.rank)
    rcfg = rank_config(cfg, comm.world)
    with torch.device("meta"):
        model = Decoder(rcfg)
        model.embed = VocabParallelEmbedding(lay.vocab_shard, cfg.dim, lay.vocab0, comm)
        if model.lm_head is not None:
            model.lm_head = nn.Linear(cfg.dim, lay.vocab_shard, bias=False)
    model.load_state_dict({k: v.float().contiguous() for k, v in shard.items()}, assign=True, strict=True)
    model.eval()
    quantize_model(model, precision)
    model.lm_head = VocabParallelHead(model.lm_head, model.embed, cfg.vocab_size, comm)
    for i, blk in enumerate(model.layers):
        if cfg.qk_norm == "full" and comm.world > 1:
            blk.attn.q_norm = ShardedFullNorm(blk.attn.q_norm, cfg.n_heads * cfg.head_dim, 1, comm)
            blk.attn.k_norm = ShardedFullNorm(blk.attn.k_norm, cfg.n_kv_heads * cfg.head_dim, lay.kv_replicas, comm)
        model.layers[i] = TPBlock(blk, comm, sync_attn=i not in set(drop))
    return model


def load_rank_model(folder: Path, comm: Comm, precision: str = "fp32", drop: tuple[int, ...] = (),
                    override: dict[str, torch.Tensor] | None = None):
    """(model, tokenizer) of this rank from a model folder: a converted folder is read slice by slice; an HF
    folder is read whole and sliced. `override`: full tensors replacing the checkpoint's (B2B blocks)."""
    from leaninfer.io.store import read_model_config, read_model_dir

    folder = Path(folder)
    cfg, tok = read_model_config(folder)
    if (folder / "leaninfer.json").exists():
        shard = shard_file(folder / "model.safetensors", cfg, comm.world, comm.rank, override)
    else:
        _, state, _ = read_model_dir(folder)
        shard = shard_state({**state, **(override or {})}, cfg, comm.world, comm.rank)
    return build_rank_model(cfg, shard, comm, precision, drop), tok
