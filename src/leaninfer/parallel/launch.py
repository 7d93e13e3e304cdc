"""Run a function on N tensor-parallel ranks: spawned here (`leaninfer generate --tp N`) or launched by torchrun.

`run_ranks(fn, world, ...)` starts `world` processes (spawn, gloo on 127.0.0.1, a free port), calls
`fn(comm, *args)` on each and returns rank 0's result. A rank that raises or dies makes the call raise
`TPLaunchError` naming the rank; the survivors' collectives fail on the peer's closed connection or, at the
latest, after the process group's timeout, so nothing hangs. Under torchrun (WORLD_SIZE set in the
environment) `in_group(fn, ...)` runs `fn` as this process's rank of the already-launched group instead.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from leaninfer.parallel.comm import DEFAULT_TIMEOUT_S, Comm, env_world, free_port, init_gloo

log = logging.getLogger(__name__)


class TPLaunchError(RuntimeError):
    """A tensor-parallel rank failed (raised, died, or timed out in a collective)."""


def _threads(world: int, threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 1) // world)


def _rank_main(rank: int, fn: Callable, world: int, port: int, timeout_s: float, threads: int, out: str,
               results, received, args: tuple) -> None:
    torch.set_num_threads(threads)
    try:
        comm = init_gloo(rank, world, "127.0.0.1", port, timeout_s)
        result = fn(comm, *args)
        comm.barrier()  # every rank is past its last collective before any rank leaves
        if rank == 0:  # over a pipe to the parent, never through a file another process could write
            results.put(result)
            received.wait(timeout_s)  # tensors travel as shared memory: stay alive until the parent has them
    except BaseException as e:  # leave the cause for the parent, which reports the first rank that failed
        Path(out).with_name(f"rank{rank}.err").write_text(f"rank {rank}: {type(e).__name__}: {e}")
        _leave_group()
        raise
    # A finished rank leaves at once: tearing down gloo's worker threads in C++ static destructors while a
    # peer closes its sockets can abort the process ("terminate called without an active exception") after
    # the work is done. Nothing is left to flush but the standard streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn: Callable[..., Any], world: int, *args, timeout_s: float = DEFAULT_TIMEOUT_S,
              threads: int | None = None) -> Any:
    """`fn(comm, *args)` on `world` spawned ranks (fn must be importable: spawn pickles it by name); returns
    rank 0's result. world 1 runs in this process with a no-op `Comm`."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if world == 1:
        return fn(Comm(), *args)
    import torch.multiprocessing as mp

    from leaninfer.models.kernels import native_available

    native_available()  # build the C++ kernels once here, so the ranks only load them
    with tempfile.TemporaryDirectory(prefix="leaninfer-tp-") as tmp:
        out = os.path.join(tmp, "rank0")
        spawn_ctx = mp.get_context("spawn")
        results, received = spawn_ctx.SimpleQueue(), spawn_ctx.Event()
        got: list = []
        try:
            procs = mp.spawn(_rank_main, nprocs=world, join=False, args=(
                fn, world, free_port(), timeout_s, _threads(world, threads), out, results, received, args))
            while not procs.join(timeout=0.05):  # take the result while rank 0 waits for it
                if not got and not results.empty():
                    got.append(results.get())
                    received.set()
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise TPLaunchError(f"tensor-parallel run failed: {_cause(tmp, e)}") from None
        if not got and not results.empty():
            got.append(results.get())
        if not got:
            raise TPLaunchError("tensor-parallel run ended without a result from rank 0")
        return got[0]


def _cause(tmp: str, e: Exception) -> str:
    """The root cause first: a rank's own error before the collective errors it caused on the others."""
    errs = sorted(Path(tmp).glob("rank*.err"))
    texts = [f.read_text() for f in errs]
    own = [t for t in texts if "CollectiveError" not in t]
    if own or texts:
        return "; ".join(own + [t for t in texts if t not in own])
    code = getattr(e, "exit_code", None)
    return f"rank {getattr(e, 'error_index', '?')} died (exit code {code})"


def launched_by_torchrun() -> bool:
    return env_world()[1] > 1


def in_group(fn: Callable[..., Any], *args, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """`fn(comm, *args)` as this process's rank of a group launched by torchrun (env:// rendezvous); returns
    its result on every rank (callers print on rank 0 only)."""
    rank, world = env_world()
    comm = init_gloo(rank, world, timeout_s=timeout_s, backend=os.environ.get("LEANINFER_TP_BACKEND", "gloo"))
    try:
        return fn(comm, *args)
    finally:
        _leave_group()


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
