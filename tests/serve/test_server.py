"""`leaninfer serve` with the official openai client against a loopback server on a tiny random model."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest


def client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60, **kw)


def post(server, path, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_health_metrics(server):
    assert [m.id for m in client(server).models.list().data] == ["tiny", "tiny:ngram"]
    with urllib.request.urlopen(server.url + "/health") as r:
        assert r.status == 200
    client(server).completions.create(model="tiny", prompt="w5 w6", max_tokens=3, temperature=0)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    for name in ("request_success_total", "time_to_first_token_seconds_count", "request_time_per_output_token",
                 "num_requests_waiting", "generation_tokens_per_s"):
        assert "leaninfer:" + name in text


def test_completion_equals_engine_generate(server, tiny_engine):
    c = client(server)
    for prompt in ["w5 w6 w7", "w9 w10 w11 w12 w40"]:
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
        ref = tiny_engine.generate(prompt, max_new_tokens=10)
        assert r.choices[0].text == ref.text
        assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.prompt_tokens == len(ref.stats and
                                                                                                 tiny_engine.encode(prompt))
        assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")


def test_seeded_sampling_equals_engine(server, tiny_engine):
    r = client(server).completions.create(model="tiny", prompt="w5 w6", max_tokens=8, temperature=0.9, top_p=0.9,
                                          seed=11)
    assert r.choices[0].text == tiny_engine.generate("w5 w6", max_new_tokens=8, temperature=0.9, top_p=0.9,
                                                     seed=11).text


def test_stop_and_token_prompts(server, tiny_engine):
    c = client(server)
    free = tiny_engine.generate([1, 5, 6], max_new_tokens=8, eos=False)
    word = free.text.split()[2]
    r = c.completions.create(model="tiny", prompt=[1, 5, 6], max_tokens=8, temperature=0, stop=[word],
                             extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and word not in r.choices[0].text
    r = c.completions.create(model="tiny", prompt=[[1, 5, 6], [1, 7]], max_tokens=4, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1] and r.usage.prompt_tokens == 5


def test_echo_logprobs_as_lm_eval_reads_them(server, tiny_engine):
    """lm-eval local-completions loglikelihood payload: token ids, echo, max_tokens=1, logprobs=1."""
    import torch

    ids = [1, 5, 6, 7, 8]
    r = client(server).completions.create(model="tiny", prompt=[ids], max_tokens=1, temperature=0, logprobs=1,
                                          echo=True, seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        ref = torch.log_softmax(tiny_engine.model(torch.tensor([ids])).logits[0].float(), -1)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
    assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())  # greedy token: exact equality
    only = client(server).completions.create(model="tiny", prompt=[ids], max_tokens=0, echo=True, logprobs=0)
    assert only.choices[0].logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:-1], abs=1e-5)
    assert only.usage.completion_tokens == 0
    bare = client(server).completions.create(model="tiny", prompt="w5 w6", max_tokens=0, echo=True)
    assert bare.choices[0].text == "w5 w6"


def test_streaming_completion_and_chat(server, tiny_engine):
    c = client(server)
    chunks = list(c.completions.create(model="tiny", prompt="w5 w6 w7", max_tokens=6, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == tiny_engine.generate("w5 w6 w7", max_new_tokens=6).text
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-2].choices[0].finish_reason is not None
    chat = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w5 w9"}],
                                          max_tokens=5, temperature=0, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chat)
    whole = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w5 w9"}], max_tokens=5,
                                      temperature=0)
    assert streamed == whole.choices[0].message.content and whole.choices[0].message.role == "assistant"


def test_extension_fields(server, tiny_engine):
    c = client(server)
    prompt = "w5 w6 w7 w5 w6 w7 w5 w6"
    plain = tiny_engine.generate(prompt, max_new_tokens=12, eos=False).text
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                             extra_body={"ignore_eos": True, "leaninfer": {"method": "ngram:k=3"}})
    assert r.choices[0].text == plain and r.usage.mean_accepted_tokens >= 1.0
    r = c.completions.create(model="tiny:ngram", prompt=prompt, max_tokens=12, temperature=0,
                             extra_body={"ignore_eos": True})  # a profile model id
    assert r.choices[0].text == plain and r.usage.mean_accepted_tokens > 1.0
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                             extra_body={"ignore_eos": True, "leaninfer": {"kv": "snapkv:budget=64,block=4"}})
    assert r.choices[0].text == plain
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0,
                             extra_body={"leaninfer": {"kv_budget": 2}})
    assert r.usage.completion_tokens >= 1


@pytest.mark.parametrize("body, param", [
    ({"prompt": "w5", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "w5", "temperature": 5}, "temperature"),
    ({"prompt": "w5", "leaninfer": {"method": "nope"}}, "leaninfer"),
    ({"prompt": "w5", "leaninfer": {"colour": 1}}, "leaninfer.colour"),
    ({"prompt": "w5", "leaninfer": {"moe_k": 2}}, "leaninfer"),
    ({"prompt": "w5", "max_tokens": 1000}, "max_tokens"),
    ({"prompt": " ".join(["w5"] * 300), "max_tokens": 4}, "prompt"),
    ({"prompt": [1, 5, 999]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "w5", "n": 3}, "n"),
    ({}, "prompt"),
])
def test_bad_input_is_400_with_openai_error(server, body, param):
    status, err = post(server, "/v1/completions", body)
    assert status == 400, err
    assert set(err["error"]) >= {"message", "type", "param", "code"} and err["error"]["param"] == param
    assert "Traceback" not in err["error"]["message"] and "/" not in err["error"]["message"]


def test_error_shapes(server):
    assert post(server, "/v1/completions", None, raw=b"{not json")[0] == 400
    status, err = post(server, "/v1/completions", None, raw=json.dumps({"prompt": "w5 " * 10000}).encode())
    assert status == 413 and "error" in err
    status, err = post(server, "/v1/chat/completions", {"messages": []})
    assert status == 400 and err["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="tiny", prompt=" ".join(["w5"] * 300), max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client(server).embeddings.create(model="tiny", input="w5")
    status, err = post(server, "/v1/completions", {"prompt": "w5", "leaninfer": {"method": "eagle"}})
    assert status == 400 and "draft" in err["error"]["message"] and "/" not in err["error"]["message"]


def test_tokenizer_endpoints(server, tiny_engine):
    status, tok = post(server, "/tokenize", {"prompt": "w5 w6", "add_special_tokens": False})
    assert status == 200 and tok["tokens"] == [5, 6]
    assert post(server, "/detokenize", {"tokens": [5, 6]})[1]["prompt"] == "w5 w6"
    with urllib.request.urlopen(server.url + "/tokenizer_info") as r:
        assert json.loads(r.read())["eos_token"] == "<eos>"


def test_load_8_clients_64_requests(server, tiny_engine):
    """64 greedy requests from 8 concurrent clients: every answer arrives, none is mixed up, each equals
    Engine.generate for its own prompt."""
    import random

    rng = random.Random(1)
    prompts = [" ".join(f"w{rng.randrange(3, 96)}" for _ in range(rng.randrange(1, 12))) for _ in range(64)]
    lengths = [rng.randrange(1, 16) for _ in prompts]
    c = client(server)

    def one(i):
        stream = i % 4 == 0
        kw = dict(model="tiny", prompt=prompts[i], max_tokens=lengths[i], temperature=0, user=str(i))
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw) if ch.choices)
        return c.completions.create(**kw).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(64), timeout=240))
    ref = [tiny_engine.generate(p, max_new_tokens=n).text for p, n in zip(prompts, lengths)]
    assert got == ref


def test_queue_full_is_429(tiny_engine):
    from conftest import Running, free_port

    from leaninfer.serve import ServeConfig

    cfg = ServeConfig(port=free_port(), model_name="tiny", max_batch=1, max_queue=1, max_model_len=256)
    with Running(tiny_engine, cfg) as s:
        c = client(s)
        with ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(c.completions.create, model="tiny", prompt="w5 w6", max_tokens=60, temperature=0,
                                extra_body={"ignore_eos": True}) for _ in range(6)]
            errors = [f.exception(timeout=120) for f in futs]
        assert any(isinstance(e, openai.RateLimitError) for e in errors)
        assert any(e is None for e in errors)


def test_client_disconnect_cancels(server):
    import time

    c = client(server)
    stream = c.completions.create(model="tiny", prompt="w5 w6", max_tokens=60, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    sched = server.app.state.scheduler
    deadline = time.time() + 10
    while time.time() < deadline and (sched.rows or sched.waiting):
        time.sleep(0.05)
    assert not sched.rows and server.app.state.metrics.requests.get("abort", 0) >= 1


def test_bench_serve_level_and_report(server, tmp_path):
    from leaninfer.bench.serve import ServeBenchConfig, run_level, write_serve_report

    cfg = ServeBenchConfig(model="tiny", clients=[1, 2], requests=4, max_tokens=4)
    port = int(server.url.rsplit(":", 1)[1])
    levels = [run_level(port, ["w5 w6", "w7 w8 w9"], c, cfg, {"ignore_eos": True}) for c in cfg.clients]
    assert [lv["output_tokens"] for lv in levels] == [16, 16] and levels[1]["ttft_p50_ms"] > 0
    pooled = run_level(port, ["w5"], 2, cfg, {"ignore_eos": True}, [(levels[1].pop("_runs"), levels[1]["wall_s"])])
    assert pooled["requests"] == 8 and pooled.pop("_runs")
    levels[0].pop("_runs")
    paths = write_serve_report({"config": vars(cfg), "machine": {"processor": "x", "cores": 2, "date": "d"},
                                "results": {"leaninfer": levels}}, tmp_path / "serve.json")
    assert all(p.exists() for p in paths) and "TTFT p50" in paths[1].read_text()


def test_api_key(tiny_engine):
    from conftest import Running, free_port

    from leaninfer.serve import ServeConfig

    with Running(tiny_engine, ServeConfig(port=free_port(), model_name="tiny", api_key="s3cret")) as s:
        with pytest.raises(openai.AuthenticationError):
            client(s).models.list()
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(model="tiny", prompt="w5", max_tokens=2, temperature=0).choices
        with urllib.request.urlopen(s.url + "/health") as r:  # health stays open
            assert r.status == 200
