"""EAGLE-3-style drafter: a one-layer draft over the target's fused low/middle/high features, drafting a
dynamic tree over a reduced vocabulary. The target's features arrive through `observe` after every
verification (and after prefill); the draft extends its own KV cache with them before drafting."""

from __future__ import annotations

import torch

from leaninfer.generate.dyntree import Node, grow_tree, topk_logprobs
from leaninfer.generate.tree import TokenTree
from leaninfer.models.eagle import EagleDraft


class EagleProposer:
    def __init__(self, draft: EagleDraft, embed, max_len: int, top_k: int = 4) -> None:
        """embed: the target's token embedding function, ids (1, T) -> (1, T, d)."""
        self.draft, self.embed, self.max_len, self.top_k = draft, embed, max_len, top_k
        self.taps = tuple(draft.cfg.feature_layers)
        self.dtype = draft.norm.weight.dtype  # activations stay fp32 (linears may be quantised)

    def begin(self, prompt: list[int]) -> None:
        self.cache = self.draft.new_cache(self.max_len)
        self.ctx = 0  # draft cache slots holding context pairs (token t+1, target feature t)
        self.queue: list[tuple[torch.Tensor, list[int]]] = []
        self.pos = 0  # position of the next context pair
        self.root_h: torch.Tensor | None = None

    def observe(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        """feats: (n, n_feat * d) target features of n consecutive positions; next_tokens: the n tokens that
        follow them (the last one is the pending token, the root of the next tree)."""
        self.queue.append((feats, list(next_tokens)))

    def _catch_up(self) -> None:
        self.cache.truncate(self.ctx)
        feats = torch.cat([f for f, _ in self.queue]).to(self.dtype)[None]  # (1, n, n_feat * d)
        toks = [t for _, ts in self.queue for t in ts]
        self.queue = []
        device = feats.device
        emb = self.embed(torch.tensor([toks], device=device)).to(self.dtype)
        pos = torch.arange(self.pos, self.pos + len(toks), device=device)[None]
        h = self.draft.extend(emb, feats, pos, self.cache)
        self.ctx, self.pos = self.cache.length, self.pos + len(toks)
        self.root_h, self.root_token = h[:, -1:], toks[-1]

    def propose_tree(self, depth: int, max_nodes: int) -> TokenTree:
        with torch.inference_mode():
            self._catch_up()
            root_pos = self.pos  # position of the pending token
            first = topk_logprobs(self.draft.logits(self.root_h)[0], self.top_k, self.draft.d2t)
            first = (first[0][0], first[1][0])

            def expand(nodes: list[Node], idx: list[int]):
                prev = torch.cat([nodes[nodes[i].parent].state[0] for i in idx], dim=1)  # (1, Q, d)
                emb = self.embed(torch.tensor([[nodes[i].token for i in idx]], device=prev.device)).to(self.dtype)
                pos = torch.tensor([[root_pos - 1 + nodes[i].depth for i in idx]], device=prev.device)
                start = self.cache.length
                mask = torch.zeros(len(idx), start + len(idx), dtype=torch.bool, device=prev.device)
                mask[:, : self.ctx] = True
                for q, i in enumerate(idx):
                    mask[q, start + q] = True
                    a = nodes[i].parent
                    while a > 0:  # draft-tree ancestors (the root's pair is already context)
                        mask[q, nodes[a].state[1]] = True
                        a = nodes[a].parent
                h = self.draft.step(emb, prev, pos, self.cache, mask)  # (1, Q, d)
                for q, i in enumerate(idx):
                    nodes[i].state = (h[:, q : q + 1], start + q)
                return topk_logprobs(self.draft.logits(h)[0], self.top_k, self.draft.d2t)

            tree, _ = grow_tree(self.root_token, first, expand, depth, self.top_k, max_nodes,
                                 root_state=(self.root_h, None))
        return tree
