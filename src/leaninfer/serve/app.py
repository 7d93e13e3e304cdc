"""The OpenAI-compatible HTTP app (FastAPI): routes, body limits, errors, SSE streaming. No algorithm of its own:
requests become `GenerateRequest`s run by the engine thread (`scheduler.Scheduler`)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from leaninfer.serve.chat import ChatFormatter, decode_special, load_template
from leaninfer.serve.config import ServeConfig
from leaninfer.serve.convert import (
    build_request,
    chat_logprobs,
    check_lengths,
    completion_prompts,
    legacy_logprobs,
    usage,
)
from leaninfer.serve.metrics import Metrics
from leaninfer.serve.scheduler import Job, QueueFull, Scheduler
from leaninfer.serve.schemas import APIError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

log = logging.getLogger(__name__)


def create_app(engine, cfg: ServeConfig | None = None) -> FastAPI:
    """The app serving `engine`; its engine thread starts now and stops with the app's lifespan."""
    cfg = cfg or ServeConfig()
    if engine.tokenizer is None:
        raise ValueError("serving needs a model with a tokenizer")
    ctx = min(cfg.max_model_len, engine.cfg.max_seq_len)
    metrics = Metrics()
    sched = Scheduler(engine, cfg.max_batch, ctx, cfg.max_queue, metrics)
    chat_template = load_template(engine.source)
    chat = ChatFormatter(engine.tokenizer, chat_template)
    decode = engine.tokenizer.decode
    app = FastAPI(title="leaninfer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics = sched, metrics
    app.router.on_shutdown.append(sched.stop)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail), "invalid_request_error").body(), e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):  # never a traceback or a path to the client
        log.exception("unhandled error")
        return JSONResponse(APIError(500, "internal server error", "internal_error").body(), 500)

    def _auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        got = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(got.encode(), cfg.api_key.encode()):
            raise APIError(401, "invalid API key", "authentication_error")

    async def _body(request: Request, model):
        _auth(request)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            raise APIError(413, f"request body over {cfg.max_body_bytes} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise APIError(413, f"request body over {cfg.max_body_bytes} bytes")
        try:
            return model.model_validate(json.loads(raw))
        except json.JSONDecodeError:
            raise APIError(400, "the body is not valid JSON") from None
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(x) for x in err["loc"]) or None
            raise APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param) from None

    @app.get("/health")
    async def health():
        if not sched.alive or not sched.thread.is_alive():
            return JSONResponse(APIError(503, "engine stopped", "unavailable_error").body(), 503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text(request: Request):
        _auth(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        _auth(request)
        def card(name: str, parent: str | None) -> dict:
            return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "leaninfer",
                    "root": cfg.model_name, "parent": parent, "max_model_len": ctx, "permission": []}

        cards = [card(cfg.model_name, None)] + [card(f"{cfg.model_name}:{p}", cfg.model_name) for p in cfg.profiles]
        return {"object": "list", "data": cards}

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        _auth(request)
        tok = engine.tokenizer
        eos = [decode_special(tok, i) for i in sorted(engine.eos_ids)]
        return {"eos_token": eos[0] if eos else None, "eos_tokens": eos, "bos_token": decode_special(tok, tok.bos_id),
                "model_max_length": ctx, "chat_template": chat_template}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body: TokenizeRequest = await _body(request, TokenizeRequest)
        ids = engine.tokenizer.encode(body.prompt, add_bos=body.add_special_tokens) if body.prompt else []
        return {"tokens": ids, "count": len(ids), "max_model_len": ctx}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body: DetokenizeRequest = await _body(request, DetokenizeRequest)
        if any(not 0 <= t < engine.cfg.vocab_size for t in body.tokens):
            raise APIError(400, f"token ids must be in [0, {engine.cfg.vocab_size})", param="tokens")
        return {"prompt": decode(body.tokens)}

    def _submit(jobs: list[Job]) -> None:
        try:
            sched.submit(jobs)
        except QueueFull:
            raise APIError(429, "the server is busy: too many queued requests, retry later", "rate_limit_error",
                           headers={"Retry-After": "1"}) from None
        except RuntimeError:
            raise APIError(503, "the engine stopped", "unavailable_error") from None

    def _jobs(prompts, req, max_new, logprobs, prompt_logprobs, queue: asyncio.Queue) -> list[Job]:
        loop = asyncio.get_running_loop()

        def emitter(i: int):
            def emit(ev: dict) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (i, ev))
                except RuntimeError:  # the event loop closed (shutdown)
                    pass
            return emit

        return [Job(ids, req, max_new, emitter(i), logprobs, prompt_logprobs) for i, ids in enumerate(prompts)]

    async def _collect(request: Request, jobs: list[Job], queue: asyncio.Queue) -> list[dict]:
        """Wait for every job's final event; cancel them all if the client goes away."""
        done: dict[int, dict] = {}
        lps: dict[int, list] = {i: [] for i in range(len(jobs))}
        try:
            while len(done) < len(jobs):
                try:
                    i, ev = await asyncio.wait_for(queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError() from None
                    continue
                if ev["type"] == "error":
                    raise APIError(ev.get("status", 500), ev["message"], "invalid_request_error"
                                   if ev.get("status") == 400 else "internal_error")
                if ev["type"] == "delta":
                    lps[i] += ev["logprobs"]
                elif ev["type"] == "done":
                    done[i] = {**ev, "logprobs": lps[i] + ev["logprobs"]}
        finally:
            if len(done) < len(jobs):
                for j in jobs:
                    sched.cancel(j)
        return [done[i] for i in range(len(jobs))]

    async def _sse(jobs: list[Job], queue: asyncio.Queue, chunk, final_usage: bool, role: bool = False
                   ) -> AsyncIterator[str]:
        """Server-sent events: (chat: a role chunk first) one chunk per text delta, a last chunk per prompt with its
        finish_reason, (include_usage: a usage chunk), then [DONE]. Stops the jobs if the client goes away."""
        finished: list[dict] = []
        try:
            if role:
                for i in range(len(jobs)):
                    yield f"data: {json.dumps(chunk(i, None, None, None, role=True))}\n\n"
            while len(finished) < len(jobs):
                i, ev = await queue.get()
                if ev["type"] == "error":
                    yield f"data: {json.dumps(APIError(ev.get('status', 500), ev['message']).body())}\n\n"
                    break
                if ev["type"] == "delta" and ev["text"]:
                    yield f"data: {json.dumps(chunk(i, ev['text'], ev['logprobs'], None))}\n\n"
                elif ev["type"] == "done":
                    finished.append(ev)
                    yield f"data: {json.dumps(chunk(i, '', ev['logprobs'], ev))}\n\n"
            if final_usage and len(finished) == len(jobs):
                yield f"data: {json.dumps({**chunk(0, '', None, None), 'choices': [], 'usage': usage(finished)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if len(finished) < len(jobs):
                for j in jobs:
                    sched.cancel(j)

    def _max_new(requested: int | None, default: int) -> int:
        return default if requested is None else requested

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionRequest = await _body(request, CompletionRequest)
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.stream_options and not body.stream:
            raise APIError(400, "stream_options needs stream=true", param="stream_options")
        max_new = _max_new(body.max_tokens, 16)
        if max_new == 0 and not body.echo:
            raise APIError(400, "max_tokens=0 needs echo=true", param="max_tokens")
        prompts = completion_prompts(engine, body, cfg)
        for ids, _ in prompts:
            check_lengths(ids, max_new, cfg, ctx)
        req = build_request(engine, body, max_new, cfg)
        if body.logprobs is not None and not req.plain:
            raise APIError(400, "logprobs need plain decoding (no method, MoE routing or KV policy)", param="logprobs")
        queue: asyncio.Queue = asyncio.Queue()
        echo_lps = body.logprobs if body.echo and body.logprobs is not None else None
        jobs = _jobs([ids for ids, _ in prompts], req, max_new, body.logprobs, echo_lps, queue)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i, text, lps, done, role=False):
            lp = legacy_logprobs(decode, None, None, lps) if lps and body.logprobs is not None else None
            choice = {"index": i, "text": text or "", "logprobs": lp,
                      "finish_reason": done["finish_reason"] if done else None}
            return {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name,
                    "choices": [choice]}

        _submit(jobs)
        if body.stream:
            include = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(jobs, queue, chunk, include), media_type="text/event-stream")
        results = await _collect(request, jobs, queue)
        choices = []
        for i, ((ids, text), ev) in enumerate(zip(prompts, results)):
            prompt_text = (text if text is not None else decode(ids)) if body.echo else ""
            lp = None
            if body.logprobs is not None:
                lp = legacy_logprobs(decode, ids if body.echo else None, ev["prompt_logprobs"], ev["logprobs"],
                                     0 if body.echo else len(text if text is not None else decode(ids)))
            choices.append({"index": i, "text": prompt_text + ev["text"], "logprobs": lp,
                            "finish_reason": ev["finish_reason"], "stop_reason": None})
        return {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name,
                "choices": choices, "usage": usage(results)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatRequest = await _body(request, ChatRequest)
        if body.stream_options and not body.stream:
            raise APIError(400, "stream_options needs stream=true", param="stream_options")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        try:
            ids = chat.ids([(m.role, m.text()) for m in body.messages])
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        requested = body.max_completion_tokens or body.max_tokens
        max_new = requested if requested is not None else max(1, min(cfg.max_tokens_cap, ctx - len(ids)))
        check_lengths(ids, max_new, cfg, ctx)
        req = build_request(engine, body, max_new, cfg)
        if body.logprobs and not req.plain:
            raise APIError(400, "logprobs need plain decoding (no method, MoE routing or KV policy)", param="logprobs")
        queue: asyncio.Queue = asyncio.Queue()
        jobs = _jobs([ids], req, max_new, (body.top_logprobs or 0) if body.logprobs else None, None, queue)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i, text, lps, done, role=False):
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "logprobs": chat_logprobs(decode, lps) if lps else None,
                      "finish_reason": done["finish_reason"] if done else None}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": cfg.model_name,
                    "choices": [choice]}

        _submit(jobs)
        if body.stream:
            include = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(jobs, queue, chunk, include, role=True), media_type="text/event-stream")
        (ev,) = await _collect(request, jobs, queue)
        choice = {"index": 0, "message": {"role": "assistant", "content": ev["text"]},
                  "logprobs": chat_logprobs(decode, ev["logprobs"]) if body.logprobs else None,
                  "finish_reason": ev["finish_reason"]}
        return {"id": rid, "object": "chat.completion", "created": created, "model": cfg.model_name,
                "choices": [choice], "usage": usage([ev])}

    return app
