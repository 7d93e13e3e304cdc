"""Timing on TP ranks: all-reduce latency against message size, and decode speed with k SPD blocks.

`time_rank` runs on every rank (spawned by `launch.run_ranks`): it measures the collectives first, then builds
the rank's engine once and decodes the same prompts with 0, k1, k2, ... blocks dropping their attention sync
point (timing does not depend on the weights, so B2B weights are not loaded here)."""

from __future__ import annotations

import time

import torch

from leaninfer.bench.report import median
from leaninfer.parallel.comm import Comm


def allreduce_latency(comm: Comm, sizes: list[int], repeats: int = 20) -> list[dict]:
    """Median seconds of an fp32 all-reduce of each size (values), after a warm-up."""
    rows = []
    for n in sizes:
        x = torch.randn(n)
        for _ in range(3):
            comm.all_reduce(x)
        times = []
        for _ in range(repeats):
            comm.barrier()
            t0 = time.perf_counter()
            comm.all_reduce(x)
            times.append(time.perf_counter() - t0)
        rows.append({"values": n, "bytes": 4 * n, "seconds": median(times)})
    return rows


def time_rank(comm: Comm, folder: str, precision: str, prompts: list[str], max_new_tokens: int,
              order: list[int], counts: list[int], sizes: list[int], repeats: int = 1) -> dict:
    """{"allreduce": [...], "runs": [{"dropped", "tokens_per_s", "tpot_s", "comm_s", "comm_calls", "e2e_s",
    "token_ids"}]} for each SPD count in `counts` (blocks dropped in `order`)."""
    from leaninfer.parallel.generate import build_rank_engine

    ar = allreduce_latency(comm, sizes) if comm.world > 1 else []
    engine = build_rank_engine(comm, folder, precision)
    engine.generate(prompts[0], max_new_tokens=4, eos=False)  # warm-up
    runs = []
    for k in counts:
        drop = set(order[:k])
        for i, layer in enumerate(engine.model.layers):
            layer.sync_attn = i not in drop
        new = e2e = comm_s = calls = forwards = 0
        tpots, ids = [], []
        for _ in range(repeats):
            for prompt in prompts:
                comm.barrier()
                comm.stats.reset()
                out = engine.generate(prompt, max_new_tokens=max_new_tokens, eos=False)
                s = out.stats
                new, e2e, forwards = new + s["new_tokens"], e2e + s["e2e_s"], forwards + s["target_forwards"]
                comm_s, calls = comm_s + comm.stats.seconds, calls + comm.stats.calls
                tpots.append(s["tpot_s"])
                ids.append(out.token_ids)
        runs.append({"dropped": k, "tokens_per_s": new / e2e, "tpot_s": median(tpots), "e2e_s": e2e,
                     "comm_s": comm_s, "comm_fraction": comm_s / e2e, "comm_calls_per_forward": calls / forwards,
                     "comm_s_per_forward": comm_s / forwards, "token_ids": ids})
    return {"world": comm.world, "threads": torch.get_num_threads(), "allreduce": ar, "runs": runs}
