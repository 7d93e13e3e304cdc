"""The Spec-Bench runner's bookkeeping on a tiny model and a tiny question file."""

import json

from helpers import tiny_model_dir
from leaninfer.bench.spec import SpecBenchConfig, run_spec_bench, write_spec_report


def test_spec_bench_on_tiny_model(tmp_path):
    tiny_model_dir(tmp_path / "m")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [f"w5 w6 w{7 + i} w5 w6"]})
                               for i, c in enumerate(["qa", "qa", "rag"])))
    cfg = SpecBenchConfig(model=str(tmp_path / "m"), precision="fp32", questions=qfile, max_new_tokens=8,
                          per_category=None, methods=["ngram", "ngram_tree", "t=ngram:k=2", "eagle"])
    result = run_spec_bench(cfg)
    assert result["categories"] == ["qa", "rag"]
    for m in ("ngram", "ngram_tree", "t"):
        assert result["headline"][m]["lossless"] is True
        assert result["headline"][m]["tau"] >= 1.0
        assert result["step_time"][m]["verify_ms"] > 0
    assert "eagle" in result["skipped"] and "draft train --kind eagle" in result["skipped"]["eagle"]
    assert abs(result["table"]["ar"]["overall"]["tau"] - 1.0) < 1e-9
    paths = write_spec_report(result, tmp_path / "spec.json")
    assert all(p.exists() for p in paths)
