"""`leaninfer bench serve`: the HTTP serving path under concurrent clients.

Starts `leaninfer serve` (and llama.cpp's server, `python -m llama_cpp.server`, when `llama_cpp` is importable) as
a subprocess on a loopback port, then sends streamed greedy completions (Spec-Bench prompts, a fixed number of
new tokens: `ignore_eos`) from 1, 4 and 8 concurrent clients. Per level: output tokens/s over the wall time,
requests/s, and TTFT / TPOT percentiles (TTFT at the first chunk with text; TPOT = (e2e - TTFT) / (n - 1), as
`vllm bench serve` computes them).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leaninfer.bench.report import machine_info, markdown_table, write_json, write_markdown, write_plot


@dataclass
class ServeBenchConfig:
    model: str = "default"
    precision: str | None = None
    clients: list[int] = field(default_factory=lambda: [1, 4, 8])
    requests: int = 32  # per client level
    max_tokens: int = 128
    max_prompt_chars: int = 400  # chat-length prompts (Spec-Bench's long summarisation inputs left out)
    max_batch: int = 8
    llamacpp: bool = True
    rounds: int = 1  # passes over the client levels; each level pools its rounds
    start_timeout_s: float = 600.0
    request_timeout_s: float = 600.0

    @classmethod
    def quick(cls, **kw) -> ServeBenchConfig:
        return cls(requests=16, max_tokens=64, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, proc: subprocess.Popen, path: str, timeout: float, log=None) -> None:
    """Poll `path` until the server answers; `log` is the file holding its stderr (its last line goes into the
    error when the server exits)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = []
            if log is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"the server exited with code {proc.returncode}" + (f": {tail[-1]}" if tail else ""))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the server did not become ready")


def stream_completion(port: int, body: dict, timeout: float) -> dict:
    """One streamed completion; returns {ttft_s, e2e_s, tokens, text}."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True,
                                                         "stream_options": {"include_usage": True}}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, text, chunks, tokens = None, "", 0, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        if d.get("usage"):
            tokens = d["usage"]["completion_tokens"]
        for ch in d.get("choices") or []:
            if ch.get("text"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text += ch["text"]
                chunks += 1
    e2e = time.perf_counter() - t0
    conn.close()
    return {"ttft_s": ttft if ttft is not None else e2e, "e2e_s": e2e, "tokens": tokens or chunks, "text": text}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(port: int, prompts: list[str], clients: int, cfg: ServeBenchConfig, extra: dict,
              rounds: list[tuple[list[dict], float]] | None = None) -> dict:
    """`cfg.requests` completions from `clients` threads; `rounds`: earlier (runs, wall) of this level to pool."""
    bodies = [{"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": cfg.max_tokens,
               "temperature": 0, **extra} for i in range(cfg.requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda b: stream_completion(port, b, cfg.request_timeout_s), bodies))
    wall = time.perf_counter() - t0
    for prev_runs, prev_wall in rounds or []:
        runs, wall = runs + prev_runs, wall + prev_wall
    tokens = sum(r["tokens"] for r in runs)
    ttft = [r["ttft_s"] for r in runs]
    tpot = [(r["e2e_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in runs if r["tokens"] > 1]
    return {"clients": clients, "requests": len(runs), "wall_s": wall, "output_tokens": tokens, "_runs": runs,
            "tokens_per_s": tokens / wall, "requests_per_s": len(runs) / wall,
            **{f"ttft_p{q}_ms": 1000 * _pct(ttft, q) for q in (50, 90, 99)},
            **{f"tpot_p{q}_ms": 1000 * _pct(tpot, q) for q in (50, 90, 99)}}


def _server_cmd(backend: str, cfg: ServeBenchConfig, port: int) -> tuple[list[str], str, dict]:
    if backend == "leaninfer":
        cmd = [sys.executable, "-m", "leaninfer.cli", "serve", "--port", str(port), "--model", cfg.model,
               "--max-batch", str(cfg.max_batch), "--max-queue", str(max(64, cfg.requests))]
        if cfg.precision:
            cmd += ["--precision", cfg.precision]
        return cmd, "/health", {"ignore_eos": True}
    from leaninfer.io.store import default_gguf

    gguf = default_gguf() if cfg.model == "default" else Path(cfg.model)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
           str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1),
           "--interrupt_requests", "False"]  # by default a new request cuts the running one short
    # its server has no ignore_eos: ban the end tokens instead, so both servers generate max_tokens per request
    return cmd, "/v1/models", {"logit_bias": {str(t): -1e9 for t in _end_tokens(cfg.model)}}


def _end_tokens(model: str) -> list[int]:
    from leaninfer.engine import end_token_ids
    from leaninfer.io.store import read_model_config, resolve

    return sorted(end_token_ids(*read_model_config(resolve(model))))


def _llamacpp_available() -> bool:
    try:
        import llama_cpp.server.app  # noqa: F401  (the [server] extra: the package alone imports without it)
    except Exception:
        return False
    return True


def run_serve_bench(cfg: ServeBenchConfig) -> dict:
    from leaninfer.eval.specbench import format_prompt, load_questions

    prompts = [p for p in (format_prompt(q) for q in load_questions()) if len(p) <= cfg.max_prompt_chars]
    prompts = prompts[:: max(1, len(prompts) // 64)]  # spread over the categories
    backends = ["leaninfer"] + (["llama.cpp"] if cfg.llamacpp and _llamacpp_available() else [])
    results: dict[str, list[dict]] = {}
    for backend in backends:
        port = _free_port()
        cmd, ready, extra = _server_cmd(backend, cfg, port)
        # stderr to a file, never an unread pipe: llama.cpp logs more than a pipe buffer while loading and
        # would block on a full pipe before it ever answers
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ})
        try:
            _wait_ready(port, proc, ready, cfg.start_timeout_s, log)
            stream_completion(port, {"prompt": prompts[0], "max_tokens": 4, "temperature": 0}, 120)  # warm-up
            pooled: dict[int, list] = {c: [] for c in cfg.clients}
            for _ in range(cfg.rounds):  # levels interleaved, so slow drifts of a shared machine hit all alike
                for c in cfg.clients:
                    level = run_level(port, prompts, c, cfg, extra, pooled[c])
                    pooled[c] = [(level.pop("_runs"), level["wall_s"])]
                    results.setdefault(backend, {})[c] = level
            results[backend] = [results[backend][c] for c in cfg.clients]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {"config": asdict(cfg), "machine": {**machine_info(), "load_average_1m_at_end": os.getloadavg()[0]},
            "results": results}


def scaling(levels: list[dict]) -> float:
    """tokens/s at the most clients / tokens/s at one client."""
    by = {r["clients"]: r["tokens_per_s"] for r in levels}
    return by[max(by)] / by[1] if 1 in by and by[1] > 0 else float("nan")


def _reproduce(c: dict) -> str:
    quick = asdict(ServeBenchConfig.quick(model=c["model"]))
    base = quick if c["requests"] == quick["requests"] and c["max_tokens"] == quick["max_tokens"] else \
        asdict(ServeBenchConfig(model=c["model"]))
    args = ["leaninfer bench serve"] + (["--quick"] if base == quick else [])
    args += [f"--requests {c['requests']}"] if c["requests"] != base["requests"] else []
    args += [f"--max-tokens {c['max_tokens']}"] if c["max_tokens"] != base["max_tokens"] else []
    args += [f"--clients {n}" for n in c["clients"]] if c["clients"] != base["clients"] else []
    args += [f"--rounds {c['rounds']}"] if c.get("rounds", 1) != 1 else []
    args += [f"--model {c['model']}"] if c["model"] != "default" else []
    return " ".join(args)


def write_serve_report(result: dict, json_path: Path) -> tuple[Path, Path, Path]:
    json_path = Path(json_path)
    result["scaling_vs_1_client"] = {b: scaling(levels) for b, levels in result["results"].items()}
    write_json(json_path, result)
    headers = ["server", "clients", "requests", "tokens/request", "tokens/s", "req/s", "TTFT p50 ms", "TTFT p90 ms",
               "TTFT p99 ms", "TPOT p50 ms", "TPOT p90 ms", "TPOT p99 ms"]
    rows = [[b, r["clients"], r["requests"], r["output_tokens"] / r["requests"], r["tokens_per_s"],
             r["requests_per_s"], r["ttft_p50_ms"],
             r["ttft_p90_ms"], r["ttft_p99_ms"], r["tpot_p50_ms"], r["tpot_p90_ms"], r["tpot_p99_ms"]]
            for b, levels in result["results"].items() for r in levels]
    c = result["config"]
    ratios = ", ".join(f"{b}: {scaling(levels):.2f}x" for b, levels in result["results"].items())
    notes = (f"Streamed greedy completions of Spec-Bench prompts of at most {c['max_prompt_chars']} characters, "
             f"{c['max_tokens']} new tokens each (ignore_eos), "
             f"{c['requests']} requests per level and round ({c.get('rounds', 1)} rounds, levels interleaved); "
             f"model {c['model']}, precision {c['precision'] or 'default'}, "
             f"max batch {c['max_batch']}. Throughput at the most clients vs one client: {ratios}.\n\n"
             + ("llama.cpp here is llama-cpp-python's OpenAI server on the same GGUF: it runs one sequence at a "
                "time (requests queue; end tokens banned so every request has the same length), whereas "
                "llama.cpp's native `llama-server` batches parallel slots and is not installed here.\n\n"
                if "llama.cpp" in result["results"] else "") +
             f"Reproduce: `{_reproduce(c)}`\n\n"
             f"Machine: {result['machine']['processor']}, {result['machine']['cores']} cores, "
             f"{result['machine']['date']}" + (f", load average {load:.1f} at the end" + (
                 " (other jobs running: the levels ran under different contention)" if load > 3 else "")
                 if (load := result["machine"].get("load_average_1m_at_end")) else "")
             + ".")
    md = write_markdown(json_path.with_suffix(".md"), "Serving: throughput and latency vs concurrent clients",
                        [("", markdown_table(headers, rows, 1)), ("Notes", notes)])

    def draw(axes):
        for b, levels in result["results"].items():
            x = [r["clients"] for r in levels]
            axes[0].plot(x, [r["tokens_per_s"] for r in levels], marker="o", label=b)
            axes[1].plot(x, [r["ttft_p50_ms"] for r in levels], marker="o", label=f"{b} TTFT p50")
            axes[1].plot(x, [r["tpot_p50_ms"] for r in levels], marker="s", ls="--", label=f"{b} TPOT p50")
        axes[0].set(xlabel="concurrent clients", ylabel="output tokens/s", title="throughput")
        axes[1].set(xlabel="concurrent clients", ylabel="ms", title="latency", yscale="log")
        for ax in axes:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)

    png = write_plot(json_path.with_suffix(".png"), draw, figsize=(10, 4), ncols=2)
    return json_path, md, png
