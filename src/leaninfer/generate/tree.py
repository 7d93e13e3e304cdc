"""Token trees for speculative decoding (pure functions).

A tree of N nodes: node 0 is the pending token (root, already decided), nodes 1..N-1 are draft tokens whose
`parents[i] < i`. One target forward scores every node with a tree attention mask (a node sees its
ancestors and itself) and positions `base + depth`. Greedy verification walks from the root, following the
child whose token equals the target's argmax; the KV cache then keeps only the root and the accepted path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenTree:
    tokens: torch.Tensor  # (N,) ids; tokens[0] is the root (pending token)
    parents: torch.Tensor  # (N,) parent index; parents[0] = -1

    def __post_init__(self) -> None:
        if self.tokens.shape != self.parents.shape or self.tokens.dim() != 1:
            raise ValueError("tokens and parents must be 1-D tensors of the same length")
        if int(self.parents[0]) != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        idx = torch.arange(1, self.tokens.numel())
        if bool((self.parents[1:] >= idx).any()) or bool((self.parents[1:] < 0).any()):
            raise ValueError("every parent index must precede its child")

    @property
    def size(self) -> int:
        return self.tokens.numel()

    def depths(self) -> torch.Tensor:
        d = torch.zeros(self.size, dtype=torch.long)
        for i in range(1, self.size):
            d[i] = d[int(self.parents[i])] + 1
        return d

    def mask(self) -> torch.Tensor:
        """(N, N) bool: node i attends to node j iff j is i or an ancestor of i."""
        m = torch.eye(self.size, dtype=torch.bool)
        for i in range(1, self.size):
            m[i] |= m[int(self.parents[i])]
        return m

    @classmethod
    def from_paths(cls, root: int, paths: list[list[int]]) -> TokenTree:
        """Merge candidate continuations (lists of ids) into a prefix tree under `root`."""
        tokens, parents, children = [root], [-1], {}
        for path in paths:
            cur = 0
            for t in path:
                key = (cur, int(t))
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(int(t))
                    parents.append(cur)
                cur = children[key]
        return cls(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long))


def verify_tree_greedy(tree: TokenTree, target_logits: torch.Tensor) -> tuple[list[int], int]:
    """target_logits: (N, V) for the tree's nodes. Returns (accepted node indices along the path, excluding the
    root, in order; the target's next token after the path)."""
    best = target_logits.argmax(-1).tolist()
    children: dict[int, list[int]] = {}
    for i in range(1, tree.size):
        children.setdefault(int(tree.parents[i]), []).append(i)
    path, cur = [], 0
    while True:
        want = best[cur]
        nxt = next((c for c in children.get(cur, []) if int(tree.tokens[c]) == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        cur = nxt


def verify_tree_sampling(
    tree: TokenTree, target_probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[list[int], int]:
    """Lossless tree verification for deterministic drafts (q = one-hot per child), by recursive rejection:
    at each node try its children in order, accepting child c with probability p(c) (p renormalised after
    every rejected sibling is zeroed); if every child is rejected, draw the next token from what is left.
    The emitted tokens are distributed exactly as sampling from the target."""
    children: dict[int, list[int]] = {}
    for i in range(1, tree.size):
        children.setdefault(int(tree.parents[i]), []).append(i)
    path, cur = [], 0
    while True:
        p = target_probs[cur].clone()
        chosen = None
        for c in children.get(cur, []):
            t = int(tree.tokens[c])
            total = float(p.sum())
            if total <= 0:
                break
            if float(torch.rand((), generator=generator)) < float(p[t]) / total:
                chosen = c
                break
            p[t] = 0.0
        if chosen is None:
            p = p if float(p.sum()) > 0 else target_probs[cur]
            return path, int(torch.multinomial(p / p.sum(), 1, generator=generator))
        path.append(chosen)
        cur = chosen


def verify_tree_typical(tree: TokenTree, target_logits: torch.Tensor, eps: float = 0.09,
                        delta: float = 0.3) -> tuple[list[int], int]:
    """Medusa's typical acceptance (LOSSY): a child is acceptable when the target gives its token probability
    above min(eps, delta * exp(-entropy)); follow the most probable acceptable child. The token after the
    path is the target's argmax. Outputs can differ from plain decoding; use for speed, not exactness."""
    probs = torch.softmax(target_logits.float(), dim=-1)  # (N, V)
    entropy = -(probs * torch.log(probs.clamp_min(1e-20))).sum(-1)
    threshold = torch.minimum(torch.full_like(entropy, eps), delta * torch.exp(-entropy))
    children: dict[int, list[int]] = {}
    for i in range(1, tree.size):
        children.setdefault(int(tree.parents[i]), []).append(i)
    path, cur = [], 0
    while True:
        ok = [c for c in children.get(cur, []) if float(probs[cur, int(tree.tokens[c])]) > float(threshold[cur])]
        if not ok:
            return path, int(probs[cur].argmax())
        cur = max(ok, key=lambda c: float(probs[cur, int(tree.tokens[c])]))
        path.append(cur)
