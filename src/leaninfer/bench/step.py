"""Engine measurements for `bench decode`: the verification cost curve (ms of a forward over n tokens / ms of
a one-token step), prefill time (TTFT) at fixed prompt lengths, bytes per token and the roofline (GB/s per
kernel against the machine's measured read bandwidth), and quality of a precision against fp32.

Each timing is a median over repeats; block sizes are interleaved within a repeat so that a load change
affects every size alike."""

from __future__ import annotations

import time

import torch

from leaninfer.bench.report import median
from leaninfer.models.quant import QuantLinear


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def verify_cost_curve(model, context: list[int], blocks=(1, 2, 4, 8, 16), repeats: int = 7) -> dict:
    """ms per forward of a block of n new tokens after `context` (cache holds the context), per n."""
    cache = model.new_cache(1, len(context) + max(blocks) + 1)
    times: dict[int, list[float]] = {n: [] for n in blocks}
    with torch.inference_mode():
        model(torch.tensor([context]), cache=cache, last_only=True)
        base = cache.length
        probe = torch.tensor([context[-max(blocks):] * (max(blocks) // len(context[-max(blocks):]) + 1)])

        def block(n: int) -> None:
            cache.rollback(cache.length - base)
            model(probe[:, :n], cache=cache)  # logits for every position, as verification needs

        for n in blocks:
            block(n)  # warm-up
        for _ in range(repeats):
            for n in blocks:
                times[n].append(_timed(lambda n=n: block(n)))
    ms = {str(n): 1000 * median(t) for n, t in times.items()}
    return {"ms": ms, "ratio": {k: v / ms["1"] for k, v in ms.items() if k != "1"}}


def prefill_ms(model, ids: list[int], repeats: int = 3) -> float:
    """Median ms of a prefill of `ids` that returns the last position's logits (time to first token)."""
    def run() -> None:
        cache = model.new_cache(1, len(ids) + 1)
        model(torch.tensor([ids]), cache=cache, last_only=True)

    with torch.inference_mode():
        run()
        return 1000 * median([_timed(run) for _ in range(repeats)])


def _packed_bytes(mod: QuantLinear) -> int:
    """Bytes of a quantised linear's own buffers (packed weights and scales)."""
    return sum(b.numel() * b.element_size() for b in mod.buffers(recurse=False))


def weight_bytes(model) -> dict:
    """Bytes read per decode step: quantised linears (packed weights + scales), the head, everything else
    that a step touches (norms; embedding rows are one row per token and not counted)."""
    layers = head = 0
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            n = _packed_bytes(mod)
            n += mod.bias.numel() * 4 if mod.bias is not None else 0
            if name == "lm_head":
                head += n
            else:
                layers += n
        elif isinstance(mod, torch.nn.Linear):
            n = mod.weight.numel() * mod.weight.element_size()
            head, layers = (head + n, layers) if name == "lm_head" else (head, layers + n)
    if getattr(model, "lm_head", None) is None:
        head = model.embed.weight.numel() * model.embed.weight.element_size()
    return {"layers_mb": layers / 1e6, "head_mb": head / 1e6, "total_mb": (layers + head) / 1e6}


def read_bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    """Measured memory read bandwidth: sum of a large fp32 array with the current thread count."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    t = median([_timed(x.sum) for _ in range(repeats)])
    return x.numel() * 4 / t / 1e9


def kernel_roofline(model, repeats: int = 7) -> list[dict]:
    """GB/s of each kind of quantised linear at one row (the decode step): every instance of that kind across
    the layers is run once per sweep (as a step does), after reading a 64 MB buffer that evicts them from the
    last-level cache, so the weights stream from memory; median sweep time over repeats."""
    kinds: dict[str, list[QuantLinear]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            kinds.setdefault(name.split(".")[-1], []).append(mod)
    evict = torch.ones(16 * 2**20)
    rows = []
    with torch.inference_mode():
        for kind, mods in kinds.items():
            xs = [torch.randn(1, m.in_features) for m in mods]

            def sweep(mods=mods, xs=xs) -> float:
                evict.sum()
                t0 = time.perf_counter()
                for m, x in zip(mods, xs, strict=True):
                    m(x)
                return time.perf_counter() - t0

            sweep()
            t = median([sweep() for _ in range(repeats)])
            nbytes = sum(_packed_bytes(m) for m in mods)
            m0 = mods[0]
            rows.append({"kernel": kind, "shape": f"{m0.out_features}x{m0.in_features}", "count": len(mods),
                         "mb": nbytes / 1e6, "ms": 1000 * t, "gb_per_s": nbytes / t / 1e9})
    return rows


def quality_vs_fp32(engine, reference, texts: list[str], prompts: list[str], max_len: int = 256,
                    greedy_tokens: int = 32) -> dict:
    """Perplexity change of `engine` against the fp32 `reference` on `texts`, next-token agreement, and how many
    greedy continuations of `prompts` are identical."""
    from leaninfer.eval.perplexity import agreement, perplexity

    ids = [engine.tokenizer.encode(t) for t in texts]
    ours, ref = perplexity(engine.model, ids, max_len), perplexity(reference.model, ids, max_len)
    same = sum(engine.generate(p, max_new_tokens=greedy_tokens, eos=False).token_ids
               == reference.generate(p, max_new_tokens=greedy_tokens, eos=False).token_ids for p in prompts)
    return {"ppl": ours.ppl, "ppl_fp32": ref.ppl, "ppl_delta_pct": 100 * (ours.ppl / ref.ppl - 1),
            "next_token_agreement": agreement(ours.argmax, ref.argmax),
            "greedy_identical_to_fp32": f"{same}/{len(prompts)}", "texts": len(texts), "max_len": max_len}


def long_ids(encode, n: int) -> list[int]:
    """The first `n` token ids of real passages joined together (Spec-Bench summarization and RAG turns)."""
    from leaninfer.eval.perplexity import text_corpus

    ids: list[int] = []
    for text in text_corpus():
        ids += encode(text + "\n\n")
        if len(ids) >= n:
            return ids[:n]
    raise ValueError(f"the passages hold only {len(ids)} tokens, fewer than {n}")


def llamacpp_prefill_ms(llm, n: int, repeats: int = 3) -> float:
    """llama.cpp's time to evaluate an n-token prompt (its own tokenisation of the same passages)."""
    ids = long_ids(lambda t: llm.tokenize(t.encode(), add_bos=False), n)

    def run() -> None:
        llm.reset()
        llm.eval(ids)

    run()
    return 1000 * median([_timed(run) for _ in range(repeats)])


def busy_core_decode(engine, prompt: str, tokens: int = 32, repeats: int = 3) -> dict:
    """tokens/s while another process keeps one core busy: fixed threads (all cores) vs the "auto" policy."""
    import subprocess
    import sys

    from leaninfer.generate.threads import ThreadPolicy, cores

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    policy = engine.threads
    try:
        time.sleep(1.5)  # let the monitor see the hog
        out: dict[str, list[float]] = {"fixed": [], "auto": []}
        for _ in range(repeats):
            for name, p in (("fixed", ThreadPolicy(cores())), ("auto", policy)):
                engine.threads = p
                r = engine.generate(prompt, max_new_tokens=tokens, eos=False)
                out[name].append(r.stats["tokens_per_s"])
        chosen = policy.choose()
    finally:
        engine.threads = policy
        hog.kill()
        hog.wait()
    return {"fixed_threads": cores(), "fixed_tokens_per_s": median(out["fixed"]),
            "auto_threads": chosen, "auto_tokens_per_s": median(out["auto"])}
