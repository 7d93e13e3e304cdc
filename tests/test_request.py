"""GenerateRequest and the one method-spec parser; Engine.generate(prompt, request) == the kwargs shorthand."""

import pytest

import leaninfer
from helpers import tiny_model_dir
from leaninfer.request import GenerateRequest, KVPolicy, MethodSpec, RoutingSpec, kv_policy


def test_method_spec_parse_and_roundtrip():
    m = MethodSpec.parse("eagle:depth=5,top_k=3,typical=true,eps=0.1,rollout=stream,exit_layer=none")
    assert m.name == "eagle"
    assert m.options == {"depth": 5, "top_k": 3, "typical": True, "eps": 0.1, "rollout": "stream", "exit_layer": None}
    assert MethodSpec.parse(str(m)) == m
    assert MethodSpec.parse("ngram") == MethodSpec("ngram") and str(MethodSpec()) == "ar"
    lab = MethodSpec.parse("eagle8=eagle:max_nodes=8")
    assert (lab.label, lab.name, lab.options, lab.display) == ("eagle8", "eagle", {"max_nodes": 8}, "eagle8")


@pytest.mark.parametrize("bad", ["eagle:depth", "eagle:depth=1,depth=2", "", "bad name", "ngram:=3"])
def test_method_spec_rejects(bad):
    with pytest.raises(ValueError):
        MethodSpec.parse(bad)


def test_request_validation():
    with pytest.raises(ValueError, match="unknown method"):
        GenerateRequest(method="nope")
    with pytest.raises(ValueError):
        GenerateRequest(max_new_tokens=0)
    with pytest.raises(ValueError):
        RoutingSpec(moe_k=0)
    with pytest.raises(ValueError, match="press"):
        KVPolicy(press="nope")
    with pytest.raises(ValueError, match="unknown kv"):
        kv_policy({"budget": 3, "colour": 1})
    assert kv_policy("snapkv:budget=16,block=8") == KVPolicy("snapkv", 16, 8)
    assert GenerateRequest(method="ar").plain and not GenerateRequest(method="ngram").plain
    r = GenerateRequest.from_kwargs(max_new_tokens=5, method="ngram:k=2", max_ngram=2, temperature=0.5, seed=3,
                                    stop="x")
    assert r.method == MethodSpec("ngram", {"k": 2, "max_ngram": 2}) and r.stop == ["x"]
    assert r.sampling.temperature == 0.5 and r.sampling.seed == 3


def test_engine_request_equals_kwargs(tmp_path):
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1, 5, 6, 7, 5, 6, 7, 5]
    a = engine.generate(prompt, max_new_tokens=12, eos=False, method="ngram", k=3)
    b = engine.generate(prompt, GenerateRequest(12, method=MethodSpec.parse("ngram:k=3"), eos=False))
    assert a.token_ids == b.token_ids and b.stats["method"] == "ngram:k=3"
    with pytest.raises(ValueError, match="either"):
        engine.generate(prompt, GenerateRequest(4), max_new_tokens=3)


def test_kv_policy_with_room_is_lossless(tmp_path):
    """A budget larger than the prompt evicts nothing: same tokens as plain decoding."""
    tiny_model_dir(tmp_path)
    engine = leaninfer.load(tmp_path, precision="fp32")
    prompt = [1] + list(range(5, 40))
    plain = engine.generate(prompt, max_new_tokens=10, eos=False).token_ids
    out = engine.generate(prompt, max_new_tokens=10, eos=False, kv="snapkv:budget=64,block=8")
    assert out.token_ids == plain and out.stats["kv_budget"] == 64
    small = engine.generate(prompt, max_new_tokens=10, eos=False, kv=KVPolicy("streaming_llm", budget=8, block=8))
    assert len(small.token_ids) == 10


def test_cli_generate_method_spec_and_kv(tmp_path):
    import json

    from typer.testing import CliRunner

    from leaninfer.cli import app

    tiny_model_dir(tmp_path)
    base = ["generate", "w5 w6 w7 w5 w6 w7", "--model", str(tmp_path), "--max-new-tokens", "8", "--precision", "fp32",
            "--json"]
    runner = CliRunner()
    plain = runner.invoke(app, base)
    spec = runner.invoke(app, base + ["--method", "ngram:k=3,max_ngram=2", "--kv", "snapkv:budget=64,block=4"])
    assert spec.exit_code == 0, spec.output
    a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (plain, spec))
    assert a["token_ids"] == b["token_ids"] and b["method"] == "ngram:k=3,max_ngram=2" and b["kv_budget"] == 64
    bad = runner.invoke(app, base + ["--method", "ngram:depth=3"])
    assert bad.exit_code == 2 and "no option" in bad.output
