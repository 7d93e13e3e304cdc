"""Mirror speculative decoding (Mirror-SD, arXiv 2510.13161): early-exit signals from the target steer the draft's
branch-complete rollouts, which run at the same time as the target's remaining layers.

One step, with window w_1..w_g drafted for the pending token p:
1. Target prefix: layers [0, l_e) over [p, w_1..w_g]; its hidden state goes through the final norm and the
   draft-vocabulary rows of the LM head, giving top-kappa candidate ids (and log-probs) for each of the g + 1
   positions (`early_exit_signals`). Meanwhile the draft takes in the verified context (`MirrorDraft.refresh`).
2. Overlap: the target runs layers [l_e, N) and its head; the draft rolls out a full g-token window after every
   candidate c at every depth j (prefix w_1..w_j, c), all branches batched (`MirrorDraft.rollouts`).
3. Verify the window against the final logits (chain verification, greedy or speculative sampling): tau accepted,
   correction/bonus x. Reuse rule (`find_branch`): if a branch's prefix is (w_1..w_tau, x), its rollout is the next
   window at once (hit); otherwise the draft re-drafts serially (miss).
Early-exit candidates only choose which windows are precomputed; every emitted token is verified against the
full target as in chain speculation, so the output equals plain decoding (greedy) or is distributed as the
target (sampling, with the draft's q recorded for every branch token).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from leaninfer.generate.loop import DecodeOut
from leaninfer.generate.mirror_draft import Branch, MirrorDraft
from leaninfer.generate.mirror_stream import StreamMirrorDraft
from leaninfer.generate.sampling import SamplingConfig, logits_to_probs
from leaninfer.generate.speculative import speculate
from leaninfer.generate.verify import verify_greedy, verify_sampling
from leaninfer.generate.workers import Workers
from leaninfer.models.eagle import EagleDraft
from leaninfer.models.quant import QuantLinear
from leaninfer.models.stream_draft import StreamDraft
from leaninfer.models.transformer import Decoder


def find_branch(branches: Sequence[Branch], accepted: Sequence[int], correction: int) -> Branch | None:
    """The reuse rule: the branch whose prefix is exactly the accepted draft tokens followed by the target's
    correction (or bonus) token, else None (a miss)."""
    want = tuple(accepted) + (int(correction),)
    for b in branches:
        if b.prefix == want:
            return b
    return None


def exit_head(model: Decoder, d2t: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The early-exit head: the LM head's rows for the draft vocabulary `d2t`, (.., dim) -> (.., Vd) fp32.
    Quantised to int8 when the target's linears are quantised (it is read every step); cached on the model."""
    store = model.__dict__.setdefault("_exit_heads", {})
    key = (d2t.numel(), int(d2t[:64].sum()), int(d2t[-64:].sum()))
    if key not in store:
        head = model.lm_head
        full = model.embed.weight if model.cfg.tie_embeddings or head is None else getattr(head, "weight", None)
        full = head.dequantized() if full is None else full  # an untied quantised head
        rows = full.detach()[d2t.to(full.device)].float()  # (Vd, dim)
        quant = next((m.precision for m in model.modules() if isinstance(m, QuantLinear)), None)
        if quant is not None and rows.device.type == "cpu":
            lin = QuantLinear.from_linear(rows, None, "int8").to(rows.device)
            store[key] = lambda h: lin(h).float()
        else:
            store[key] = lambda h: F.linear(h.to(rows.dtype), rows).float()
    return store[key]


def early_exit_signals(model: Decoder, hidden: torch.Tensor, head: Callable, d2t: torch.Tensor,
                       kappa: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden: (T, dim) after layer l_e -> top-kappa target ids (T, kappa) and their log-probs (T, kappa) under
    the proxy distribution softmax(head(norm(hidden))) over the draft vocabulary."""
    logp = torch.log_softmax(head(model.norm(hidden)), dim=-1)  # (T, Vd)
    val, idx = logp.topk(min(kappa, logp.shape[-1]), dim=-1)
    return d2t[idx], val


def _draft_probs(q: torch.Tensor, d2t: torch.Tensor, vocab: int) -> torch.Tensor:
    """(g, Vd) draft distributions -> (g, V) over the target vocabulary."""
    full = torch.zeros(q.shape[0], vocab, dtype=q.dtype, device=q.device)
    return full.index_copy_(1, d2t, q)


def make_drafter(model: Decoder, draft: EagleDraft | StreamDraft, max_len: int, gamma: int,
                 n_branch: int, sampling: SamplingConfig) -> MirrorDraft | StreamMirrorDraft:
    """The draft side for `draft`: EAGLE-style feature rollouts (one draft forward per window token) or
    speculative-streaming rollouts (one forward per window or rollout set, gamma <= 1 + n_streams)."""
    if isinstance(draft, StreamDraft):
        if gamma > 1 + draft.n_streams:
            raise ValueError(f"a streaming draft with {draft.n_streams} streams drafts at most "
                             f"{1 + draft.n_streams} tokens per forward; got gamma={gamma}")
        return StreamMirrorDraft(draft, max_len + gamma + 1 + n_branch * (1 + draft.n_streams), sampling)
    return MirrorDraft(draft, model.embed_tokens, max_len + n_branch * gamma, sampling)


def _features(taps: tuple[int, ...], tapped: dict, n: int | None = None) -> torch.Tensor | None:
    """(n, len(taps) * dim) target features for the draft, or None when it reads tokens only."""
    if not taps:
        return None
    return torch.cat([tapped[t][0, :n] for t in taps], dim=-1)


def decode_mirror(
    model: Decoder,
    draft: EagleDraft | StreamDraft,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: set[int],
    on_token: Callable[[int], bool] | None = None,
    gamma: int = 4,
    kappa: int = 2,
    exit_layer: int | None = None,
    workers: str | Workers = "threads",
) -> DecodeOut:
    """Mirror-SD decoding with an EAGLE-style or a speculative-streaming draft (`make_drafter`). gamma: window
    length; kappa: early-exit candidates per position; exit_layer: l_e (default N // 2); workers: "serial",
    "threads" or a `Workers`.
    Stats (in `.extra`): per-phase seconds (prefix_s, suffix_s, draft_refresh_s, draft_rollout_s, redraft_s,
    accept_s), exposed_draft_s (draft time on the critical path) and its fraction of all draft time, steps,
    hits, misses (serial re-drafts, the first window included), hit_rate, branches."""
    n_layers = model.cfg.n_layers
    le = n_layers // 2 if exit_layer is None else exit_layer
    if not 0 < le < n_layers:
        raise ValueError(f"exit_layer must be in [1, {n_layers - 1}], got {le}")
    if gamma < 1 or kappa < 1:
        raise ValueError(f"gamma and kappa must be >= 1, got {gamma}, {kappa}")
    n_branch = kappa * (gamma + 1)
    drafter = make_drafter(model, draft, len(prompt) + max_new_tokens + 2 * gamma + 8, gamma, n_branch, sampling)
    taps = drafter.taps
    pre_taps, post_taps = tuple(t for t in taps if t <= le), tuple(t for t in taps if t > le)
    head, d2t = exit_head(model, draft.d2t), draft.d2t
    drafter.begin(prompt)
    pool = workers if isinstance(workers, Workers) else Workers(workers)
    timing = {k: 0.0 for k in ("prefix_s", "suffix_s", "draft_refresh_s", "draft_rollout_s", "exposed_draft_s",
                               "redraft_s", "accept_s", "steps", "hits", "misses", "branches",
                               "draft_s", "verify_s", "other_s")}
    state = {"window": None}

    def on_prefill(out, first):
        drafter.observe(_features(taps, out.taps or {}), prompt[1:] + [first])

    def step(cache, context, pending, budget, gen):
        t0 = time.perf_counter()
        if state["window"] is None:  # miss (or first step): draft serially, fully exposed
            state["window"] = drafter.draft_window(gamma)
            timing["misses"] += 1
        window = state["window"]
        t1 = time.perf_counter()
        g, device, start = len(window.tokens), cache.pos.device, cache.length
        first_pos = int(cache.pos[0, start - 1]) + 1
        pos = torch.arange(first_pos, first_pos + g + 1, device=device)[None]
        block = torch.tensor([[pending] + window.tokens], device=device)

        def prefix():
            out = model(block, positions=pos, cache=cache, start=start, layers=(0, le), taps=pre_taps)
            return out, early_exit_signals(model, out.hidden[0], head, d2t, kappa)[0]

        (pre, cands), _, ta = pool.pair(prefix, lambda: drafter.refresh(window))
        out, branches, tb = pool.pair(
            lambda: model(hidden=pre.hidden, positions=pos, cache=cache, start=start, layers=(le, n_layers),
                          taps=post_taps),
            lambda: drafter.rollouts(window, cands))
        t2 = time.perf_counter()
        logits, d = out.logits[0], torch.tensor(window.tokens, device=device)  # (g + 1, V), (g,)
        if sampling.greedy:
            n, nxt = verify_greedy(logits, d)
        else:
            q = _draft_probs(window.q, d2t, logits.shape[-1])
            n, nxt = verify_sampling(logits_to_probs(logits, sampling), d, q, gen)
        cache.rollback(g - n)
        emitted = window.tokens[:n] + [nxt]
        tapped = {**(pre.taps or {}), **(out.taps or {})}
        drafter.observe(_features(taps, tapped, n + 1), emitted)
        hit = find_branch(branches, window.tokens[:n], nxt)
        state["window"] = hit.window if hit is not None else None
        t3 = time.perf_counter()
        exposed = t1 - t0 + ta.exposed_s + tb.exposed_s  # serial re-draft + draft time the target did not hide
        for key, val in (("redraft_s", t1 - t0), ("prefix_s", ta.target_s), ("suffix_s", tb.target_s),
                         ("draft_refresh_s", ta.draft_s), ("draft_rollout_s", tb.draft_s),
                         ("exposed_draft_s", exposed), ("accept_s", t3 - t2), ("steps", 1),
                         ("hits", hit is not None), ("branches", len(branches)),
                         # the critical path in the speculative runner's terms: drafting, target forward, bookkeeping
                         ("draft_s", exposed), ("verify_s", ta.target_s + tb.target_s), ("other_s", t3 - t2)):
            timing[key] += float(val)
        return emitted, g, n

    entered = pool.mode == "threads" and pool._pool is None
    if entered:
        pool.__enter__()
    try:
        res = speculate(model, prompt, max_new_tokens, sampling, eos_ids, on_token, step, gamma + 1,
                        prefill_taps=taps, on_prefill=on_prefill, timing=timing)
    finally:
        if entered:
            pool.close()
    steps = max(timing["steps"], 1)
    res.extra["hit_rate"] = timing["hits"] / steps
    drafted = timing["draft_refresh_s"] + timing["draft_rollout_s"] + timing["redraft_s"]
    res.extra["exposed_draft_fraction"] = timing["exposed_draft_s"] / drafted if drafted else 0.0
    return res
