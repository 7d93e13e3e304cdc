"""API bodies -> `GenerateRequest`s and prompt ids; engine results -> OpenAI response objects (pure functions)."""

from __future__ import annotations

from leaninfer.generate.context import routing_for
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.request import GenerateRequest, KVPolicy, MethodSpec, RoutingSpec, kv_policy
from leaninfer.serve.config import ServeConfig
from leaninfer.serve.scheduler import public_message
from leaninfer.serve.schemas import APIError, CompletionRequest, LeaninferExt, _Sampling


def build_request(engine, body: _Sampling, max_new: int, cfg: ServeConfig) -> GenerateRequest:
    """The `GenerateRequest` of an API body (sampling, stop, and the `leaninfer` extension object), checked
    against the served model before it is queued."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > cfg.max_stop or any(len(s) > 256 for s in stop):
        raise APIError(400, f"at most {cfg.max_stop} stop strings of at most 256 characters", param="stop")
    top_k = body.top_k if body.top_k and body.top_k > 0 else None
    try:
        sampling = SamplingConfig(1.0 if body.temperature is None else body.temperature, top_k, body.top_p,
                                  body.seed)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    ext = body.leaninfer or LeaninferExt()
    try:
        method = MethodSpec.parse(ext.method if ext.method is not None else cfg.profile_method(body.model))
        routing = RoutingSpec(ext.moe_k, ext.roe, 0.2 if ext.roe_tau is None else ext.roe_tau)
        kv = kv_policy(ext.kv)
        if ext.kv_budget is not None:
            kv = KVPolicy(**{**(kv.__dict__ if kv else {}), "budget": ext.kv_budget})
        if routing.active:
            routing_for(engine.model, routing.moe_k if routing.moe_k is not None else engine.cfg.top_k or 1)
        return GenerateRequest(max_new_tokens=max(max_new, 1), sampling=sampling, method=method, routing=routing,
                               kv=kv, stop=stop, eos=not body.ignore_eos)
    except (ValueError, TypeError) as e:
        raise APIError(400, public_message(str(e)), param="leaninfer") from None


def completion_prompts(engine, body: CompletionRequest, cfg: ServeConfig) -> list[tuple[list[int], str | None]]:
    """(ids, text or None) per prompt. Text is tokenized as `Engine.generate` does (with BOS); token ids are used
    exactly as sent (no BOS added), as lm-eval's local-completions expects."""
    p = body.prompt
    if isinstance(p, str):
        items = [p]
    elif not p:
        raise APIError(400, "prompt must not be empty", param="prompt")
    elif isinstance(p[0], int):
        items = [p]
    else:
        items = list(p)
    if len(items) > cfg.max_prompts:
        raise APIError(400, f"at most {cfg.max_prompts} prompts per request", param="prompt")
    out = []
    for item in items:
        try:
            ids = engine.encode(item)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None
        out.append((ids, item if isinstance(item, str) else None))
    return out


def check_lengths(ids: list[int], max_new: int, cfg: ServeConfig, ctx: int) -> None:
    if max_new > cfg.max_tokens_cap:
        raise APIError(400, f"max_tokens must be <= {cfg.max_tokens_cap}", param="max_tokens")
    if len(ids) + max_new > ctx:
        raise APIError(400, f"this model's maximum context length is {ctx} tokens; the prompt has {len(ids)} and "
                            f"max_tokens is {max_new}", param="prompt", code="context_length_exceeded")


def usage(events: list[dict]) -> dict:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    u = {k: sum(e["usage"][k] for e in events) for k in keys}
    gen = [e["usage"] for e in events if e["usage"]["completion_tokens"]]
    u["mean_accepted_tokens"] = (sum(g["mean_accepted_tokens"] for g in gen) / len(gen)) if gen else 1.0
    return u


def legacy_logprobs(decode, prompt_ids: list[int] | None, prompt_lps: list | None, gen_lps: list,
                    offset: int = 0) -> dict:
    """The completions API's logprobs object: {tokens, token_logprobs, top_logprobs, text_offset}; prompt tokens
    first when echoing (the first has null log-probabilities)."""
    tokens, lps, tops, offsets = [], [], [], []
    entries = []
    if prompt_ids is not None and prompt_lps is not None:
        entries += [(i, e) for i, e in zip(prompt_ids, prompt_lps)]
    entries += [(tok, (lp, top)) for lp, top, tok in gen_lps]
    for tok, e in entries:
        s = decode([tok])
        tokens.append(s)
        offsets.append(offset)
        offset += len(s)
        if e is None:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(e[0])
        top = {decode([t]): v for t, v in e[1]}
        top.setdefault(s, e[0])
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(decode, gen_lps: list) -> dict:
    def item(tok, lp):
        s = decode([tok])
        return {"token": s, "logprob": lp, "bytes": list(s.encode())}

    return {"content": [{**item(tok, lp), "top_logprobs": [item(t, v) for t, v in top]} for lp, top, tok in gen_lps]}
