"""Medusa drafter: independent heads on the target's last hidden state; the tree is the best-scoring part of
the product of the heads' top-k lists (joint draft log-probability), grown with `grow_tree`."""

from __future__ import annotations

import torch

from leaninfer.generate.dyntree import grow_tree, topk_logprobs
from leaninfer.generate.tree import TokenTree
from leaninfer.models.heads import DraftHeads


class MedusaProposer:
    def __init__(self, heads: DraftHeads, top_k: int = 4) -> None:
        self.heads, self.top_k = heads, top_k
        self.taps = (heads.cfg.feature_layer,)

    def begin(self, prompt: list[int]) -> None:
        self.feat, self.root = None, None

    def observe(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        self.feat, self.root = feats[-1:], next_tokens[-1]  # only the last verified position matters

    def propose_tree(self, depth: int, max_nodes: int) -> TokenTree:
        with torch.inference_mode():
            h = self.heads.base(self.feat.to(self.heads.target_norm.weight.dtype))  # (1, d)
            depth = min(depth, self.heads.cfg.n_heads)
            # the target's own head gave the root (x_{t+1}); head k guesses depth k + 1 (x_{t+2+k})
            per_depth = [topk_logprobs(self.heads.medusa(h, k), self.top_k, self.heads.d2t) for k in range(depth)]

            def expand(nodes, idx):
                ids, logp = per_depth[nodes[idx[0]].depth]  # every frontier node sits at the same depth
                return ids.expand(len(idx), -1), logp.expand(len(idx), -1)

            first = (per_depth[0][0][0], per_depth[0][1][0])
            tree, _ = grow_tree(self.root, first, expand, depth, self.top_k, max_nodes)
        return tree
