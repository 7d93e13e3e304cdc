"""Collectives for tensor parallelism: a thin, timed wrapper over a `torch.distributed` process group.

Gloo on CPUs (NCCL works the same way on GPUs). Every collective is timed and counted, so a run can report
the share of its time spent communicating (which includes waiting for the slowest rank). Process groups are
created with a timeout, so a rank that dies makes the others raise `CollectiveError` instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 120.0


class CollectiveError(RuntimeError):
    """A collective failed: another rank died, stalled past the timeout, or the group broke."""


@dataclass
class CommStats:
    seconds: float = 0.0
    calls: int = 0
    bytes: int = 0  # payload bytes handed to collectives by this rank

    def reset(self) -> None:
        self.seconds, self.calls, self.bytes = 0.0, 0, 0


class Comm:
    """All-reduce (sum) and all-gather over `world` ranks; world 1 is a no-op group (TP=1)."""

    def __init__(self, world: int = 1, rank: int = 0, group=None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.world, self.rank, self.group, self.timeout_s = world, rank, group, timeout_s
        self.stats = CommStats()

    def _run(self, fn, x: torch.Tensor):
        t0 = time.perf_counter()
        try:
            out = fn()
        except RuntimeError as e:  # gloo raises RuntimeError (or DistBackendError, a subclass) on timeouts / peers gone
            raise CollectiveError(f"rank {self.rank}/{self.world}: collective failed (another rank died or stalled "
                                  f"past the {self.timeout_s:.0f} s timeout): {str(e).splitlines()[0]}") from e
        self.stats.seconds += time.perf_counter() - t0
        self.stats.calls += 1
        self.stats.bytes += x.numel() * x.element_size()
        return out

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (same shape on every rank); returns a new tensor."""
        if self.world == 1:
            return x
        y = x.contiguous().clone()
        self._run(lambda: dist.all_reduce(y, group=self.group), y)
        return y

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` along the last dim (rank order)."""
        if self.world == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._run(lambda: dist.all_gather(parts, x, group=self.group), x)
        return torch.cat(parts, dim=-1)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's integer on every rank (e.g. a sampling seed drawn on rank 0)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        self._run(lambda: dist.broadcast(t, 0, group=self.group), t)
        return int(t[0])

    def barrier(self) -> None:
        if self.world > 1:
            t = torch.zeros(1)
            self._run(lambda: dist.all_reduce(t, group=self.group), t)


def init_gloo(rank: int, world: int, addr: str = "127.0.0.1", port: int | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S, backend: str = "gloo") -> Comm:
    """Join (or create) the default process group. With `port` None the rendezvous comes from the environment
    (torchrun sets MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE)."""
    if world == 1:
        return Comm()
    if port is not None:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Comm(world, rank, None, timeout_s)


def env_world() -> tuple[int, int]:
    """(rank, world) set by torchrun, or (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
