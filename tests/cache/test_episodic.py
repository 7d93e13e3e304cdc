"""EpiCache pieces: windows, clustering and medoids, routing, key sensitivity, layer budgets; ChatSession."""

import numpy as np
import pytest
import torch

from helpers import hf_model, write_word_tokenizer
from leaninfer.cache.budget import full_lengths, uniform_budgets
from leaninfer.cache.episodic import (
    EpiConfig,
    block_sim_mask,
    cluster_episodes,
    conversation_windows,
    key_sensitivity,
    route,
    sensitivity_budgets,
)
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder


def test_windows_and_clusters_with_chronological_medoids():
    utts = [f"u{i}\n" for i in range(10)]
    assert conversation_windows(utts, 4) == ["u0\nu1\nu2\nu3\n", "u4\nu5\nu6\nu7\n", "u8\nu9\n"]
    rng = np.random.default_rng(0)
    topics = np.eye(3, 16, dtype=np.float32)
    emb = np.stack([topics[i % 3] + 0.05 * rng.standard_normal(16) for i in range(12)]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    eps = cluster_episodes(emb, [f"w{i}" for i in range(12)], EpiConfig(n_episodes=3, n_medoid=2))
    for e, med in enumerate(eps.medoids):
        assert med == sorted(med) and len(med) == 2
        assert all(eps.labels[i] == e for i in med)
        assert len({i % 3 for i in med}) == 1  # a medoid set comes from one topic
    assert len(set(eps.labels[i] for i in range(3))) == 3


def test_route_picks_the_nearest_centroid():
    cent = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float32)
    q = np.array([[0.9, 0.1, 0], [0.1, 0.9, 0.2], [0.5, 0.7, 0], [-1, 0, 0]], dtype=np.float32)
    assert route(q, cent).tolist() == [0, 1, 2, 1]
    assert route(np.array([0.0, 2.0, 0.0]), cent).tolist() == [1]


def test_block_sim_mask():
    m = block_sim_mask(8, block=4, n_sink=1)
    assert bool(m[7, 0]) and bool(m[7, 4]) and bool(m[7, 3]) and not bool(m[7, 1])  # sink, own block, last half
    assert not bool(m[2, 3]) and bool(m[3, 3])  # causal


def test_key_sensitivity_and_budgets(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path)
    model = build_decoder(*read_hf_dir(tmp_path))
    sigma = key_sensitivity(model, torch.randint(3, 96, (64,)).tolist(), block=8, n_sink=2, window=16)
    assert len(sigma) == model.cfg.n_layers
    assert sigma[0] == pytest.approx(1.0, abs=1e-5)  # first-layer keys depend on the token only
    assert all(-1 <= s <= 1 + 1e-6 for s in sigma) and min(sigma[1:]) < 0.999
    types = ["sliding"] + ["full"] * 4
    uniform = uniform_budgets(types, 16, 400, 4.0)
    caps = full_lengths(types, 16, 400)
    got = sensitivity_budgets([1.0, 0.99, 0.9, 0.5, 0.95], uniform, caps, alpha=2.0, floor=0.25)
    assert sum(got) == sum(uniform) and got[0] == uniform[0]  # sliding layer untouched
    assert got[3] > got[2] > got[4] > got[1] >= int(0.25 * uniform[1])


class BagEmbedder:
    """Deterministic test embedder: bag of words hashed into 32 dims, unit norm."""

    def encode(self, texts):
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace('"', " ").split():
                out[i, hash(w) % 32] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-6)


def test_chat_session_memory_stays_bounded(tmp_path):
    import leaninfer
    from leaninfer.cache.session import ChatSession, SessionConfig

    hf = hf_model("gemma3", max_position_embeddings=4096)
    hf.save_pretrained(tmp_path)
    words = write_word_tokenizer(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    session = ChatSession(engine, SessionConfig(budget=12, block=8, n_episodes=3, tau=0.5), embedder=BagEmbedder())
    bound = session.memory_bound_bytes()
    rng = np.random.default_rng(0)
    seen = set()
    for turn in range(40):
        text = " ".join(words[int(i)] for i in rng.integers(3, 96, size=int(rng.integers(3, 9))))
        seen.add(session.add_turn("w5", text))
        assert session.memory_bytes() <= bound
        assert all(max(ep.cache.lengths(1)) <= 12 for ep in session.episodes)  # the global layer's budget
    assert len(session.episodes) <= 3 and len(seen) > 1
    assert session.position > 200
    ans = session.ask("w7 w8 w9")
    assert 0 <= ans["episode"] < len(session.episodes) and isinstance(ans["answer"], str)


def test_chat_session_load_history_builds_episode_caches(tmp_path):
    import leaninfer
    from leaninfer.cache.session import ChatSession, SessionConfig
    from leaninfer.eval.locomo import Conversation, Session

    hf = hf_model("gemma3", max_position_embeddings=4096)
    hf.save_pretrained(tmp_path)
    words = write_word_tokenizer(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    rng = np.random.default_rng(1)
    utts = [f'w5 said, "{" ".join(words[int(i)] for i in rng.integers(3, 96, size=6))}"\n' for _ in range(24)]
    conv = Conversation("c", ("w5", "w6"), [Session("w9", utts[:12]), Session("w10", utts[12:])])
    session = ChatSession(engine, SessionConfig(ratio=4.0, block=16, n_episodes=2), embedder=BagEmbedder())
    session.load_history(conv)
    assert len(session.episodes) == 2 and session.budgets[1] < session.position
    for ep in session.episodes:
        assert max(ep.cache.lengths(1)) <= session.budgets[1]
        assert ep.cache.next_position == session.position
    assert session.ask("w7")["episode"] in (0, 1)
