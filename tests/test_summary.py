"""The README feature table reads the committed report JSON files."""

import json

import pytest

from leaninfer.bench.summary import END, START, feature_table, update_readme


def test_feature_table_and_readme_update(tmp_path):
    (tmp_path / "decode.json").write_text(json.dumps({"headline": {
        "ours_tokens_per_s": 30.0, "ours_precision": "int8", "speedup_vs_hf": 2.5, "hf_tokens_per_s": 12.0,
        "llamacpp_tokens_per_s": None, "ratio_to_llamacpp": None}}))
    table = feature_table(tmp_path)
    assert "30.0 tok/s at int8 = 2.50× transformers" in table and "llama.cpp not measured" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "old" not in text and "2.50×" in text and text.endswith("outro\n")
    readme.write_text("no markers")
    with pytest.raises(ValueError):
        update_readme(readme, tmp_path)


def test_readme_table_is_what_bench_summary_generates():
    """README's feature table is generated: edit the reports (or summary.py) and run `leaninfer bench summary
    --write`, never the table by hand."""
    from pathlib import Path

    from leaninfer.bench.summary import readme_table

    root = Path(__file__).resolve().parents[1]
    assert readme_table(root / "README.md") == feature_table(root / "reports")


def _kv(tmp_path, targets, windowed=45.0):
    (tmp_path / "kv.json").write_text(json.dumps({"headline": {
        "epicache": {"4": {"fidelity_f1": 0.5, "peak_cache_mb": 30.0}}, "full_kv_peak_cache_mb": 137.0,
        "full_kv_windowed_peak_cache_mb": windowed}, "targets": targets}))
    return feature_table(tmp_path)


def test_kv_row_compares_with_the_full_kv_run_that_made_the_references(tmp_path):
    table = _kv(tmp_path, {"fidelity_at_least_95pct": True, "beats_every_baseline": True,
                           "peak_vs_windowed_full": 30 / 45, "best_baseline": "keydiff"})
    assert "30.0 MB vs 45.0 MB for the full-KV run" in table and "ratio 0.67" in table
    assert "partial (peak 0.67 of the full-KV run's" in table  # 0.22 of the static cache would have passed
    table = _kv(tmp_path, {"fidelity_at_least_95pct": True, "beats_every_baseline": None,
                           "peak_vs_windowed_full": 0.3, "best_baseline": None})
    assert "| done (see report) |" in table and "best baseline n/a" in table


def test_kv_targets_without_baselines_are_not_a_win():
    from types import SimpleNamespace

    from leaninfer.bench.kv import targets

    cell = {"fidelity_f1": 0.4, "gold_f1": 0.1, "peak_vs_full": 0.27, "peak_vs_windowed_full": 0.73}
    summary = {"full": {"gold_f1": 0.2}, "epicache": {"4": cell}, "keydiff": {"4": {**cell, "fidelity_f1": 0.5}}}
    alone = targets(summary, SimpleNamespace(methods=["epicache"], ratios=[4.0]))
    assert alone["beats_every_baseline"] is None and alone["best_baseline"] is None
    assert alone["peak_at_most_third"] is False  # 0.73 of the run that produced the references
    both = targets(summary, SimpleNamespace(methods=["keydiff", "epicache"], ratios=[4.0]))
    assert both["beats_every_baseline"] is False and both["best_baseline"] == "keydiff"


def test_spec_row_shows_every_method_and_computes_its_status(tmp_path):
    row = {"speedup": 1.2, "tau": 2.0, "lossless": True}
    (tmp_path / "spec.json").write_text(json.dumps({"precision": "int8", "table": {
        "ar": {"overall": {"tokens_per_s": 20.0}}}, "headline": {
        "ngram": row, "eagle": {**row, "tau": 2.6, "speedup": 1.9}, "eagle-6": {**row, "lossless": False}}}))
    table = feature_table(tmp_path)
    assert "eagle-6 1.20× τ 2.00 (not lossless)" in table and "partial (not lossless: eagle-6)" in table
    assert "vs plain decoding (20.0 tok/s, same run)" in table
