"""The engine thread: one thread owns torch and runs every request; the HTTP side only submits jobs and reads
their events.

Plain requests (greedy or sampled decoding, no method, routing or KV policy) share one continuous batch
(`generate.batch.BatchDecoder`): they join between steps, each with its own sampler and seed, and leave when done
or cancelled. Any other request (a speculative method, a MoE k, a KV budget) runs alone through
`Engine.generate` between two batch steps. Waiting jobs form a bounded FIFO queue: `submit` raises `QueueFull`
when it is full.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from leaninfer.generate.batch import BatchDecoder
from leaninfer.generate.loop import TextStream
from leaninfer.generate.sampling import make_generator, next_token
from leaninfer.request import GenerateRequest
from leaninfer.serve.logprobs import prompt_logprobs, token_logprobs
from leaninfer.serve.metrics import Metrics

log = logging.getLogger(__name__)


_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[\w.-]+[/\\])+[\w.-]*")


def public_message(msg: str) -> str:
    """An error message fit for a client: file paths replaced by <path>."""
    return _PATH.sub("<path>", msg)


class QueueFull(Exception):
    pass


class Cancelled(Exception):
    pass


@dataclass
class Job:
    """One prompt to run. `emit(event)` receives dicts from the engine thread: {"type": "delta", "text",
    "logprobs"}, then {"type": "done", "text", "finish_reason", "usage", "prompt_logprobs"} or {"type": "error",
    "message"}. max_new = 0 only scores the prompt (echo)."""

    ids: list[int]
    request: GenerateRequest | None
    max_new: int
    emit: Callable[[dict], None]
    logprobs: int | None = None  # top-n log-probabilities of each generated token
    prompt_logprobs: int | None = None  # top-n of each prompt token (echo)
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.perf_counter)
    # run state (engine thread)
    tokens: list[int] = field(default_factory=list)
    lps: list = field(default_factory=list)
    sent_lps: int = 0
    pending: int = -1
    t_first: float | None = None
    gen: torch.Generator | None = None
    text: TextStream | None = None
    prompt_lps: list | None = None


class Scheduler:
    def __init__(self, engine, max_batch: int = 8, max_len: int = 2048, max_queue: int = 64,
                 metrics: Metrics | None = None) -> None:
        self.engine, self.max_queue = engine, max_queue
        self.metrics = metrics or Metrics()
        self.batch = BatchDecoder(engine.model, max_batch, max_len)
        self.rows: list[Job] = []
        self.waiting: deque[Job] = deque()
        self.cv = threading.Condition()
        self.alive = True
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="leaninfer-engine", daemon=True)
        self.thread.start()

    # --- HTTP side ------------------------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs (all or none); raises QueueFull when the waiting queue would exceed max_queue."""
        with self.cv:
            if not self.alive:
                raise RuntimeError("the engine stopped")
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull()
            self.waiting.extend(jobs)
            self.metrics.set_queue(len(self.waiting), len(self.rows))
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        with self.cv:
            self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.alive = False
            self.cv.notify()
        self.thread.join(timeout=10)

    # --- engine thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cv:
                while self.alive and not self.waiting and not self.rows:
                    self.cv.wait()
                if not self.alive:
                    break
                self._drop_cancelled_waiting()
                head = self.waiting[0] if self.waiting else None
                if head is not None and (not self._plain(head) or not self.batch.full):
                    self.waiting.popleft()
                else:
                    head = None
                self.metrics.set_queue(len(self.waiting), len(self.rows) + (head is not None))
            try:
                if self.batch.device.type == "cpu":
                    self.engine.threads.apply()  # the cores other processes leave free (generate/threads.py)
                if head is not None:
                    self._start(head)
                elif self.rows:
                    self._step()
                self.metrics.set_queue(len(self.waiting), len(self.rows))
            except Exception as e:  # a failing forward fails its jobs, never the server
                log.exception("engine step failed")
                for job in ([head] if head is not None and head not in self.rows else []):
                    self._fail(job, e)
                for job in list(self.rows):
                    self._fail(job, e)
                self.rows.clear()
                self.batch = BatchDecoder(self.engine.model, self.batch.cache.batch, self.batch.cache.max_len)
        for job in list(self.rows) + list(self.waiting):
            job.emit({"type": "error", "message": "the server is shutting down"})

    def _drop_cancelled_waiting(self) -> None:
        for job in [j for j in self.waiting if j.cancelled.is_set()]:
            self.waiting.remove(job)
            self.metrics.finished("abort", job, 0.0)

    @staticmethod
    def _plain(job: Job) -> bool:
        return job.max_new == 0 or job.request.plain

    def _fail(self, job: Job, e: Exception) -> None:
        job.emit({"type": "error", "message": f"generation failed: {type(e).__name__}"})
        self.metrics.finished("error", job, 0.0)

    def _start(self, job: Job) -> None:
        if job.cancelled.is_set():
            self.metrics.finished("abort", job, 0.0)
            return
        if job.max_new == 0:  # echo only: score the prompt, generate nothing
            if job.prompt_logprobs is not None:
                with torch.inference_mode():
                    hidden = self.engine.model(torch.tensor([job.ids], device=self.batch.device), logits=False).hidden
                job.prompt_lps = prompt_logprobs(self.engine.model, hidden, job.ids, job.prompt_logprobs)
            job.t_first = time.perf_counter()
            self._done(job, "length")
            return
        if not job.request.plain:
            self._solo(job)
            return
        job.gen = make_generator(job.request.sampling.seed, self.batch.device)
        job.text = self._text_stream(job)
        row, logits, hidden = self.batch.join(job.ids, hidden=job.prompt_logprobs is not None)
        if hidden is not None:
            job.prompt_lps = prompt_logprobs(self.engine.model, hidden, job.ids, job.prompt_logprobs)
        self.rows.append(job)
        if self._accept(job, logits):
            self._leave(row)

    def _text_stream(self, job: Job) -> TextStream:
        def on_text(text: str) -> None:
            lps = job.lps[job.sent_lps :]
            job.sent_lps = len(job.lps)
            job.emit({"type": "delta", "text": text, "logprobs": lps})

        return TextStream(self.engine.tokenizer.decode, job.request.stop, on_text)

    def _step(self) -> None:
        logits = self.batch.step([j.pending for j in self.rows])  # (n, V)
        done = [self._accept(job, logits[r : r + 1]) for r, job in enumerate(self.rows)]
        for r in reversed(range(len(self.rows))):
            if done[r]:
                self._leave(r)

    def _accept(self, job: Job, logits: torch.Tensor) -> bool:
        """Pick the next token of `job` from its logits (1, V); True when the job is finished."""
        if job.cancelled.is_set():
            self.metrics.finished("abort", job, 0.0)
            return True
        req = job.request
        tok = int(next_token(logits, req.sampling, job.gen)[0])
        if job.logprobs is not None:
            job.lps.append(token_logprobs(logits, [tok], job.logprobs)[0] + (tok,))
        job.tokens.append(tok)
        if job.t_first is None:
            job.t_first = time.perf_counter()
        reason = None
        if req.eos and tok in self.engine.eos_ids:
            reason = "stop"
        elif job.text.push(tok):
            reason = "stop"
        elif len(job.tokens) >= job.max_new:
            reason = "length"
        job.pending = tok
        if reason is not None:
            self._done(job, reason)
        return reason is not None

    def _leave(self, row: int) -> None:
        moved = self.batch.leave(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
        self.rows.pop()

    def _done(self, job: Job, reason: str, stats: dict | None = None, text: str | None = None) -> None:
        if text is None:
            text = job.text.finish() if job.text is not None else ""
        usage = {"prompt_tokens": len(job.ids), "completion_tokens": len(job.tokens),
                 "total_tokens": len(job.ids) + len(job.tokens),
                 "mean_accepted_tokens": (stats or {}).get("mean_accepted_tokens", 1.0)}
        job.emit({"type": "done", "text": text, "finish_reason": reason, "usage": usage,
                  "logprobs": job.lps[job.sent_lps :], "prompt_logprobs": job.prompt_lps, "tokens": job.tokens})
        self.metrics.finished(reason, job, time.perf_counter())

    def _solo(self, job: Job) -> None:
        """A request with a method / routing / KV policy: alone, through Engine.generate."""

        def on_text(text: str) -> None:
            if job.cancelled.is_set():
                raise Cancelled()
            if job.t_first is None:
                job.t_first = time.perf_counter()
            job.emit({"type": "delta", "text": text, "logprobs": []})

        try:
            out = self.engine.generate(job.ids, job.request, stream=on_text)
        except Cancelled:
            self.metrics.finished("abort", job, 0.0)
            return
        except ValueError as e:
            job.emit({"type": "error", "message": public_message(str(e)), "status": 400})
            self.metrics.finished("error", job, 0.0)
            return
        except FileNotFoundError:  # a method whose trained draft is not installed here
            job.emit({"type": "error", "status": 400, "message": f"method {job.request.method.name!r} needs a "
                      "trained draft that this server does not have"})
            self.metrics.finished("error", job, 0.0)
            return
        except Exception as e:  # fails this request only; the batch goes on
            log.exception("request failed")
            self._fail(job, e)
            return
        job.tokens = out.token_ids
        if job.t_first is None:
            job.t_first = time.perf_counter()
        reason = "length" if out.finish_reason == "length" else "stop"
        self._done(job, reason, out.stats, text=out.text)
