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
