"""Tensor parallelism on torch.distributed (gloo on CPUs), Sync-Point Drop and a communication model.

- shard.py: per-rank layouts/configs and weight slices (pure functions)
- comm.py: timed collectives with timeouts; model.py: a rank's sharded Decoder
- spd.py: the SPD block algebra, shared by the ranks and a single-process simulation
- launch.py / generate.py: spawned ranks or torchrun; plan.py: SPD plans
- sensitivity.py, b2b.py: per-block sensitivity, tiers and block-to-block distillation
- commmodel.py: all-reduce latency model and TP / SPD latency predictions
"""
