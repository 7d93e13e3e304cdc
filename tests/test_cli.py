"""CLI smoke tests on a tiny model folder (the CLI only parses, calls the library and prints)."""

import json

from typer.testing import CliRunner

from helpers import tiny_model_dir
from leaninfer.cli import app

runner = CliRunner()


def test_generate_json(tmp_path):
    tiny_model_dir(tmp_path)
    res = runner.invoke(app, ["generate", "w5 w6 w7", "--model", str(tmp_path), "--max-new-tokens", "6",
                              "--precision", "fp32", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(d["token_ids"]) <= 6 and isinstance(d["text"], str)
    for key in ("tokens_per_s", "mean_accepted_tokens", "ttft_s", "tpot_s"):
        assert key in d


def test_generate_streams_text(tmp_path):
    tiny_model_dir(tmp_path)
    res = runner.invoke(app, ["generate", "w5 w6", "--model", str(tmp_path), "--max-new-tokens", "4",
                              "--precision", "fp32", "--temperature", "0.8", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "tokens/s" in res.output


def test_generate_bad_model_path(tmp_path):
    res = runner.invoke(app, ["generate", "hi", "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such model" in res.output


def test_generate_rejects_bad_option(tmp_path):
    res = runner.invoke(app, ["generate", "hi", "--max-new-tokens", "0"])
    assert res.exit_code != 0


def test_info_json(tmp_path):
    tiny_model_dir(tmp_path, "qwen2")
    res = runner.invoke(app, ["info", "--model", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["arch"] == "qwen2" and d["layers"] == 3 and "cache_dir" in d


def test_bench_commands_are_registered():
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0 and "decode" in res.output and "precision" in res.output


def test_demo_method_choice_requires_identical_output(tmp_path):
    import leaninfer
    from leaninfer.demo import fastest_method

    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    method, speeds = fastest_method(engine, prompt="w5 w6 w5 w6 w5 w6", max_new_tokens=8)
    assert method in speeds and "ar" in speeds
