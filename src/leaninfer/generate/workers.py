"""Where the two halves of Mirror-SD run: the target's suffix and the draft's rollouts at the same time.

`Workers(mode="serial")` runs both callables one after the other in the calling thread (the reference path).
`Workers(mode="threads")` runs the draft's callable on its own persistent thread while the target's runs in the
calling thread; torch ops release the GIL, so on a 2-core CPU the two really run in parallel. Each side gets its
own intra-op thread count (`torch.set_num_threads` is per thread for the OpenMP backend), by default one core
each. On CUDA the draft thread issues its work on a separate stream, so the two halves overlap on the device.

Every `pair` call returns both results and a `PairTiming`: how long each side computed and how long the
caller waited for the draft after its own work was done (the draft's exposed time).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

MODES = ("serial", "threads")


@dataclass
class PairTiming:
    target_s: float  # target-side compute
    draft_s: float  # draft-side compute
    exposed_s: float  # time the caller waited for the draft after finishing the target side
    wall_s: float


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS")
    return max(1, int(env)) if env and env.isdigit() else max(1, torch.get_num_threads())


class Workers:
    """Runs (target_fn, draft_fn) pairs serially or overlapped on two threads.

    target_threads / draft_threads: intra-op threads of each side in "threads" mode (default: split the
    process's thread budget, one each on 2 cores). device: the draft's device; on CUDA the draft side runs on
    its own stream."""

    def __init__(self, mode: str = "threads", target_threads: int | None = None, draft_threads: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown worker mode {mode!r}; expected one of {MODES}")
        budget = _default_threads()
        self.mode = mode
        self.target_threads = target_threads or max(1, budget // 2)
        self.draft_threads = draft_threads or max(1, budget - self.target_threads)
        if self.target_threads < 1 or self.draft_threads < 1:
            raise ValueError("thread counts must be >= 1")
        self.device = torch.device(device)
        self._pool: ThreadPoolExecutor | None = None
        self._stream = None
        self._saved_threads: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Workers:
        if self.mode == "threads":
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.target_threads)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mirror-draft", initializer=self._init_draft)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _init_draft(self) -> None:
        torch.set_num_threads(self.draft_threads)
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(device=self.device)

    # --- work ------------------------------------------------------------------------------------
    def pair(self, target_fn: Callable[[], Any], draft_fn: Callable[[], Any]) -> tuple[Any, Any, PairTiming]:
        """Run both callables; returns (target result, draft result, timing)."""
        t0 = time.perf_counter()
        if self.mode == "serial" or self._pool is None:
            rt = target_fn()
            t1 = time.perf_counter()
            rd = draft_fn()
            t2 = time.perf_counter()
            return rt, rd, PairTiming(t1 - t0, t2 - t1, t2 - t1, t2 - t0)
        future = self._pool.submit(self._timed_draft, draft_fn)
        rt = target_fn()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        t1 = time.perf_counter()
        rd, draft_s = future.result()
        t2 = time.perf_counter()
        return rt, rd, PairTiming(t1 - t0, draft_s, t2 - t1, t2 - t0)

    def _timed_draft(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self._stream is not None:
                self._stream.wait_stream(torch.cuda.default_stream(self.device))  # inputs made on the main stream
                with torch.cuda.stream(self._stream):
                    out = fn()
                self._stream.synchronize()
            else:
                out = fn()
        return out, time.perf_counter() - t0
