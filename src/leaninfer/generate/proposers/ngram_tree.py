"""Prompt-lookup n-gram drafter that proposes a *tree*: the continuations of up to `branches` distinct earlier
matches of the context's tail, merged into a prefix tree."""

from __future__ import annotations

from leaninfer.generate.tree import TokenTree


class NgramTreeProposer:
    def __init__(self, max_ngram: int = 3, branches: int = 3) -> None:
        if max_ngram < 1 or branches < 1:
            raise ValueError("max_ngram and branches must be >= 1")
        self.max_ngram, self.branches = max_ngram, branches

    def begin(self, prompt: list[int]) -> None:
        pass

    def propose_tree(self, context: list[int], root: int, depth: int) -> TokenTree:
        """Candidate continuations of context + [root], longest-matching n-grams first, latest match first."""
        ctx = context + [root]
        L, paths, seen = len(ctx), [], set()
        for n in range(min(self.max_ngram, L - 1), 0, -1):
            tail = ctx[L - n :]
            for start in range(L - n - 1, -1, -1):
                if ctx[start : start + n] == tail:
                    follow = tuple(ctx[start + n : start + n + depth])
                    if follow and follow not in seen:
                        seen.add(follow)
                        paths.append(list(follow))
                        if len(paths) == self.branches:
                            return TokenTree.from_paths(root, paths)
        return TokenTree.from_paths(root, paths)

    def accept(self, emitted: list[int], n_accepted: int) -> None:
        pass
