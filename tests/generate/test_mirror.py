"""Mirror-SD: the reuse rule on hand-built branches, greedy equality with plain decoding (forced hits and forced
misses), overlap == serial, the sampling-mode output distribution, and the latency model."""

import pytest
import torch

import leaninfer
import leaninfer.generate.mirror as mirror
from helpers import tiny_model_dir
from leaninfer.generate.latency import StepTimes, predict_speedup, predict_step_s
from leaninfer.generate.mirror import decode_mirror, find_branch
from leaninfer.generate.mirror_draft import Branch, Window
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.generate.workers import Workers
from leaninfer.models.draft_layer import DraftLayerConfig
from leaninfer.models.eagle import EagleConfig, EagleDraft

SMALL = DraftLayerConfig(dim=32, n_heads=4, n_kv_heads=2, head_dim=8, hidden=48)
PROMPTS = [[1, 5, 6, 7, 8, 5, 6, 7], [1, 9, 3, 4, 9, 3, 4, 9, 3], [1, 12, 20, 30]]


def _window(tokens):
    return Window(list(tokens), torch.zeros(len(tokens), 4))


def test_reuse_rule_on_hand_built_branches():
    # window w = (7, 8, 9); branches start after w_1..w_j with candidate c
    branches = [Branch((5,), _window([1, 2, 3])), Branch((7, 6), _window([4, 4, 4])),
                Branch((7, 8, 9, 2), _window([6, 6, 6])), Branch((7, 3), _window([0, 0, 0]))]
    assert find_branch(branches, [], 5).window.tokens == [1, 2, 3]  # tau = 0, correction 5: hit
    assert find_branch(branches, [7], 6).window.tokens == [4, 4, 4]  # tau = 1, correction 6: hit
    assert find_branch(branches, [7], 3).window.tokens == [0, 0, 0]
    assert find_branch(branches, [7, 8, 9], 2).window.tokens == [6, 6, 6]  # all accepted, bonus 2: hit
    assert find_branch(branches, [7], 5) is None  # right candidate at the wrong depth: miss
    assert find_branch(branches, [], 6) is None  # correction not among the candidates: miss
    assert find_branch(branches, [7, 8], 6) is None  # prefix longer than the branch point: miss
    assert find_branch([], [], 1) is None


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model_dir(folder, "gemma3")
    return leaninfer.load(folder, precision="fp32")


def _draft(draft_vocab=40, seed=0, vocab=96):
    torch.manual_seed(seed)
    d = EagleDraft(EagleConfig(32, vocab, draft_vocab, [1, 2, 3], SMALL)).eval()
    d.d2t.copy_(torch.randperm(vocab)[:draft_vocab].sort().values)
    return d


def _plain(engine, p, n=24):
    return engine.generate(p, max_new_tokens=n, eos=False).token_ids


@pytest.mark.parametrize("gamma,kappa,exit_layer", [(4, 2, 1), (3, 1, 2), (1, 3, 1)])
def test_greedy_equals_plain(engine, gamma, kappa, exit_layer):
    draft = _draft()
    for p in PROMPTS:
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, gamma=gamma,
                              kappa=kappa, exit_layer=exit_layer, workers="serial")
        assert out.token_ids == _plain(engine, p)
        # every step starts from a reused branch (a hit of the step before) or a re-draft (a miss); the last
        # step's hit is never used
        assert out.stats["hits"] + out.stats["misses"] - out.stats["steps"] in (0, 1)


def test_forced_hits_every_correction_is_a_candidate(engine):
    """Draft vocabulary = the whole vocabulary and kappa = V: every correction has a precomputed branch."""
    draft = _draft(draft_vocab=96)
    for p in PROMPTS:
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, gamma=3, kappa=96,
                              workers="serial")
        assert out.token_ids == _plain(engine, p)
        assert out.stats["hits"] == out.stats["steps"] and out.stats["misses"] == 1  # only the first window


def test_forced_misses_still_lossless(engine, monkeypatch):
    """Candidates that are never the correction: every step re-drafts, output unchanged."""
    draft = _draft()
    plains = {tuple(p): _plain(engine, p) for p in PROMPTS}
    never = next(int(t) for t in draft.d2t if all(int(t) not in v for v in plains.values()))
    real = mirror.early_exit_signals

    def wrong(model, hidden, head, d2t, kappa):
        ids, logp = real(model, hidden, head, d2t, kappa)
        return torch.full_like(ids, never), logp

    monkeypatch.setattr(mirror, "early_exit_signals", wrong)
    for p in PROMPTS:
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, workers="serial")
        assert out.token_ids == plains[tuple(p)]
        assert out.stats["hits"] == 0 and out.stats["misses"] == out.stats["steps"]


def test_overlap_equals_serial(engine):
    draft = _draft(seed=3)
    for p in PROMPTS:
        serial = decode_mirror(engine.model, draft, p, 20, SamplingConfig(), set(), workers="serial")
        with Workers("threads", 1, 1) as pool:
            over = decode_mirror(engine.model, draft, p, 20, SamplingConfig(), set(), workers=pool)
        assert over.tokens == serial.tokens
        assert over.extra["hits"] == serial.extra["hits"]
    samp = SamplingConfig(temperature=1.0, seed=7)  # seeded sampling: same draws on both paths
    a = decode_mirror(engine.model, draft, PROMPTS[0], 20, samp, set(), kappa=4, workers="serial")
    b = decode_mirror(engine.model, draft, PROMPTS[0], 20, samp, set(), kappa=4, workers="threads")
    assert a.tokens == b.tokens


def test_workers_run_both_sides_and_time_them():
    with Workers("threads", 1, 1) as pool:
        a, b, t = pool.pair(lambda: torch.ones(3).sum().item(), lambda: torch.arange(4).sum().item())
    assert (a, b) == (3.0, 6) and t.wall_s >= t.exposed_s >= 0
    with pytest.raises(ValueError):
        Workers("processes")


def _exact_joint(model, prompt, cfg, n):
    """Exact probability of every n-token continuation under the target with top-k sampling."""
    from leaninfer.generate.sampling import logits_to_probs

    support = {}
    with torch.no_grad():
        def walk(prefix, prob):
            if len(prefix) == len(prompt) + n:
                support[tuple(prefix[len(prompt):])] = prob
                return
            probs = logits_to_probs(model(torch.tensor([prefix])).logits[0, -1], cfg)
            for t in torch.nonzero(probs).flatten().tolist():
                walk(prefix + [t], prob * float(probs[t]))

        walk(list(prompt), 1.0)
    return support


def test_sampling_mode_reproduces_the_target_distribution(engine):
    """Top-2 sampling, 3 tokens (the last two from Mirror steps; a full-vocabulary draft with kappa = 8 makes
    hits frequent, so reused branches and their recorded q are verified too)."""
    runs = 500
    exact, counts, hits = _sampled_joint(engine, _draft(draft_vocab=96, seed=5), runs)
    assert hits > 0
    assert set(counts) <= set(exact)
    tv = 0.5 * sum(abs(counts.get(k, 0) / runs - p) for k, p in exact.items())
    assert tv < 0.1, tv


def _sampled_joint(engine, draft, runs: int, n: int = 3):
    """Top-2 sampling of n tokens with Mirror-SD (gamma 2, kappa 8) over `runs` seeds: the exact joint
    distribution, the sampled counts per sequence and the number of reused branches (hits)."""
    cfg_fn = lambda s: SamplingConfig(temperature=1.0, top_k=2, seed=s)  # noqa: E731
    prompt = PROMPTS[2]
    exact = _exact_joint(engine.model, prompt, cfg_fn(0), n)
    counts: dict[tuple, int] = {}
    hits = 0
    for s in range(runs):
        out = decode_mirror(engine.model, draft, prompt, n, cfg_fn(s), set(), gamma=2, kappa=8, workers="serial")
        counts[tuple(out.tokens)] = counts.get(tuple(out.tokens), 0) + 1
        hits += out.extra["hits"]
    return exact, counts, hits


def test_latency_model():
    t = StepTimes(prefix_s=0.02, suffix_s=0.02, draft_refresh_s=0.005, draft_rollout_s=0.03, redraft_s=0.01,
                  verify_s=0.001)
    # exposed: rollouts exceed the suffix by 10 ms; a miss adds the serial re-draft
    assert predict_step_s(t, hit_rate=1.0) == pytest.approx(0.051)
    assert predict_step_s(t, hit_rate=0.0) == pytest.approx(0.061)
    assert predict_step_s(t, hit_rate=1.0, overlap=False) == pytest.approx(0.076)
    assert predict_speedup(t, tau=3.0, hit_rate=1.0, ar_token_s=0.03) == pytest.approx(3 * 0.03 / 0.051)


def test_bench_report_from_rows(tmp_path):
    """The bench's summary, latency check and report writer on hand-made per-question rows."""
    from leaninfer.bench.mirror import summarise, write_mirror_report

    def row(cat, secs, fw, mirror=False, ident=True):
        r = {"category": cat, "question_id": 1, "new_tokens": 9, "seconds": secs, "ttft_s": 0.1, "forwards": fw,
             "identical": ident}
        if mirror:
            r.update(prefix_s=0.1, suffix_s=0.2, draft_refresh_s=0.01, draft_rollout_s=0.1, redraft_s=0.05,
                     exposed_draft_s=0.06, accept_s=0.01, steps=fw - 1, hits=2, misses=1)
        return r

    rows = {"ar": [row("a", 0.9, 9), row("b", 0.9, 9)], "eagle": [row("a", 0.5, 5), row("b", 0.6, 5)],
            "mirror": [row("a", 0.45, 4, True), row("b", 0.5, 4, True)],
            "mirror_serial": [row("a", 0.55, 4, True), row("b", 0.6, 4, True, ident=False)],
            "mirror_eagle": [row("a", 0.6, 4, True), row("b", 0.6, 4, True)],
            "mirror_eagle_serial": [row("a", 0.7, 4, True), row("b", 0.7, 4, True)],
            "mirror kappa=4": [row("a", 0.4, 4, True), row("b", 0.4, 4, True)]}
    res = summarise(rows)
    assert res["table"]["mirror"]["a"]["hit_rate"] == pytest.approx(2 / 3)  # per category too
    assert set(res["latency_model"]["separate_draft_device"]) == {"mirror", "mirror_eagle"}
    assert res["ablations"]["mirror kappa=4"]["speedup"] == pytest.approx(1.8 / 0.8)
    assert res["table"]["mirror"]["overall"]["speedup"] == pytest.approx(1.8 / 0.95)
    assert res["headline"]["mirror"]["hit_rate"] == pytest.approx(4 / 6)
    assert not res["headline"]["mirror_serial"]["lossless"]
    assert "mirror kappa=4" in res["ablations"] and "mirror kappa=4" not in res["table"]
    assert res["latency_model"]["mirror"]["predicted_step_ms"] > 0
    # fitted on question a (prefix 0.1 s / 3 steps), checked against question b's measured step only
    lm = res["latency_model"]
    assert lm["fit"] == "half" and lm["mirror"]["step_ms"]["prefix_s"] == pytest.approx(100 / 3)
    assert lm["mirror"]["measured_step_ms"] == pytest.approx(1000 * (0.5 - 0.1) / 3)
    res.update(config={"per_category": 1, "max_new_tokens": 9, "gamma": 3, "kappa": 2, "exit_layer": None,
                       "rollout": "stream", "compare_rollouts": ["eagle"]}, precision="int8")
    _, md, png = write_mirror_report(res, tmp_path / "mirror.json")
    text = md.read_text()
    assert "Latency model" in text and "mirror_eagle_serial" in text and "speculative-streaming" in text
    assert png.exists()


# --- speculative-streaming rollouts ------------------------------------------------------------------------------
def _stream_draft(engine, vocab=None, n_streams=3, seed=0):
    from leaninfer.models.draft_lm import init_draft_lm
    from leaninfer.models.stream_draft import init_stream_draft

    torch.manual_seed(seed)
    d2t = torch.arange(engine.cfg.vocab_size) if vocab is None else vocab
    return init_stream_draft(init_draft_lm(engine.model, d2t, [0, 2]), n_streams, 1, seed).eval()


def test_rollout_block_mask():
    from leaninfer.generate.mirror_stream import rollout_block

    pos, mask = rollout_block(2, [0, 2, 1], 10)  # window w1 w2; candidates after p, after w2, after w1
    assert pos.tolist() == [11, 12, 11, 13, 12]
    assert mask.int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 0, 1, 0],
                                   [1, 0, 0, 0, 1]]


@pytest.mark.parametrize("gamma,kappa,exit_layer", [(4, 2, 1), (2, 1, 2), (1, 3, 1)])
def test_stream_rollouts_greedy_equal_plain(engine, gamma, kappa, exit_layer):
    draft = _stream_draft(engine, vocab=torch.randperm(96, generator=torch.Generator().manual_seed(1))[:40].sort()[0])
    for p in PROMPTS:
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, gamma=gamma,
                              kappa=kappa, exit_layer=exit_layer, workers="serial")
        assert out.token_ids == _plain(engine, p)


def test_stream_rollouts_forced_hits_and_misses(engine, monkeypatch):
    draft = _stream_draft(engine)
    for p in PROMPTS:  # every correction is a candidate: every step reuses a precomputed branch
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, gamma=3, kappa=96,
                              workers="serial")
        assert out.token_ids == _plain(engine, p)
        assert out.stats["hits"] == out.stats["steps"] and out.stats["misses"] == 1
    real = mirror.early_exit_signals
    monkeypatch.setattr(mirror, "early_exit_signals",
                        lambda *a: (torch.full_like(real(*a)[0], 95), real(*a)[1]))  # 95: never emitted below
    for p in PROMPTS:
        plain = _plain(engine, p)
        assert 95 not in plain
        out = engine.generate(p, max_new_tokens=24, eos=False, method="mirror", draft=draft, gamma=4,
                              workers="serial")
        assert out.token_ids == plain and out.stats["hits"] == 0


def test_stream_rollout_is_one_forward_per_step(engine, monkeypatch):
    """A branch's window comes from the main stream and the streams of its candidate, all in one draft forward."""
    from leaninfer.models.stream_draft import StreamDraft

    draft = _stream_draft(engine)
    calls = []
    real = StreamDraft.run
    monkeypatch.setattr(StreamDraft, "run", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    out = decode_mirror(engine.model, draft, PROMPTS[0], 20, SamplingConfig(), set(), gamma=4, kappa=2,
                        workers="serial")
    # one rollout forward per step, one forward per re-draft (miss), one refresh forward after a hit
    assert len(calls) <= out.extra["steps"] + out.extra["misses"] + out.extra["hits"]
    with pytest.raises(ValueError):
        decode_mirror(engine.model, draft, PROMPTS[0], 8, SamplingConfig(), set(), gamma=5)


def test_stream_overlap_equals_serial_and_sampling_distribution(engine):
    draft = _stream_draft(engine, seed=2)
    samp = SamplingConfig(temperature=1.0, seed=7)
    for p in PROMPTS[:2]:
        a = decode_mirror(engine.model, draft, p, 20, SamplingConfig(), set(), workers="serial")
        b = decode_mirror(engine.model, draft, p, 20, SamplingConfig(), set(), workers="threads")
        assert a.tokens == b.tokens
        a = decode_mirror(engine.model, draft, p, 20, samp, set(), kappa=4, workers="serial")
        b = decode_mirror(engine.model, draft, p, 20, samp, set(), kappa=4, workers="threads")
        assert a.tokens == b.tokens
    runs = 400
    exact, counts, hits = _sampled_joint(engine, draft, runs)
    assert hits > 0 and set(counts) <= set(exact)
    tv = 0.5 * sum(abs(counts.get(k, 0) / runs - p) for k, p in exact.items())
    assert tv < 0.1, tv
