"""Dynamic draft trees (EAGLE-2 style), shared by the feature-level drafters (EAGLE, Hydra, Medusa).

Drafting grows a tree from the root (the pending token): at each depth the `top_k` frontier nodes with the
highest cumulative draft log-probability are expanded in one batched call, each proposing its `top_k` most
likely children. Finally the `max_nodes - 1` best nodes overall (by cumulative log-probability, so a node never
outranks its parent) form the tree the target verifies. Confident drafts give deep, thin trees; uncertain ones
give wide, shallow trees, for the same verification budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from leaninfer.generate.tree import TokenTree


@dataclass
class Node:
    token: int  # target vocabulary id
    parent: int  # index in the node list (-1 for the root)
    depth: int
    score: float  # cumulative draft log-probability
    state: object = None  # drafter-specific (hidden state, cache slot) once expanded


# expand(nodes, indices) -> (top-k target ids (Q, k), their log-probs (Q, k)); may set node.state
Expand = Callable[[list[Node], list[int]], tuple[torch.Tensor, torch.Tensor]]


def grow_tree(root: int, first: tuple[torch.Tensor, torch.Tensor], expand: Expand, depth: int, top_k: int,
              max_nodes: int, root_state: object = None) -> tuple[TokenTree, list[Node]]:
    """Grow a draft tree of at most `max_nodes` nodes (root included) and `depth` draft levels.

    first: (ids (k,), log-probs (k,)) for the root's children; root_state: the drafter's state of the root.
    Returns the tree (nodes ordered by depth) and
    the kept nodes in the same order."""
    nodes = [Node(root, -1, 0, 0.0, root_state)]
    if depth < 1 or max_nodes < 2:
        return TokenTree(torch.tensor([root]), torch.tensor([-1])), nodes
    frontier = _add_children(nodes, [0], *first, top_k)
    for _ in range(1, depth):
        frontier = sorted(frontier, key=lambda i: -nodes[i].score)[:top_k]
        ids, logp = expand(nodes, frontier)
        frontier = _add_children(nodes, frontier, ids, logp, top_k)
    return _select(nodes, max_nodes)


def _add_children(nodes: list[Node], parents: list[int], ids: torch.Tensor, logp: torch.Tensor,
                  top_k: int) -> list[int]:
    ids, logp = ids.reshape(len(parents), -1)[:, :top_k], logp.reshape(len(parents), -1)[:, :top_k]
    new = []
    for row, p in enumerate(parents):
        for t, lp in zip(ids[row].tolist(), logp[row].tolist()):
            nodes.append(Node(int(t), p, nodes[p].depth + 1, nodes[p].score + float(lp)))
            new.append(len(nodes) - 1)
    return new


def _select(nodes: list[Node], max_nodes: int) -> tuple[TokenTree, list[Node]]:
    """Keep the best max_nodes - 1 non-root nodes (ties: shallower first), then renumber by depth."""
    ranked = sorted(range(1, len(nodes)), key=lambda i: (-nodes[i].score, nodes[i].depth, i))
    keep = {0}
    for i in ranked:
        if len(keep) == max_nodes:
            break
        if nodes[i].parent in keep:
            keep.add(i)
    order = sorted(keep, key=lambda i: (nodes[i].depth, i))
    new_index = {old: new for new, old in enumerate(order)}
    tokens = torch.tensor([nodes[i].token for i in order], dtype=torch.long)
    parents = torch.tensor([-1] + [new_index[nodes[i].parent] for i in order[1:]], dtype=torch.long)
    return TokenTree(tokens, parents), [nodes[i] for i in order]


def topk_logprobs(logits: torch.Tensor, k: int, d2t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, V) draft logits -> top-k target ids (Q, k) and log-probs (Q, k); `d2t` maps draft ids to target."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    val, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return (idx if d2t is None else d2t[idx]), val
