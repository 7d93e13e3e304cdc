"""Issue 20 items 4, 5, 10-12: arguments are validated at the API edge with one clear error before any work,
method options that size memory are bounded, stop strings are whole strings and never stream in part."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import leaninfer
from leaninfer.generate.loop import TextStream
from leaninfer.validate import OPTION_BOUNDS, kv_cache_bytes, validate_generate_args, validate_method_options


@pytest.mark.parametrize("prompt, error", [
    ([2, 651.9], TypeError), ([2, 5.0], TypeError), (b"hello", TypeError), (["w5", "w6"], TypeError),
    ([True, 5], TypeError), ([], ValueError), ([5, 96], ValueError), ([-1], ValueError), (None, TypeError),
    (3.5, TypeError),
])
def test_bad_token_ids_are_refused(engine, prompt, error):
    with pytest.raises(error):
        engine.generate(prompt, max_new_tokens=2)


def test_good_token_id_containers_are_accepted(engine):
    for ids in ([5, 6], (5, 6), np.array([5, 6]), torch.tensor([5, 6]), [np.int64(5), 6]):
        assert engine.generate(ids, max_new_tokens=1).stats["prompt_tokens"] == 2


@pytest.mark.parametrize("kw, error", [
    (dict(max_new_tokens=True), TypeError), (dict(max_new_tokens=2.0), TypeError), (dict(max_new_tokens=0), ValueError),
    (dict(temperature=math.inf), ValueError), (dict(temperature=math.nan), ValueError),
    (dict(temperature=-0.5), ValueError), (dict(temperature="0.5"), TypeError),
    (dict(top_p=1.5), ValueError), (dict(top_p=math.nan), ValueError), (dict(top_k=2.5), TypeError),
    (dict(top_k=0), ValueError), (dict(seed="abc"), TypeError), (dict(seed=1.5), TypeError),
    (dict(stop=3), TypeError), (dict(stop=["a", 3]), TypeError), (dict(method="nope"), ValueError),
    (dict(method=3), TypeError),
])
def test_bad_generate_arguments_fail_clearly_before_work(engine, kw, error, monkeypatch):
    from leaninfer.models.transformer import Decoder

    def no_forward(*a, **k):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(Decoder, "forward", no_forward)
    with pytest.raises(error):
        engine.generate("w5 w6", **{"max_new_tokens": 2, **kw})


def test_top_p_zero_keeps_only_the_most_likely_token(engine):
    greedy = engine.generate("w5 w6", max_new_tokens=6, eos=False).token_ids
    assert engine.generate("w5 w6", max_new_tokens=6, eos=False, temperature=0.9, top_p=0.0, seed=3).token_ids == greedy


@pytest.mark.parametrize("method, opts", [
    ("ngram", dict(k=10**6)), ("ngram", dict(k=0)), ("ngram", dict(k=True)), ("ngram_tree", dict(depth=10**5)),
    ("eagle", dict(max_nodes=10**6)), ("medusa", dict(depth=1000)), ("mirror", dict(gamma=10**4)),
    ("mirror", dict(kappa=5000)), ("mirror", dict(kappa=97)), ("sd", dict(k=2.0)),
])
def test_method_options_that_size_memory_are_bounded(engine, method, opts, monkeypatch):
    def no_cache(*a, **k):
        raise AssertionError("a cache was allocated before the options were checked")

    monkeypatch.setattr(type(engine.model), "new_cache", no_cache)
    with pytest.raises((ValueError, TypeError)):
        engine.generate("w5 w6", max_new_tokens=4, method=method, **opts)


def test_memory_estimate_refuses_a_cache_over_the_limit(engine, monkeypatch):
    cfg = engine.cfg
    need = kv_cache_bytes(cfg, 2 + 4 + 5)
    monkeypatch.setenv("LEANINFER_MAX_BYTES", str(need - 1))
    with pytest.raises(ValueError, match="GiB"):
        validate_method_options("ngram", {"k": 4}, cfg, 2, 4)
    monkeypatch.setenv("LEANINFER_MAX_BYTES", str(need))
    validate_method_options("ngram", {"k": 4}, cfg, 2, 4)
    assert set(OPTION_BOUNDS) >= {"k", "depth", "max_nodes", "gamma", "kappa"}


def test_roster_and_moe_k_are_checked(engine):
    from leaninfer.moe.roe import RoEConfig

    with pytest.raises(ValueError, match="MoE"):
        engine.generate("w5", max_new_tokens=2, moe_k=2)
    with pytest.raises(ValueError, match="MoE"):
        engine.generate("w5", max_new_tokens=2, roe=RoEConfig(n=10**6))


def test_load_checks_device_and_precision_before_converting(tmp_path, monkeypatch):
    from leaninfer.io import ModelLoadError, store

    def no_resolve(*a, **k):
        raise AssertionError("resolved/converted before the arguments were checked")

    monkeypatch.setattr("leaninfer.engine.resolve", no_resolve)
    monkeypatch.setattr(store, "convert_gguf", no_resolve)
    with pytest.raises(ModelLoadError, match="CPU"):
        leaninfer.load("default", precision="int8", device="cuda")
    with pytest.raises(ValueError, match="precision"):
        leaninfer.load("default", precision="int3")
    with pytest.raises(TypeError):
        leaninfer.load(3)


def test_empty_or_non_model_paths_fail_clearly(tmp_path):
    from leaninfer.io import ModelLoadError

    with pytest.raises(ModelLoadError, match="empty model name"):
        leaninfer.load("")
    with pytest.raises(ModelLoadError, match="not a model folder"):
        leaninfer.load(tmp_path)
    (tmp_path / "leaninfer.json").write_text('{"arch": "gemma3", "voc')
    with pytest.raises(ModelLoadError, match="leaninfer.json"):
        leaninfer.load(tmp_path)


def test_stop_string_is_one_sequence(engine):
    full = engine.generate("w5 w6", max_new_tokens=8, eos=False)
    words = full.text.split()
    stop = " ".join(words[2:4])  # a two-word stop string: as a list of characters it would stop at the first " "
    out = engine.generate("w5 w6", max_new_tokens=8, eos=False, stop=stop)
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.find(stop)]
    assert validate_generate_args(4, stop="France.") == ["France."]


def test_streaming_never_shows_part_of_a_stop_string():
    pieces = ["The", " capital", " of", " France", " is"]

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    got = []
    stream = TextStream(decode, ["capital of"], got.append)
    for i in range(len(pieces)):
        if stream.push(i):
            break
    assert "".join(got) == stream.finish() == "The "
    # a held-back prefix that turns out not to be a stop string is released, in order
    got.clear()
    stream = TextStream(decode, [" capital city"], got.append)
    for i in range(len(pieces)):
        stream.push(i)
    assert "".join(got) == stream.finish() == "".join(pieces)


def test_streamed_text_equals_returned_text(engine):
    full = engine.generate("w5 w6", max_new_tokens=8, eos=False).text
    stop = full.split()[3][:2]  # the start of a word: must never be streamed before the stop cuts
    got = []
    out = engine.generate("w5 w6", max_new_tokens=8, eos=False, stop=[stop], stream=got.append)
    assert "".join(got) == out.text


_ints = st.one_of(st.integers(-3, 300), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none())


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(st.text(max_size=12), st.lists(_ints, max_size=6), st.binary(max_size=4)),
       max_new_tokens=_ints, temperature=st.one_of(st.floats(allow_nan=True), st.integers(-2, 3), st.text(max_size=2)),
       top_k=st.one_of(st.none(), _ints), top_p=st.one_of(st.none(), st.floats(allow_nan=True)),
       seed=st.one_of(st.none(), _ints),
       stop=st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=2), st.integers()))
def test_fuzz_generate_arguments(engine, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop):
    """Any argument mix either generates at most max_new_tokens tokens or raises one clear ValueError/TypeError."""
    try:
        out = engine.generate(prompt, max_new_tokens=max_new_tokens if not isinstance(max_new_tokens, int)
                              or isinstance(max_new_tokens, bool) else min(max_new_tokens, 4),
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop)
    except (ValueError, TypeError) as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(out.token_ids) <= 4 and isinstance(out.text, str)
    assert all(0 <= t < engine.cfg.vocab_size for t in out.token_ids)


@pytest.mark.parametrize("kv, error", [
    ("snapkv:budget=0", ValueError), ("snapkv:budget=10000000", ValueError), ("snapkv:block=10000000", ValueError),
    (dict(press="snapkv", budget=2.5), TypeError), (dict(press="snapkv", budget=True), TypeError),
    (dict(press="snapkv", budget=8, sinks=-1), ValueError), (dict(press="snapkv", sinks=1.0), TypeError),
])
def test_kv_budgets_are_typed_and_capped_at_the_context(engine, kv, error, monkeypatch):
    def no_cache(*a, **k):
        raise AssertionError("a cache was allocated before the KV policy was checked")

    monkeypatch.setattr(type(engine.model), "new_cache", no_cache)
    with pytest.raises(error, match="kv"):
        engine.generate("w5 w6", max_new_tokens=2, kv=kv)
