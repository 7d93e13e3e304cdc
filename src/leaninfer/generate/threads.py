"""Run-time thread count: use the cores that other processes leave free.

A decode step is ~75 short parallel matmuls; when another process keeps a core busy, a worker thread placed on
that core is descheduled for whole time slices and every parallel region waits for it, so two threads run
several times slower than one. `ThreadPolicy` watches how much CPU *other* processes use (system busy time
from /proc/stat minus this process's own time from /proc/self/stat, sampled by a daemon thread every
`interval` seconds) and `apply()` sets torch's thread count to the free cores before each generation.
"""

from __future__ import annotations

import os
import threading
import time

import torch

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / _TICK


def _self_busy_s() -> float:
    t = os.times()
    return t.user + t.system


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ThreadPolicy:
    """threads="auto": free cores (at least 1); an int: that many threads, fixed."""

    def __init__(self, threads: int | str = "auto", interval: float = 0.5) -> None:
        if threads != "auto" and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ValueError(f"threads must be 'auto' or an int >= 1, got {threads!r}")
        self.threads, self.interval = threads, interval
        self.others = 0.0  # cores used by other processes, smoothed
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        last = (_system_busy_s(), _self_busy_s(), time.monotonic())
        while True:
            time.sleep(self.interval)
            now = (_system_busy_s(), _self_busy_s(), time.monotonic())
            if now[0] is None or last[0] is None:
                return
            dt = now[2] - last[2]
            others = max(0.0, (now[0] - last[0]) - (now[1] - last[1])) / max(dt, 1e-6)
            self.others = 0.5 * self.others + 0.5 * others
            last = now

    def choose(self) -> int:
        """The thread count for the next generation."""
        if self.threads != "auto":
            return int(self.threads)
        if self._thread is None and _system_busy_s() is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="leaninfer-cpu-monitor")
            self._thread.start()
        n = cores()
        return max(1, min(n, round(n - self.others)))

    def apply(self) -> int:
        n = self.choose()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n
