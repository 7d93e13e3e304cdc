"""MTP decoding: the target drafts its own next k tokens from k mask slots in the verification forward.

Every step runs one target forward over [pending, d_1..d_n] plus mask blocks (gated LoRA active at mask rows
only, so the real rows compute exactly what plain decoding computes) and verifies the drafts with the shared
lossless core (`verify_greedy` / `verify_sampling`).
- quadratic: a block of k masks after every real row, [x0, m.., d1, m.., ..., dn, m..] ((n+1)(k+1) rows):
  whatever prefix is accepted, the masks after its last token hold the next k drafts;
- linear: masks only after the last draft, [x0, d1..dn, m1..mk]: the next drafts exist only when every draft was
  accepted (otherwise the next step carries masks only).
Mask j of a block after the row at position p sits at position p + j and predicts the token at p + j + 1 (the
row itself predicts p + 1, the verified next token). Drafts come from the base head on the mask latents
(`sampler="off"`) or from the sampler head, run over the k latents in turn from the verified next token.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from leaninfer.generate.loop import DecodeOut
from leaninfer.generate.sampling import SamplingConfig, logits_to_probs, make_generator
from leaninfer.generate.speculative import speculate
from leaninfer.generate.verify import verify_greedy, verify_sampling
from leaninfer.models.mtp import MTPAdapter
from leaninfer.models.transformer import Decoder


def block_layout(n_draft: int, k: int, quadratic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of one step: (slot (T,) -1 real / j mask, offset (T,) position - pending position, mask (T, T)).
    Real row g (pending = 0, draft g) sits at offset g; mask j (0-based) after real row g at offset g + 1 + j."""
    groups = range(n_draft + 1) if quadratic else [n_draft]
    slot, offset, owner = [], [], []  # owner: real row index a row belongs to (masks: their anchor)
    for g in range(n_draft + 1):
        slot.append(-1), offset.append(g), owner.append(g)
    for g in groups:
        for j in range(k):
            slot.append(j), offset.append(g + 1 + j), owner.append(g)
    slot_t, off_t, own_t = torch.tensor(slot), torch.tensor(offset), torch.tensor(owner)
    real = slot_t < 0
    idx = torch.arange(len(slot))
    # real rows: causal over real rows; masks: real rows up to their anchor + earlier masks of their block
    see_real = real[None] & (own_t[None] <= own_t[:, None])
    see_mask = ~real[None] & ~real[:, None] & (own_t[None] == own_t[:, None]) & (idx[None] <= idx[:, None])
    return slot_t, off_t, see_real | see_mask


class MTPDrafter:
    """Drafts from mask latents: `drafts(z (k, d), next_token) -> (ids (k,), probs (k, V) or None)`."""

    def __init__(self, model: Decoder, adapter: MTPAdapter, sampling: SamplingConfig, use_sampler: bool,
                 gen: torch.Generator | None) -> None:
        self.model, self.adapter, self.sampling, self.gen = model, adapter, sampling, gen
        self.use_sampler = use_sampler and adapter.sampler is not None
        self.d2t = adapter.d2t.to(model.embed.weight.device)

    def _pick(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        if self.sampling.greedy:
            return int(logits.argmax(-1)), None
        probs = logits_to_probs(logits, self.sampling)
        return int(torch.multinomial(probs, 1, generator=self.gen)), probs

    def drafts(self, z: torch.Tensor, nxt: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, probs = [], []
        if self.use_sampler:
            prev = nxt
            for j in range(z.shape[0]):
                logits = self.adapter.sampler_logits(self.model, torch.tensor(prev, device=z.device), z[j])
                d, p = self._pick(logits)
                prev = int(self.d2t[d])
                ids.append(d), probs.append(p)
        else:
            logits = self.adapter.draft_logits(self.model, z)  # (k, Vd)
            for j in range(z.shape[0]):
                d, p = self._pick(logits[j])
                ids.append(d), probs.append(p)
        tokens = self.d2t[torch.tensor(ids, device=z.device)]
        if self.sampling.greedy:
            return tokens, None
        full = torch.zeros(len(ids), self.model.cfg.vocab_size, device=z.device)
        full[:, self.d2t] = torch.stack(probs)  # (k, V): zero outside the draft vocabulary
        return tokens, full


def decode_mtp(
    model: Decoder,
    adapter: MTPAdapter,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    k: int = 4,
    decoding: str = "quadratic",
    sampler: bool = True,
) -> DecodeOut:
    """Speculative decoding with the target's own mask-slot drafts (see the module docstring)."""
    if decoding not in ("linear", "quadratic"):
        raise ValueError(f"decoding must be 'linear' or 'quadratic', got {decoding!r}")
    if not 1 <= k <= adapter.cfg.n_masks:
        raise ValueError(f"k must be in 1..{adapter.cfg.n_masks} (the adapter's mask slots), got {k}")
    quadratic = decoding == "quadratic"
    device = model.embed.weight.device
    timing = {"draft_s": 0.0, "verify_s": 0.0, "other_s": 0.0}
    state: dict = {"drafts": None, "probs": None, "by_pos": [0] * k, "tried": [0] * k}
    layouts = {n: [t.to(device) for t in block_layout(n, k, quadratic)] for n in range(k + 1)}

    def step(cache, context, pending, budget, gen):
        t0 = time.perf_counter()
        drafts, q = state["drafts"], state["probs"]
        n = 0 if drafts is None else min(drafts.numel(), budget)
        d = drafts[:n] if n else torch.zeros(0, dtype=torch.long, device=device)
        slot, offset, bmask = layouts[n]
        start = cache.length
        p0 = int(cache.pos[0, start - 1]) + 1
        tokens = torch.zeros(slot.numel(), dtype=torch.long, device=device)
        real = (slot < 0).nonzero().squeeze(1)  # rows 0..n
        tokens[real] = torch.cat([torch.tensor([pending], device=device), d])
        with adapter.attached(model, max_rows=slot.numel()):
            adapter.gate((slot >= 0).nonzero().squeeze(1))
            h = adapter.embed(model, tokens[None], slot[None])
            hidden = model(hidden=h, positions=(p0 + offset)[None], cache=cache, block_mask=bmask,
                           logits=False).hidden[0]  # (T, d)
        logits = model.head(hidden[real][None])[0]  # (n + 1, V): real rows only, as a plain verification
        t1 = time.perf_counter()
        if sampling.greedy:
            a, nxt = verify_greedy(logits, d)
        else:
            a, nxt = verify_sampling(logits_to_probs(logits, sampling), d, None if q is None else q[:n], gen)
        for j in range(n):
            state["tried"][j] += 1
            state["by_pos"][j] += int(j < a)
        cache.keep_path(start, start + real[: a + 1].cpu())
        anchor = a if quadratic else (n if a == n else None)
        t2 = time.perf_counter()
        if anchor is None:
            state["drafts"] = state["probs"] = None
        else:
            rows = (slot >= 0).nonzero().squeeze(1)
            rows = rows[((offset[rows] - slot[rows] - 1) == anchor)]  # masks after real row `anchor`
            z = adapter.latent(model, hidden[rows])  # (k, d)
            state["drafts"], state["probs"] = drafter.drafts(z, nxt)
        timing["verify_s"] += t1 - t0
        timing["other_s"] += t2 - t1
        timing["draft_s"] += time.perf_counter() - t2
        return d[:a].tolist() + [nxt], n, a

    drafter = MTPDrafter(model, adapter, sampling, sampler,
                         make_generator(None if sampling.seed is None else sampling.seed + 1, device))
    out = speculate(model, prompt, max_new_tokens, sampling, eos_ids, on_token, step, (k + 1) ** 2 + 1,
                    timing=timing)
    out.extra["accept_by_position"] = [a / t if t else 0.0 for a, t in zip(state["by_pos"], state["tried"])]
    return out


def engine_adapter(engine) -> MTPAdapter:
    """The engine's MTP adapter: a trained one in the user cache (`leaninfer draft train --kind mtp`) or the
    package asset shipped for the default model; loaded once per engine."""
    from leaninfer.models.mtp import find_adapter

    cached = engine.__dict__.setdefault("_mtp_adapter", {})
    if "adapter" not in cached:
        cached["adapter"] = find_adapter(engine.source, engine.cfg).to(engine.device)
    return cached["adapter"]
