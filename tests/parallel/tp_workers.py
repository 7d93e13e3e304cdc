"""Functions the spawned ranks of the TP tests run (importable by name, as spawn requires)."""

from __future__ import annotations

import os

import torch

from leaninfer.generate.loop import decode_ar
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.parallel.model import build_rank_model
from leaninfer.parallel.shard import shard_state


def rank_outputs(comm, cases: list[dict]) -> list[dict]:
    """Per case {cfg, state, tokens, drop, precision}: this rank's full logits, 6 greedy tokens, comm calls."""
    out = []
    for case in cases:
        cfg = case["cfg"]
        shard = shard_state(case["state"], cfg, comm.world, comm.rank)
        model = build_rank_model(cfg, shard, comm, case.get("precision", "fp32"), tuple(case.get("drop", ())))
        comm.stats.reset()
        with torch.inference_mode():
            logits = model(case["tokens"]).logits
        calls = comm.stats.calls
        greedy = decode_ar(model, case["tokens"][0].tolist(), 6, SamplingConfig(), set()).tokens
        out.append({"logits": logits, "greedy": greedy, "calls": calls})
    return out


def die_on_rank1(comm, how: str) -> int:
    """Rank 1 fails before the first collective (raises, or exits without a word); rank 0 all-reduces."""
    if comm.rank == 1:
        if how == "raise":
            raise RuntimeError("rank 1 failed on purpose")
        os._exit(0)
    return int(comm.all_reduce(torch.ones(4))[0])
