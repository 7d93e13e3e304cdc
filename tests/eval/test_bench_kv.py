"""`leaninfer bench kv` end to end on a tiny random model and a tiny LoCoMo-format file."""

import json

from helpers import tiny_model_dir
from leaninfer.bench.kv import KVBenchConfig, run_kv_bench, write_kv_report
from leaninfer.cache.episodic import EpiConfig


def _data(tmp_path, n=3):
    convs = []
    for c in range(n):
        turns = [{"speaker": "w5" if i % 2 else "w6", "dia_id": f"D1:{i + 1}",
                  "text": " ".join(f"w{3 + (7 * i + j + c) % 90}" for j in range(6))} for i in range(24)]
        conv = {"speaker_a": "w5", "speaker_b": "w6", "session_1_date_time": "w9", "session_1": turns}
        qa = [{"question": f"w{10 + q} w{20 + q}", "answer": f"w{30 + q}", "evidence": ["D1:2"], "category": 4}
              for q in range(3)]
        convs.append({"sample_id": f"c{c}", "conversation": conv, "qa": qa})
    path = tmp_path / "loc.json"
    path.write_text(json.dumps(convs))
    return path


def test_bench_kv_tiny_end_to_end(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    tiny_model_dir(model_dir)
    cfg = KVBenchConfig(model=str(model_dir), precision="fp32", data=_data(tmp_path), conversations=2,
                        max_sessions=None, questions=3, ratios=[1.0, 4.0], block=32, max_new_tokens=4,
                        epi=EpiConfig(n_episodes=2, n_medoid=2), calibration_tokens=128)
    res = run_kv_bench(cfg)
    head = res["headline"]
    assert set(head) >= {"streaming_llm", "snapkv", "pyramidkv", "keydiff", "kvzip", "epicache",
                         "full_kv_peak_cache_mb"}
    for m in cfg.methods:
        for r in ("1", "4"):
            cell = head[m][r]
            assert 0 <= cell["fidelity_f1"] <= 1 and 0 <= cell["gold_f1"] <= 1
            assert 0 < cell["peak_cache_mb"] < head["full_kv_peak_cache_mb"]
    summary, convs = res["summary"], res["conversations"]
    for m in cfg.methods:
        # a budget of the whole history evicts nothing: every answer is the full-KV answer, at its likelihood
        assert head[m]["1"]["fidelity_f1"] == 1.0, m
        assert abs(summary[m]["1"]["loglik_delta"]) < 1e-3, m
        assert head[m]["4"]["peak_cache_mb"] < head[m]["1"]["peak_cache_mb"], m
        # the table is the mean over every question of every conversation, against that conversation's full KV
        answers = [a for c in convs for a in c["runs"][m]["4"]["answers"]]
        assert len(answers) == 2 * 3
        assert summary[m]["4"]["fidelity_f1"] == sum(a["fidelity_f1"] for a in answers) / len(answers)
        fulls = [a for c in convs for a in c["full"]["answers"]]
        assert all(a["loglik_delta"] == a["loglik"] - f["loglik"] for a, f in zip(answers, fulls))
    windowed = head["full_kv_windowed_peak_cache_mb"]
    assert res["targets"]["peak_vs_windowed_full"] == summary["epicache"]["4"]["peak_vs_windowed_full"]
    assert max(summary[m]["1"]["peak_cache_mb"] for m in cfg.methods) <= windowed * 1.01
    assert res["targets"] and len(res["sensitivity"]) == 3
    paths = write_kv_report(res, tmp_path / "kv.json")
    assert all(p.exists() for p in paths) and "Fidelity F1" in paths[1].read_text()


def test_cli_registered_and_rejects_bad_method():
    from typer.testing import CliRunner

    from leaninfer.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["bench", "kv", "--help"]).exit_code == 0
    assert runner.invoke(app, ["kv", "ask", "--help"]).exit_code == 0
    res = runner.invoke(app, ["bench", "kv", "--methods", "nope", "--json", "/tmp/never.json"])
    assert res.exit_code != 0 and "unknown methods" in res.output + str(res.exception)
