"""A separate small draft LM for vanilla speculative sampling (`method="sd"`), built from the target itself.

The draft is an ordinary decoder of the target's family with a few of the target's layers and a reduced
vocabulary: it reads and predicts only the `Vd` most frequent target tokens (`d2t`), plus one extra input id
("other") that stands for every target token outside that vocabulary. Its input embeddings and output rows
start as the target's tied rows for those tokens, so a fresh draft already lives in the target's space;
distillation (`leaninfer draft train --kind draft-lm`) then teaches the short stack to imitate the full one.

To the decoding loop it looks like a target-vocabulary LM: `forward` maps target ids in and returns
target-vocabulary logits (-inf outside the draft vocabulary, so its distribution q is exact for speculative
sampling), while reading ~1/8 of the target's weights per token (no 262k-row output matrix).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from leaninfer.models.config import ModelConfig
from leaninfer.models.transformer import Decoder, ForwardOut


@dataclass
class DraftLMConfig:
    body: ModelConfig | dict  # the small decoder; its vocab_size is draft_vocab + 1 (the last id = "other")
    target_vocab: int
    source_layers: list[int] = field(default_factory=list)  # target layers it was initialised from

    def __post_init__(self) -> None:
        if isinstance(self.body, dict):
            self.body = ModelConfig(**self.body)
        if self.body.tie_embeddings:
            raise ValueError("the draft LM keeps a separate output matrix (it is quantised, the embedding is not)")
        if not 1 < self.body.vocab_size <= self.target_vocab + 1:
            raise ValueError(f"draft vocabulary {self.body.vocab_size - 1} must be in (0, {self.target_vocab}]")

    @property
    def draft_vocab(self) -> int:
        return self.body.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)


class DraftLM(nn.Module):
    def __init__(self, cfg: DraftLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = Decoder(cfg.body)
        vd = cfg.draft_vocab
        self.register_buffer("d2t", torch.arange(vd))
        t2d = torch.full((cfg.target_vocab,), vd, dtype=torch.long)
        t2d[:vd] = torch.arange(vd)
        self.register_buffer("t2d", t2d)

    @property
    def vocab_size(self) -> int:
        """The target vocabulary it speaks (what `method="sd"` checks)."""
        return self.cfg.target_vocab

    def set_vocab(self, d2t: torch.Tensor) -> None:
        if d2t.numel() != self.cfg.draft_vocab:
            raise ValueError(f"{d2t.numel()} ids for a draft vocabulary of {self.cfg.draft_vocab}")
        self.d2t.copy_(d2t)
        self.t2d.fill_(self.cfg.draft_vocab)
        self.t2d[d2t] = torch.arange(d2t.numel(), device=d2t.device)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None):
        return self.body.new_cache(batch, max_len, dtype)

    def hidden(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T) target ids -> (B, T, dim) hidden states after the last draft layer (before the norm)."""
        return self.body(self.t2d[tokens], cache=cache, logits=False).hidden

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., Vd) draft-vocabulary logits (the "other" id is never predicted)."""
        return self.body.head(h)[..., : self.cfg.draft_vocab]

    def forward(self, tokens: torch.Tensor, cache=None, last_only: bool = False) -> ForwardOut:
        h = self.hidden(tokens, cache)
        small = self.logits(h[:, -1:] if last_only else h)
        full = small.new_full((*small.shape[:-1], self.cfg.target_vocab), float("-inf"))
        full[..., self.d2t] = small
        return ForwardOut(hidden=h, logits=full)


def build_draft_lm(config: dict) -> DraftLM:
    return DraftLM(DraftLMConfig(**config))


def init_draft_lm(target: Decoder, d2t: torch.Tensor, layers: list[int]) -> DraftLM:
    """A draft LM made of the target `layers` (in order), its final norm and its rows for the draft vocabulary
    `d2t` (input and output); the "other" input row is the mean of those rows. Target weights must be
    floating point (load the target at fp32/bf16, not int8)."""
    tc = target.cfg
    if not layers or any(not 0 <= i < tc.n_layers for i in layers):
        raise ValueError(f"draft layers {layers} must lie in 0..{tc.n_layers - 1}")
    body = replace(tc, n_layers=len(layers), layer_types=[tc.layer_types[i] for i in layers],
                   vocab_size=d2t.numel() + 1, tie_embeddings=False)
    draft = DraftLM(DraftLMConfig(body, tc.vocab_size, list(layers)))
    with torch.no_grad():
        for j, i in enumerate(layers):
            draft.body.layers[j].load_state_dict(target.layers[i].state_dict())
        draft.body.norm.load_state_dict(target.norm.state_dict())
        rows = target.embed.weight.detach()[d2t.to(target.embed.weight.device)].float().cpu()
        out_rows = target.head_weight().detach()[d2t.to(target.embed.weight.device)].float().cpu()
        draft.body.embed.weight.copy_(torch.cat([rows, rows.mean(0, keepdim=True)]))
        draft.body.lm_head.weight.copy_(torch.cat([out_rows, out_rows.mean(0, keepdim=True)]))
    draft.set_vocab(d2t.cpu())
    return draft
