"""Registry of decoding methods: name -> function(engine, prompt_ids, max_new, sampling, eos, on_token, **opts).

Each method returns a `DecodeOut`; speculative methods plug in here, one module each.
"""

from __future__ import annotations

from leaninfer.generate.context import DecodeContext, decode_in_context, routing_for
from leaninfer.generate.loop import DecodeOut, decode_ar
from leaninfer.generate.proposers.draft_lm import DraftLMProposer
from leaninfer.generate.proposers.eagle import EagleProposer
from leaninfer.generate.proposers.hydra import HydraProposer
from leaninfer.generate.proposers.medusa import MedusaProposer
from leaninfer.generate.proposers.ngram import NgramProposer
from leaninfer.generate.proposers.ngram_tree import NgramTreeProposer
from leaninfer.generate.speculative import decode_feature_tree, decode_speculative, decode_tree


def _ar(engine, prompt, max_new_tokens, sampling, eos_ids, on_token):
    return decode_ar(engine.model, prompt, max_new_tokens, sampling, eos_ids, on_token)


def _ngram(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, k: int = 4, max_ngram: int = 3, ctx=None):
    return decode_speculative(engine.model, NgramProposer(max_ngram), prompt, max_new_tokens, sampling, eos_ids,
                              on_token, k=k, ctx=ctx)


def _ngram_tree(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, depth: int = 4, branches: int = 3,
                max_ngram: int = 3):
    return decode_tree(engine.model, NgramTreeProposer(max_ngram, branches), prompt, max_new_tokens, sampling,
                       eos_ids, on_token, depth=depth)


def _sd(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, k: int = 3, ctx=None):
    """Vanilla speculative sampling with a separate draft LM: the trained one (`leaninfer draft train --kind
    draft-lm`) by default, or any `Decoder` / `Engine` sharing the target's vocabulary. k = 3 by default: on
    this CPU a 4-token verification costs 1.4x one token, a 5-token one 2x."""
    draft = engine.draft("draft-lm") if draft is None else getattr(draft, "model", draft)
    vocab = getattr(draft, "vocab_size", None) or draft.cfg.vocab_size
    if vocab != engine.cfg.vocab_size:
        raise ValueError(f"draft vocabulary {vocab} != target {engine.cfg.vocab_size}")
    proposer = DraftLMProposer(draft, sampling, len(prompt) + max_new_tokens + k + 1,
                               None if sampling.seed is None else sampling.seed + 1)
    return decode_speculative(engine.model, proposer, prompt, max_new_tokens, sampling, eos_ids, on_token, k=k,
                              ctx=ctx)


# Tree defaults tuned on held-out prompts of our own list (not Spec-Bench): on this CPU a target forward of
# 5+ tokens leaves the int8 4-row kernel and costs ~2x a 1-token step, so the best tree has 4 nodes.
def _eagle(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, depth: int = 3,
           max_nodes: int = 4, top_k: int = 2):
    """EAGLE-3-style feature draft with a dynamic tree of at most `max_nodes` tokens (root included)."""
    draft = draft if draft is not None else engine.draft("eagle")
    proposer = EagleProposer(draft, engine.model.embed_tokens, len(prompt) + max_new_tokens + max_nodes + 8, top_k)
    return decode_feature_tree(engine.model, proposer, prompt, max_new_tokens, sampling, eos_ids, on_token,
                               depth=depth, max_nodes=max_nodes)


def _medusa(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, depth: int = 3,
            max_nodes: int = 4, top_k: int = 2, typical: bool = False, eps: float = 0.09, delta: float = 0.3):
    """Medusa heads; `typical=True` uses typical acceptance (lossy, outputs may differ from plain decoding)."""
    heads = draft if draft is not None else engine.draft("medusa")
    return decode_feature_tree(engine.model, MedusaProposer(heads, top_k), prompt, max_new_tokens, sampling,
                               eos_ids, on_token, depth=depth, max_nodes=max_nodes,
                               typical=(eps, delta) if typical else None)


def _hydra(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, depth: int = 3,
           max_nodes: int = 4, top_k: int = 2):
    heads = draft if draft is not None else engine.draft("hydra")
    return decode_feature_tree(engine.model, HydraProposer(heads, engine.model.embed_tokens, top_k), prompt,
                               max_new_tokens, sampling, eos_ids, on_token, depth=depth, max_nodes=max_nodes)


METHODS = {"ar": _ar, "ngram": _ngram, "ngram_tree": _ngram_tree, "sd": _sd, "eagle": _eagle, "medusa": _medusa,
           "hydra": _hydra}


def _mirror(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, draft=None, gamma: int = 4, kappa: int = 2,
            exit_layer: int | None = None, workers: str = "threads", rollout: str = "eagle"):
    """Mirror-SD: early-exit candidates steer batched draft rollouts that overlap the target's suffix layers.
    rollout: "eagle" (the EAGLE feature draft, one forward per window token) or "stream" (the speculative-streaming
    draft, `leaninfer draft train --kind mirror`: one forward per window, gamma <= 1 + its streams); a `draft`
    passed in decides by its type."""
    from leaninfer.generate.mirror import decode_mirror

    if rollout not in ("eagle", "stream"):
        raise ValueError(f"rollout must be 'eagle' or 'stream', got {rollout!r}")
    draft = draft if draft is not None else engine.draft("mirror" if rollout == "stream" else "eagle")
    return decode_mirror(engine.model, draft, prompt, max_new_tokens, sampling, eos_ids, on_token, gamma=gamma,
                         kappa=kappa, exit_layer=exit_layer, workers=workers)


METHODS["mirror"] = _mirror


def _mtp(engine, prompt, max_new_tokens, sampling, eos_ids, on_token, adapter=None, k: int = 4,
         decoding: str = "quadratic", sampler="on"):
    """MTP: the target drafts its next k tokens from mask slots through a gated LoRA (generate/proposers/mtp.py);
    the shipped adapter for the default model, or `leaninfer draft train --kind mtp`."""
    from leaninfer.generate.proposers.mtp import decode_mtp, engine_adapter

    on = {"on": True, "off": False, True: True, False: False}.get(sampler)
    if on is None:
        raise ValueError(f"sampler must be 'on' or 'off', got {sampler!r}")
    return decode_mtp(engine.model, adapter or engine_adapter(engine), prompt, max_new_tokens, sampling, eos_ids,
                      on_token, k=k, decoding=decoding, sampler=on)


METHODS["mtp"] = _mtp


# methods whose loop runs on any DecodeContext (a compressed cache with rollback, a MoE routing)
CONTEXT_METHODS = ("ar", "ngram", "sd")


def decode_request(engine, ids: list[int], request, eos_ids: set[int], on_token=None) -> DecodeOut:
    """Run one `GenerateRequest` on prompt `ids`: its method, MoE routing and KV policy, composed through one
    `DecodeContext` (cache + routing) when the request combines them."""
    method, routing, sampling = request.method, request.routing, request.sampling
    if method.name not in METHODS:
        raise ValueError(f"unknown method {method.name!r}; available: {', '.join(sorted(METHODS))}")
    if routing.roe is not None or (routing.moe_k is not None and method.name == "ar" and request.kv is None):
        if method.name != "ar" or method.options:
            raise ValueError("a Roster of Experts decodes with method 'ar' and no method options")
        from leaninfer.moe.decode import decode_moe

        return decode_moe(engine.model, ids, request.max_new_tokens, sampling, eos_ids, on_token,
                          top_k=routing.moe_k, roe=routing.roe_config(sampling.seed))
    if request.kv is None and routing.moe_k is None:
        return METHODS[method.name](engine, ids, request.max_new_tokens, sampling, eos_ids, on_token,
                                    **method.options)
    if method.name not in CONTEXT_METHODS:
        raise ValueError(f"method {method.name!r} does not run with a KV policy or a MoE k yet; these do: "
                         f"{', '.join(CONTEXT_METHODS)}")
    ctx = request_context(engine, ids, request)
    if method.name == "ar":
        if method.options:
            raise ValueError("method 'ar' takes no options")
        out = decode_in_context(ctx, ids[ctx.cached :], request.max_new_tokens, sampling, eos_ids, on_token)
    else:
        out = METHODS[method.name](engine, ids, request.max_new_tokens, sampling, eos_ids, on_token, ctx=ctx,
                                   **method.options)
    if request.kv is not None:
        out.extra.update({"kv_press": request.kv.press, "kv_budget": request.kv.budget,
                          "kv_bytes": ctx.cache.nbytes()})
    if routing.moe_k is not None:
        out.extra["moe_k"] = routing.moe_k
    return out


def request_context(engine, ids: list[int], request) -> DecodeContext:
    """The DecodeContext of a request: its MoE routing and, with a KV policy, a compressed cache holding all
    but the last prompt token, prefilled in blocks and evicted to the policy's budget."""
    from leaninfer.cache.budget import uniform_budgets
    from leaninfer.cache.compressed import CompressedKVCache
    from leaninfer.cache.prefill import block_prefill
    from leaninfer.cache.press import make_press

    model = engine.model
    ctx = DecodeContext(model, routing=routing_for(model, request.routing.moe_k))
    kv = request.kv
    if kv is None:
        return ctx
    press = make_press(kv.press, engine.tokenizer, sinks=kv.sinks)
    budgets = uniform_budgets(model.cfg.layer_types, model.cfg.sliding_window, kv.budget, 1.0)
    if len(ids) > 1:
        ctx.cache, _ = block_prefill(model, ids[:-1], press, budgets, kv.block)
    else:
        ctx.cache = CompressedKVCache.for_model(model)
    ctx.cached = len(ids) - 1
    return ctx
