"""Server metrics in the Prometheus text format, named as vLLM names them under a `leaninfer:` prefix."""

from __future__ import annotations

import threading
import time
from collections import deque

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]


class Metrics:
    """Counters, gauges and histograms; `finished(reason, job, t_end)` is called once per request."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.prompt_tokens = self.generation_tokens = 0
        self.waiting = self.running = 0
        self.ttft, self.tpot, self.e2e = Histogram(), Histogram(), Histogram()
        self.window_s = window_s
        self.recent: deque[tuple[float, int]] = deque()  # (finish time, generated tokens)

    def set_queue(self, waiting: int, running: int) -> None:
        self.waiting, self.running = waiting, running

    def finished(self, reason: str, job, t_end: float) -> None:
        with self.lock:
            self.requests[reason] = self.requests.get(reason, 0) + 1
            if not t_end:
                return
            n = len(job.tokens)
            self.prompt_tokens += len(job.ids)
            self.generation_tokens += n
            self.e2e.observe(t_end - job.t_submit)
            if job.t_first is not None and n:
                self.ttft.observe(job.t_first - job.t_submit)
                if n > 1:
                    self.tpot.observe((t_end - job.t_first) / (n - 1))
            self.recent.append((time.perf_counter(), n))

    def tokens_per_s(self) -> float:
        now = time.perf_counter()
        while self.recent and self.recent[0][0] < now - self.window_s:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / self.window_s

    def render(self) -> str:
        p = "leaninfer:"
        with self.lock:
            lines = [f"# TYPE {p}request_success_total counter"]
            lines += [f'{p}request_success_total{{finished_reason="{k}"}} {v}'
                      for k, v in sorted(self.requests.items())]
            lines += [f"# TYPE {p}prompt_tokens_total counter", f"{p}prompt_tokens_total {self.prompt_tokens}",
                      f"# TYPE {p}generation_tokens_total counter",
                      f"{p}generation_tokens_total {self.generation_tokens}",
                      f"# TYPE {p}num_requests_running gauge", f"{p}num_requests_running {self.running}",
                      f"# TYPE {p}num_requests_waiting gauge", f"{p}num_requests_waiting {self.waiting}",
                      f"# TYPE {p}generation_tokens_per_s gauge",
                      f"{p}generation_tokens_per_s {self.tokens_per_s():.3f}"]
            lines += self.ttft.lines(f"{p}time_to_first_token_seconds")
            lines += self.tpot.lines(f"{p}request_time_per_output_token_seconds")
            lines += self.e2e.lines(f"{p}e2e_request_latency_seconds")
        return "\n".join(lines) + "\n"
