"""`leaninfer bench decode`: our AR decode vs transformers `generate` (fp32, same weights) vs llama.cpp
(same GGUF), in one process and one run, on a fixed Spec-Bench prompt set."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from leaninfer.bench import step
from leaninfer.bench.report import machine_info, markdown_table, median, write_json, write_markdown, write_plot
from leaninfer.eval.specbench import format_prompt, load_questions
from leaninfer.models.kernels import kernel_note

log = logging.getLogger(__name__)


@dataclass
class DecodeBenchConfig:
    model: str = "default"
    precision: str | None = None  # None = the library default
    questions: Path | None = None
    per_category: int = 1  # prompts per Spec-Bench category (13 categories)
    max_new_tokens: int = 64
    repeats: int = 3
    backends: list[str] = field(default_factory=lambda: ["ours", "ours_fp32", "hf", "llamacpp"])
    threads: int | None = None
    engine_checks: bool = True  # verify cost curve, TTFT 512/2048, roofline, busy core, quality vs fp32
    quality_texts: int = 20
    quality_prompts: int = 13

    @classmethod
    def quick(cls, **kw) -> DecodeBenchConfig:
        return cls(**{"per_category": None, "max_new_tokens": 32, "repeats": 1, "quality_texts": 4,
                      "quality_prompts": 4, **kw})


class RssSampler:
    """Samples this process's resident set size in a thread; `peak_mb` since the last reset."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.start = 0
        self._lock, self._generation = threading.Lock(), 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            generation = self._generation
            rss = self.current()
            with self._lock:  # a sample read before a reset must not raise the new peak (it did: the
                if generation == self._generation:  # llama.cpp row showed transformers' peak)
                    self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def reset(self) -> None:
        """Start a new measurement: peak and start = the RSS now."""
        with self._lock:
            self._generation += 1
            self.start = self.peak = self.current()

    @property
    def start_mb(self) -> float:
        return self.start / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def close(self) -> None:
        self._stop.set()


def _time_runs(name, fn, prompts, cfg: DecodeBenchConfig, sampler: RssSampler) -> dict:
    """fn(prompt) -> (new_tokens, ttft_s, e2e_s). Median over repeats of per-run aggregates."""
    fn(prompts[0])  # warm-up
    runs = []
    for r in range(cfg.repeats):
        toks = ttfts = tpots = 0.0
        e2e_total = 0.0
        for p in tqdm(prompts, desc=f"{name} run {r + 1}/{cfg.repeats}", leave=False):
            n, ttft, e2e = fn(p)
            toks += n
            e2e_total += e2e
            ttfts += ttft
            tpots += (e2e - ttft) / max(n - 1, 1)
        runs.append({"tokens_per_s": toks / e2e_total, "ttft_s": ttfts / len(prompts), "tpot_s": tpots / len(prompts),
                     "new_tokens": toks})
    return {
        "tokens_per_s": median([x["tokens_per_s"] for x in runs]),
        "ttft_s": median([x["ttft_s"] for x in runs]),
        "tpot_s": median([x["tpot_s"] for x in runs]),
        "new_tokens_per_run": runs[0]["new_tokens"],
        "runs": runs,
        "peak_rss_mb": sampler.peak_mb,
        "rss_at_start_mb": sampler.start_mb,  # what earlier backends left in this process
        "peak_rss_added_mb": sampler.peak_mb - sampler.start_mb,
    }


def _ours(cfg, precision):
    import leaninfer

    engine = leaninfer.load(cfg.model, precision=precision, threads=cfg.threads or "auto")

    def run(prompt):
        out = engine.generate(prompt, max_new_tokens=cfg.max_new_tokens, eos=False)
        return len(out.token_ids), out.stats["ttft_s"], out.stats["e2e_s"]

    return run, engine


def _hf(cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leaninfer.io.store import default_gguf

    gguf = default_gguf() if cfg.model == "default" else Path(cfg.model)
    if gguf.suffix != ".gguf":
        tok = AutoTokenizer.from_pretrained(gguf)
        model = AutoModelForCausalLM.from_pretrained(gguf, dtype=torch.float32).eval()
    else:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()

    def run(prompt):
        ids = tok(prompt, return_tensors="pt").input_ids
        first = {}

        class Streamer:  # records the time of the first generated token
            def put(self, value):
                if first.get("n", 0) == 1 and "t" not in first:
                    first["t"] = time.perf_counter()
                first["n"] = first.get("n", 0) + 1

            def end(self):
                pass

        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.max_new_tokens,
                                 do_sample=False, streamer=Streamer(), pad_token_id=tok.pad_token_id)
        e2e = time.perf_counter() - t0
        return out.shape[1] - ids.shape[1], first.get("t", t0 + e2e) - t0, e2e

    return run, model


def _llamacpp(cfg):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None, None
    from leaninfer.io.store import default_gguf

    gguf = default_gguf() if cfg.model == "default" else Path(cfg.model)
    from leaninfer.generate.threads import cores

    n = cfg.threads or cores()
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=n, n_threads_batch=n, verbose=False, seed=0)

    def run(prompt):
        # token ids from the low-level generator, counted one by one: the streamed completion API yields a final
        # chunk after the last token, which counted as one token more per prompt than the other backends; like
        # them (eos=False / min_new_tokens), it decodes exactly max_new_tokens greedy tokens
        t0 = time.perf_counter()
        ttft, n = None, 0
        ids = llm.tokenize(prompt.encode("utf-8"))
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            n += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
            if n >= cfg.max_new_tokens:
                break
        return n, ttft or 0.0, time.perf_counter() - t0

    return run, llm


def run_decode_bench(cfg: DecodeBenchConfig) -> dict:
    """Run every backend on the same prompts; returns the result dict (also the JSON payload)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from leaninfer.engine import DEFAULT_PRECISION

    precision = cfg.precision or DEFAULT_PRECISION
    questions = load_questions(cfg.questions, per_category=cfg.per_category)
    if cfg.per_category is None:  # quick: four categories
        questions = [q for q in questions if q.category in ("writing", "qa", "summarization", "math_reasoning")][:4]
    prompts = [format_prompt(q) for q in questions]
    sampler = RssSampler()
    engine_stats: dict = {}
    llama_ttft: dict = {}
    results: dict[str, dict | None] = {}
    notes: dict[str, str] = {}
    for backend in cfg.backends:
        gc.collect()
        sampler.reset()
        if backend == "ours":
            fn, keep = _ours(cfg, precision)
        elif backend == "ours_fp32":
            fn, keep = _ours(cfg, "fp32")
        elif backend == "hf":
            fn, keep = _hf(cfg)
        elif backend == "llamacpp":
            fn, keep = _llamacpp(cfg)
            if fn is None:
                notes["llamacpp"] = "llama-cpp-python is not installed (pip install -e '.[llamacpp]'); skipped"
                log.warning(notes["llamacpp"])
                results[backend] = None
                continue
        else:
            raise ValueError(f"unknown backend {backend!r}")
        results[backend] = _time_runs(backend, fn, prompts, cfg, sampler)
        if backend == "ours" and cfg.engine_checks:
            engine_stats = _engine_checks(keep, prompts[0])
            engine_stats["quality"] = _quality(cfg, keep, prompts)  # the timed engine, not a second load
        if backend == "llamacpp" and cfg.engine_checks:
            llama_ttft = {n: step.llamacpp_prefill_ms(keep, n) for n in (512, 2048)}
        del fn, keep
    sampler.close()
    ours, hf, lc = results.get("ours"), results.get("hf"), results.get("llamacpp")
    headline = {
        "ours_precision": precision,
        "ours_tokens_per_s": ours and ours["tokens_per_s"],
        "ours_fp32_tokens_per_s": results.get("ours_fp32") and results["ours_fp32"]["tokens_per_s"],
        "hf_tokens_per_s": hf and hf["tokens_per_s"],
        "llamacpp_tokens_per_s": lc and lc["tokens_per_s"],
        "speedup_vs_hf": (ours["tokens_per_s"] / hf["tokens_per_s"]) if ours and hf else None,
        "ratio_to_llamacpp": (ours["tokens_per_s"] / lc["tokens_per_s"]) if ours and lc else None,
        "precision": precision,
    }
    if engine_stats:
        quality = engine_stats["quality"]
        headline.update({
            "verify_cost_ratio": engine_stats["verify"]["ratio"],
            "ppl_delta_pct": quality["ppl_delta_pct"],
            "greedy_identical_to_fp32": quality["greedy_identical_to_fp32"],
            "ttft_ms_512": engine_stats["ttft_ms"]["512"], "ttft_ms_2048": engine_stats["ttft_ms"]["2048"],
            "llamacpp_ttft_ms_512": llama_ttft.get(512), "llamacpp_ttft_ms_2048": llama_ttft.get(2048),
        })
    return {
        "benchmark": "decode",
        "config": {**asdict(cfg), "questions": str(cfg.questions or "default"), "n_prompts": len(prompts)},
        "machine": machine_info(),
        "headline": headline,
        "backends": results,
        "engine": engine_stats,
        "notes": notes,
    }


def _engine_checks(engine, prompt: str) -> dict:
    """Verification cost curve, TTFT at 512/2048 tokens, bytes per token, roofline, busy-core threads."""
    model = engine.model
    ctx = step.long_ids(engine.encode, 256)
    stats = {"verify": step.verify_cost_curve(model, ctx),
             "ttft_ms": {str(n): step.prefill_ms(model, step.long_ids(engine.encode, n)) for n in (512, 2048)},
             "bytes": step.weight_bytes(model), "roofline": step.kernel_roofline(model),
             "read_bandwidth_gbs": step.read_bandwidth_gbs(), "kernels": kernel_note()}
    stats["busy_core"] = step.busy_core_decode(engine, prompt)
    return stats


def _quality(cfg, ours, prompts: list[str]) -> dict:
    import leaninfer
    from leaninfer.eval.perplexity import text_corpus

    ref = leaninfer.load(cfg.model, precision="fp32")
    return step.quality_vs_fp32(ours, ref, text_corpus(limit=cfg.quality_texts), prompts[: cfg.quality_prompts])


def reproduce_command(config: dict, json_path: Path) -> str:
    """The CLI command that reruns a result's config (options left at their default are omitted)."""
    default = asdict(DecodeBenchConfig())
    cmd = f"leaninfer bench decode --json {json_path}"
    for key in ("model", "max_new_tokens", "repeats", "quality_texts"):
        if key in config and config[key] != default[key]:
            cmd += f" --{key.replace('_', '-')} {config[key]}"
    if config.get("backends", default["backends"]) != default["backends"]:
        cmd += "".join(f" --backends {b}" for b in config["backends"])
    return cmd


LABELS = {"ours": "leaninfer AR ({p})", "ours_fp32": "leaninfer AR (fp32)", "hf": "transformers generate (fp32)",
          "llamacpp": "llama.cpp (Q4_K_M GGUF)"}


def write_decode_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    """JSON first, then markdown and PNG drawn from the saved result."""
    json_path = write_json(json_path, result)
    p = result["headline"]["ours_precision"]
    rows = []
    for name, r in result["backends"].items():
        label = LABELS[name].format(p=p)
        if r is None:
            rows.append([label, None, None, None, None, None])
        else:
            rows.append([label, r["tokens_per_s"], r["ttft_s"] * 1000, r["tpot_s"] * 1000, r["peak_rss_mb"],
                         r.get("peak_rss_added_mb")])
    h = result["headline"]
    c = result["config"]
    summary = (f"Our AR decode at the default precision ({p}): **{h['ours_tokens_per_s']:.1f} tokens/s**, "
               f"{h['speedup_vs_hf']:.2f}× transformers `generate` (fp32). " if h["speedup_vs_hf"] else "")
    if h["ratio_to_llamacpp"]:
        summary += f"llama.cpp on the same GGUF: {h['llamacpp_tokens_per_s']:.1f} tokens/s (ours = " \
                   f"{h['ratio_to_llamacpp']:.2f}× llama.cpp)."
    table = markdown_table(["backend", "tokens/s", "TTFT ms", "TPOT ms", "peak RSS MiB", "added RSS MiB"], rows,
                           digits=1)
    how = (f"{c['n_prompts']} Spec-Bench prompts (first question of each of {c['n_prompts']} categories), "
           f"{c['max_new_tokens']} new "
           f"tokens each (EOS ignored), greedy, median of {c['repeats']} runs; "
           f"{result['machine']['threads']} threads; {result['machine']['processor']}. Peak RSS is sampled "
           "during each backend's phase of the same process (backends run in turn, earlier ones freed); added RSS = "
           "peak minus the RSS when the backend's phase began (what earlier backends left behind is not counted). "
           "Every backend decodes exactly the same number of tokens per prompt.")
    md = write_markdown(json_path.with_suffix(".md"), "Decode benchmark", [
        ("", summary), ("Results", table), *_engine_sections(result), ("Method", how),
        ("Reproduce", f"`{reproduce_command(c, json_path)}`"),
        ("Notes", "\n".join(f"- {k}: {v}" for k, v in result["notes"].items()) or "none"),
    ])

    curve = result.get("engine", {}).get("verify")

    def draw(axes):
        ax = axes[0] if curve else axes
        names = [r[0] for r in rows]
        vals = [r[1] or 0 for r in rows]
        bars = ax.barh(names, vals, color=["#2a7" if "leaninfer" in n else "#888" for n in names])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_xlabel("tokens/s (higher is better)")
        ax.set_title("Gemma 3 270M greedy decode, 2-core CPU")
        ax.invert_yaxis()
        if curve:
            ns = [int(n) for n in curve["ms"]]
            axes[1].plot(ns, [curve["ms"][str(n)] / curve["ms"]["1"] for n in ns], "o-", color="#2a7")
            axes[1].set_xscale("log", base=2)
            axes[1].set_xlabel("tokens in the forward")
            axes[1].set_ylabel("ms / ms of one token")
            axes[1].set_title(f"verification cost ({p})")
            axes[1].grid(alpha=0.3)

    png = write_plot(json_path.with_suffix(".png"), draw, figsize=(12, 3.4) if curve else (7, 3),
                     ncols=2 if curve else 1)
    return json_path, md, png


def _engine_sections(result: dict) -> list[tuple[str, str]]:
    """Markdown sections for the engine checks: verification cost, TTFT, quality, bytes and roofline."""
    e, h = result.get("engine"), result["headline"]
    if not e:
        return []
    v = e["verify"]
    verify = markdown_table(["tokens in the forward", "ms", "ratio to 1 token"],
                            [[n, ms, ms / v["ms"]["1"]] for n, ms in v["ms"].items()], digits=2)
    ttft = markdown_table(["prompt tokens", "leaninfer TTFT ms", "llama.cpp TTFT ms"],
                          [[n, e["ttft_ms"][n], h.get(f"llamacpp_ttft_ms_{n}")] for n in ("512", "2048")], digits=0)
    q = e["quality"]
    quality = (f"Perplexity {q['ppl']:.3f} vs fp32 {q['ppl_fp32']:.3f} ({q['ppl_delta_pct']:+.2f}%) over {q['texts']} "
               f"passages of up to {q['max_len']} tokens; next-token agreement with fp32 "
               f"{100 * q['next_token_agreement']:.1f}%; greedy continuations identical to fp32: "
               f"{q['greedy_identical_to_fp32']} prompts. Speculative methods are lossless against plain decoding "
               "at the same precision (bit-identical rows for any block size), not against fp32.")
    b, bw = e["bytes"], e["read_bandwidth_gbs"]
    roof = markdown_table(["kernel (1 row)", "shape", "instances", "MB", "ms", "GB/s", "share of read bandwidth"],
                          [[r["kernel"], r["shape"], r["count"], r["mb"], r["ms"], r["gb_per_s"],
                            f"{100 * r['gb_per_s'] / bw:.0f}%"] for r in e["roofline"]], digits=2)
    tpot = result["backends"]["ours"]["tpot_s"] * 1000
    roofline = (f"Weights read per token: {b['total_mb']:.0f} MB (layers {b['layers_mb']:.0f}, head "
                f"{b['head_mb']:.0f}). Measured read bandwidth {bw:.1f} GB/s, so the memory floor is "
                f"{b['total_mb'] / bw:.1f} ms/token ({1000 * bw / b['total_mb']:.0f} tokens/s); measured TPOT "
                f"{tpot:.1f} ms = {b['total_mb'] / tpot:.1f} GB/s effective. Kernels: {e['kernels']}.\n\n{roof}")
    bc = e["busy_core"]
    busy = (f"With another process keeping one core busy: {bc['fixed_threads']} fixed threads "
            f"{bc['fixed_tokens_per_s']:.1f} tokens/s; the run-time policy chose {bc['auto_threads']} thread(s): "
            f"{bc['auto_tokens_per_s']:.1f} tokens/s.")
    return [("Verification cost", verify), ("Prefill (TTFT)", ttft), ("Quality against fp32", quality),
            ("Bytes per token and roofline", roofline), ("Threads under load", busy)]
