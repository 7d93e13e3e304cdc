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


def test_demo_method_choice_requires_identical_output(monkeypatch):
    """A faster method whose tokens differ from plain decoding is never chosen; an identical faster one is."""
    from types import SimpleNamespace

    from leaninfer import demo
    from leaninfer.io.drafts import DraftNotFoundError

    class Engine:
        def __init__(self, ngram_tokens):
            self.ngram_tokens = ngram_tokens

        def draft(self, kind):
            raise DraftNotFoundError(kind)

        def generate(self, prompt, max_new_tokens, method="ar"):
            toks = [5, 6, 7] if method == "ar" else self.ngram_tokens
            return SimpleNamespace(token_ids=toks, stats={"tokens_per_s": 10.0 if method == "ar" else 30.0})

    method, speeds = demo.fastest_method(Engine([5, 6, 8]))
    assert method == "ar" and set(speeds) == {"ar"}
    method, speeds = demo.fastest_method(Engine([5, 6, 7]))
    assert method == "ngram" and speeds == {"ar": 10.0, "ngram": 30.0}


def test_demo_on_a_tiny_model_picks_an_exact_method(tmp_path):
    import leaninfer
    from leaninfer.demo import fastest_method

    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = "w5 w6 w5 w6 w5 w6"
    method, speeds = fastest_method(engine, prompt=prompt, max_new_tokens=8)
    assert engine.generate(prompt, max_new_tokens=8, method=method).token_ids == engine.generate(
        prompt, max_new_tokens=8).token_ids


def test_kv_ask_has_no_ignored_skip_option():
    res = runner.invoke(app, ["kv", "ask", "-q", "who?", "--skip", "1"])
    assert res.exit_code == 2 and "No such option" in res.output
