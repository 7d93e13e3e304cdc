"""Hydra drafter: sequentially dependent heads. Head k reads the target's last hidden state and the
embeddings of the pending token and of the k tokens drafted before it on the same path, so every tree node
gets its own children (grown with `grow_tree`, one batched call per depth)."""

from __future__ import annotations

import torch

from leaninfer.generate.dyntree import grow_tree, topk_logprobs
from leaninfer.generate.tree import TokenTree
from leaninfer.models.heads import DraftHeads


class HydraProposer:
    def __init__(self, heads: DraftHeads, embed, top_k: int = 4) -> None:
        """embed: the target's token embedding function, ids (1, T) -> (1, T, d)."""
        self.heads, self.embed, self.top_k = heads, embed, top_k
        self.taps = (heads.cfg.feature_layer,)
        self.dtype = heads.target_norm.weight.dtype

    def begin(self, prompt: list[int]) -> None:
        self.feat, self.root = None, None

    def observe(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        self.feat, self.root = feats[-1:], next_tokens[-1]

    def _path(self, nodes, i: int) -> list[int]:
        toks = []
        while i >= 0:
            toks.append(nodes[i].token)
            i = nodes[i].parent
        return toks[::-1]  # root (pending) first

    def propose_tree(self, depth: int, max_nodes: int) -> TokenTree:
        with torch.inference_mode():
            h = self.heads.base(self.feat.to(self.dtype))  # (1, d)
            depth = min(depth, self.heads.cfg.n_heads)

            def heads_at(paths: list[list[int]]):
                k = len(paths[0]) - 1  # head index = tokens drafted after the root
                emb = self.embed(torch.tensor(paths, device=h.device)).to(self.dtype)  # (Q, k+1, d)
                logits = self.heads.hydra(h.expand(len(paths), -1), emb, k)
                return topk_logprobs(logits, self.top_k, self.heads.d2t)

            def expand(nodes, idx):
                return heads_at([self._path(nodes, i) for i in idx])

            ids, logp = heads_at([[self.root]])
            tree, _ = grow_tree(self.root, (ids[0], logp[0]), expand, depth, self.top_k, max_nodes)
        return tree
