"""`ChatSession`: serve a long conversation from episodic compressed caches with bounded memory.

Turns are appended to the cache of the episode they are nearest to (cosine of the turn's sentence embedding to
the episode centroid), with block-wise prefill and eviction to the per-episode budget; a turn that fits no
episode (similarity below `tau`) opens a new one while fewer than `n_episodes` exist. Questions are answered
from the nearest episode's cache. Every token keeps its position in the whole conversation. The memory held is
at most n_episodes x (budget + block) entries per global layer and (window + block) per sliding layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from leaninfer.cache.answer import greedy_answer
from leaninfer.cache.budget import uniform_budgets
from leaninfer.cache.compressed import CompressedKVCache
from leaninfer.cache.episodic import (
    EpiConfig,
    EpisodicPress,
    SentenceEmbedder,
    conversation_episodes,
    episode_cache,
    episode_press,
    route,
)
from leaninfer.cache.prefill import block_prefill

QUESTION = "Answer the question about the conversation above in a few words.\nQuestion: {q}"


@dataclass
class SessionConfig:
    budget: int | None = None  # tokens per head per global layer and episode; None: history / ratio at load
    ratio: float = 4.0
    block: int = 256
    n_episodes: int = 4
    tau: float = 0.2  # a turn less similar than this to every episode opens a new episode
    recent: int = 8  # utterances of an episode that form its scoring prompt for new turns
    max_new_tokens: int = 24
    sinks: int = 64  # the first N tokens of the conversation (its prompt header) are never evicted
    epi: EpiConfig = field(default_factory=EpiConfig)

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError("budget must be >= 1")
        if self.ratio < 1 or self.block < 1 or self.n_episodes < 1 or self.recent < 1:
            raise ValueError("ratio, block, n_episodes and recent must be >= 1")
        if self.sinks < 0:
            raise ValueError("sinks must be >= 0")


@dataclass
class _Episode:
    centroid: np.ndarray
    cache: CompressedKVCache
    utterances: list[str] = field(default_factory=list)
    count: int = 0


class ChatSession:
    def __init__(self, engine, cfg: SessionConfig | None = None, embedder=None) -> None:
        self.engine, self.cfg = engine, cfg or SessionConfig()
        self.model, self.tok = engine.model, engine.tokenizer
        self.embedder = embedder or SentenceEmbedder()
        self.chat = self.tok.token_id("<start_of_turn>") is not None
        self.prefix = self.tok.encode("<start_of_turn>user\n" if self.chat else "")
        self.position = len(self.prefix)
        self.episodes: list[_Episode] = []
        self.budgets: list[int] | None = None if self.cfg.budget is None else self._budgets(self.cfg.budget)

    def _budgets(self, budget: int) -> list[int]:
        mc = self.model.cfg
        return uniform_budgets(mc.layer_types, mc.sliding_window, budget, 1.0)

    def _new_cache(self) -> CompressedKVCache:
        cache, _ = block_prefill(self.model, self.prefix, block=self.cfg.block)  # BOS and header: the sinks
        return cache

    def _press(self, ep: _Episode) -> EpisodicPress:
        return self._press_for("".join(ep.utterances[-self.cfg.recent :]) or " ")

    def _press_for(self, text: str) -> EpisodicPress:
        return episode_press(self.tok, text, self.cfg.sinks)

    def _append(self, ep: _Episode, ids: list[int]) -> None:
        ep.cache.next_position = self.position
        block_prefill(self.model, ids, self._press(ep), self.budgets, self.cfg.block, cache=ep.cache)

    # --- public API -----------------------------------------------------------------------------------
    def load_history(self, conv) -> None:
        """Offline EpiCache build for a LoCoMo-style conversation: episodes by clustering, one compressed
        cache per episode over the whole history."""
        from leaninfer.eval.locomo import history_text

        ids = self.tok.encode(("<start_of_turn>user\n" if self.chat else "") + history_text(conv))
        if self.budgets is None:
            self.budgets = self._budgets(max(1, math.ceil(len(ids) / self.cfg.ratio)))
        epi = EpiConfig(**{**self.cfg.epi.__dict__, "n_episodes": self.cfg.n_episodes})
        windows, eps = conversation_episodes(conv.utterances, self.embedder, epi)
        self.episodes = []
        for e in range(len(eps.medoids)):
            cache, _ = episode_cache(self.model, self.tok, ids, eps.prompt_text(e), self.budgets, self.cfg.block,
                                     self.cfg.sinks)
            members = [windows[i] for i in np.nonzero(eps.labels == e)[0]]
            self.episodes.append(_Episode(eps.centroids[e], cache, members, len(members)))
        self.position = len(ids)

    def add_turn(self, speaker: str, text: str) -> int:
        """Append one utterance; returns the index of the episode it went to."""
        if self.budgets is None:
            raise ValueError("set SessionConfig.budget (or load_history first) to bound the memory")
        utt = f'{speaker} said, "{text.strip()}"\n'
        ids = self.tok.encode(utt, add_bos=False)
        emb = self.embedder.encode([utt])[0]
        sims = [float(emb @ ep.centroid) for ep in self.episodes]
        if not self.episodes or (max(sims) < self.cfg.tau and len(self.episodes) < self.cfg.n_episodes):
            self.episodes.append(_Episode(emb.copy(), self._new_cache()))
            e = len(self.episodes) - 1
        else:
            e = int(np.argmax(sims))
        ep = self.episodes[e]
        ep.utterances.append(utt)
        self._append(ep, ids)
        ep.count += 1
        c = ep.centroid + (emb - ep.centroid) / ep.count
        ep.centroid = c / max(float(np.linalg.norm(c)), 1e-12)
        self.position += len(ids)
        return e

    def ask(self, question: str) -> dict:
        """Answer from the nearest episode's cache (the cache is left unchanged)."""
        if not self.episodes:
            raise ValueError("the session has no history yet")
        e = int(route(self.embedder.encode([question]), np.stack([ep.centroid for ep in self.episodes]))[0])
        cache = self.episodes[e].cache
        cache.next_position = max(cache.next_position, self.position)
        text = QUESTION.format(q=question)
        text = f"<end_of_turn>\n<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n" if self.chat \
            else f"\n\n{text}\nAnswer:"
        ids, dt = greedy_answer(self.model, cache, self.tok.encode(text, add_bos=False), self.cfg.max_new_tokens,
                                self.engine.eos_ids, lambda out: "\n" in self.tok.decode(out).strip())
        from leaninfer.eval.locomo import clean_answer

        return {"answer": clean_answer(self.tok.decode(ids)), "episode": e, "latency_s": dt}

    def memory_bytes(self) -> int:
        """Bytes held by all episode caches."""
        return sum(ep.cache.nbytes() for ep in self.episodes)

    def memory_bound_bytes(self) -> int:
        """n_episodes x (budget + block) entries per layer and head, keys + values + positions."""
        if self.budgets is None:
            raise ValueError("no budget yet")
        mc = self.model.cfg
        dtype = self.model.embed.weight.dtype
        item = dtype.itemsize if dtype in (torch.float32, torch.bfloat16, torch.float16) else 4
        per_entry = mc.n_kv_heads * (2 * mc.head_dim * item + 8)
        return self.cfg.n_episodes * sum(b + self.cfg.block for b in self.budgets) * per_entry
