"""Generation on tensor-parallel ranks: every rank builds its shard of the model and runs the same `Engine`
code; the logits are all-gathered, so every rank picks the same token (sampling is seeded identically: a seed
drawn on rank 0 is broadcast when none is given). Rank 0's result carries the communication stats."""

from __future__ import annotations

import random
import time
from pathlib import Path

from leaninfer.parallel.comm import Comm
from leaninfer.parallel.launch import in_group, launched_by_torchrun, run_ranks
from leaninfer.parallel.plan import SPDPlan, resolve_plan


def build_rank_engine(comm: Comm, folder: str, precision: str, plan: SPDPlan | None = None):
    """This rank's `Engine` over its shard of the model in `folder` (SPD blocks and B2B weights from `plan`)."""
    from leaninfer.engine import Engine
    from leaninfer.parallel.model import load_rank_model

    drop = tuple(plan.drop) if plan else ()
    override = plan.load_weights() if plan else None
    model, tok = load_rank_model(Path(folder), comm, precision, drop, override)
    import torch

    return Engine(model, tok, precision, str(folder), threads=torch.get_num_threads())  # fixed: one per rank here


def generate_rank(comm: Comm, folder: str, precision: str, prompt, request, plan: SPDPlan | None = None,
                  stream: bool = False):
    """`Engine.generate(prompt, request)` on this rank (a `GenerateRequest`); returns the result with TP stats."""
    import dataclasses

    t0 = time.perf_counter()
    engine = build_rank_engine(comm, folder, precision, plan)
    load_s = time.perf_counter() - t0
    sampling = request.sampling
    if sampling.seed is None and sampling.temperature > 0:  # every rank must draw the same tokens
        seed = comm.broadcast_int(random.randrange(2**31))
        request = dataclasses.replace(request, sampling=dataclasses.replace(sampling, seed=seed))
    comm.barrier()
    comm.stats.reset()
    out = engine.generate(prompt, request, stream=_stdout if stream and comm.rank == 0 else None)
    s = comm.stats
    out.stats.update({"tp": comm.world, "spd_dropped": len(plan.drop) if plan else 0, "load_s": load_s,
                      "comm_s": s.seconds, "comm_calls": s.calls, "comm_bytes": s.bytes,
                      "comm_fraction": s.seconds / out.stats["e2e_s"] if out.stats["e2e_s"] else float("nan")})
    return out


def tp_generate(model: str, prompt, world: int, precision: str = "fp32", spd: str | None = None, request=None,
                stream: bool = False, **kwargs):
    """Generate on `world` ranks. Under torchrun this process is one rank (returns the result on rank 0, None on
    the others); otherwise `world` ranks are spawned here and rank 0's result is returned. `spd`: a number of
    blocks whose attention sync point is dropped, or a plan file (docs/tp.md). `request`: a `GenerateRequest`
    (or keyword shorthand as for `Engine.generate`)."""
    from leaninfer.io.store import read_model_config, resolve
    from leaninfer.request import GenerateRequest

    request = request if request is not None else GenerateRequest.from_kwargs(**kwargs)
    folder = str(resolve(model))
    cfg, _ = read_model_config(Path(folder))
    if launched_by_torchrun():
        from leaninfer.parallel.comm import env_world

        plan = resolve_plan(spd, folder, cfg, env_world()[1])
        out = in_group(generate_rank, folder, precision, prompt, request, plan, stream)
        return out if env_world()[0] == 0 else None
    plan = resolve_plan(spd, folder, cfg, world)
    return run_ranks(generate_rank, world, folder, precision, prompt, request, plan, stream)


def _stdout(text: str) -> None:
    import sys

    sys.stdout.write(text)
    sys.stdout.flush()
