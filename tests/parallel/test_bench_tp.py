"""`leaninfer bench tp` end to end on a tiny model: the headline the checks rely on, the report files and the
SPD plan that `generate --spd N` then reads."""

from __future__ import annotations

import json

from helpers import tiny_model_dir
from leaninfer.bench.tp import TPBenchConfig, run_tp_bench, write_tp_report
from leaninfer.parallel.b2b import B2BConfig
from leaninfer.parallel.plan import SPDPlan, plan_path


def test_bench_tp_headline_and_plan(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    tiny_model_dir(model, "llama")
    cfg = TPBenchConfig.quick(model=str(model), max_new_tokens=4, calib_passages=2, test_passages=3, counts=[0, 2, 3],
                              b2b_passages=3, b2b=B2BConfig(steps=2), zero_shot_tol=-1.0,
                              distill_tol=1e9, sizes=[1, 64])
    result = run_tp_bench(cfg)
    paths = write_tp_report(result, tmp_path / "tp.json")
    assert [p.exists() for p in paths] == [True] * 3
    head = json.loads(paths[0].read_text())
    for key in ("tp1_tokens_per_s", "tp2_tokens_per_s", "comm_fraction_tp2"):
        assert head[key] > 0
    assert [x["dropped"] for x in head["spd"]] == [0, 2, 3]
    assert all({"dropped", "tokens_per_s", "ppl", "acc"} <= set(x) for x in head["spd"])
    assert head["tp_greedy_identical_to_tp1"]
    assert head["comm_model"]["llama2_70b"] and head["comm_model"]["check"]
    plan = SPDPlan.load(plan_path(model, 2))
    assert sorted(plan.order) == [0, 1, 2] and plan.tiers["sensitive"] == [0, 1, 2] and plan.weights
    assert set(plan.with_drop(2).load_weights()) and "SPD" in paths[1].read_text()
