"""Argument checks at the API edge: pure functions that raise one clear `TypeError` / `ValueError` before any
work is done (no model, no allocation). `Engine.generate`, `load()`, the request type, the CLI and the server
call them, so every entry point refuses the same inputs with the same words.

Rules: integers are Python/NumPy integers, never `bool`, float, str or bytes; floats are finite; a `stop`
string is one stop sequence; method options that size memory (draft length `k`, tree `depth` / `max_nodes` /
`branches`, Mirror-SD `gamma` / `kappa`, the RoE roster) are range-checked against the context and an estimate
of the KV-cache bytes they would allocate.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

# Upper bounds of method options, far above any useful setting (a 64-token draft block is already wasteful):
# they exist so that a typo cannot size a cache of millions of slots.
OPTION_BOUNDS: dict[str, tuple[int, int]] = {
    "k": (1, 64), "depth": (1, 32), "max_nodes": (1, 256), "branches": (1, 16), "max_ngram": (1, 16),
    "top_k": (1, 64), "gamma": (1, 32), "kappa": (1, 4096), "exit_layer": (0, 4096),
}
# Extra KV slots a method reserves beyond prompt + max_new_tokens, as a function of its options.
_EXTRA_SLOTS = {
    "ngram": lambda o: o.get("k", 4) + 1,
    "sd": lambda o: o.get("k", 3) + 1,
    "ngram_tree": lambda o: o.get("depth", 4) * o.get("branches", 3) + 1,
    "eagle": lambda o: o.get("max_nodes", 4) + 8,
    "medusa": lambda o: o.get("max_nodes", 4) + 8,
    "hydra": lambda o: o.get("max_nodes", 4) + 8,
    "mirror": lambda o: 2 * o.get("gamma", 4) + 8,
}
MEMORY_FRACTION = 0.5  # a request may plan to use at most this share of the machine's physical memory
MAX_ROSTER = 64


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, optional: bool = False) -> int | None:
    """`value` as an int (bool, float, str and bytes refused), within [lo, hi]."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def check_float(name: str, value, lo: float, hi: float = math.inf, optional: bool = False) -> float | None:
    """`value` as a finite float in [lo, hi] (bool, str and bytes refused; nan and inf refused)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        rng = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be a finite number {rng}, got {value}")
    return value


def validate_prompt_ids(ids, vocab_size: int) -> list[int]:
    """A non-empty sequence of int token ids in [0, vocab_size)."""
    if isinstance(ids, (bytes, bytearray, memoryview)) or not isinstance(ids, Sequence) or isinstance(ids, str):
        if not hasattr(ids, "tolist"):
            raise TypeError(f"prompt must be text or a list of int token ids, got {type(ids).__name__}")
        ids = ids.tolist()  # a tensor / array of ids
        if not isinstance(ids, list):
            ids = [ids]
    if len(ids) == 0:
        raise ValueError("empty prompt")
    out = []
    for t in ids:
        if getattr(t, "ndim", None) == 0 and hasattr(t, "item"):  # a 0-d tensor / array element
            t = t.item()
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"token ids must be ints, got {type(t).__name__} {t!r}")
        out.append(int(t))
    if min(out) < 0 or max(out) >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size})")
    return out


def normalize_stop(stop) -> list[str]:
    """None -> []; a str -> [that str] (one stop sequence, not its characters); a list/tuple of str -> list."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__} {stop!r}")


def validate_sampling_args(temperature=0.0, top_k=None, top_p=None, seed=None) -> None:
    """temperature finite >= 0; top_k int >= 1; top_p in [0, 1] (0 keeps only the most likely token); seed an
    int that torch accepts."""
    check_float("temperature", temperature, 0.0)
    check_int("top_k", top_k, 1, optional=True)
    check_float("top_p", top_p, 0.0, 1.0, optional=True)
    check_int("seed", seed, -(2**63), 2**64 - 1, optional=True)


def validate_generate_args(max_new_tokens, temperature=0.0, top_k=None, top_p=None, seed=None, stop=None,
                           method: str = "ar", methods=None) -> list[str]:
    """Every plain argument of `Engine.generate`; returns the stop sequences as a list."""
    check_int("max_new_tokens", max_new_tokens, 1)
    validate_sampling_args(temperature, top_k, top_p, seed)
    if not isinstance(method, str) and type(method).__name__ != "MethodSpec":
        raise TypeError(f"method must be a spec string such as 'eagle:depth=5', got {type(method).__name__}")
    name = method if isinstance(method, str) else method.name
    if methods is not None and isinstance(method, str) and ":" not in name and name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    return normalize_stop(stop)


def validate_generate_kwargs(kwargs: dict) -> dict:
    """The keyword shorthand of `Engine.generate` (before `GenerateRequest.from_kwargs`): plain arguments are
    checked; `stop` becomes a list (a string is one stop sequence). Returns the kwargs to build the request from."""
    kw = dict(kwargs)
    kw_stop = validate_generate_args(kw.get("max_new_tokens", 128), kw.get("temperature", 0.0), kw.get("top_k"),
                                     kw.get("top_p"), kw.get("seed"), kw.get("stop"), kw.get("method") or "ar")
    if "stop" in kw:
        kw["stop"] = kw_stop
    if "eos" in kw and not isinstance(kw["eos"], bool):
        raise TypeError(f"eos must be True or False, got {kw['eos']!r}")
    return kw


def validate_request(request, cfg, prompt_len: int) -> None:
    """A `GenerateRequest` against a model: max_new_tokens, sampling, and the memory its method, routing and
    KV policy would allocate (`validate_method_options`)."""
    s = request.sampling
    validate_generate_args(request.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed, request.stop)
    validate_method_options(request.method.name, dict(request.method.options), cfg, prompt_len,
                            request.max_new_tokens, request.routing.moe_k, request.routing.roe)
    if request.kv is not None:  # the press keeps at most the context; a larger budget or block means nothing
        check_int("kv budget", request.kv.budget, 1, cfg.max_seq_len)
        check_int("kv block", request.kv.block, 1, cfg.max_seq_len)


def kv_cache_bytes(cfg, slots: int, batch: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of a static KV cache of `slots` positions for a `ModelConfig` (keys + values, every layer)."""
    return 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * slots * bytes_per_value


def memory_limit() -> int:
    """Bytes one request may plan to allocate: MEMORY_FRACTION of physical memory (LEANINFER_MAX_BYTES overrides)."""
    env = os.environ.get("LEANINFER_MAX_BYTES")
    if env:
        return int(env)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_FRACTION)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_memory(nbytes: int, what: str) -> None:
    limit = memory_limit()
    if nbytes > limit:
        raise ValueError(f"{what} would allocate about {nbytes / 2**30:.1f} GiB, over the limit of "
                         f"{limit / 2**30:.1f} GiB (LEANINFER_MAX_BYTES)")


def validate_method_options(method: str, options: dict, cfg, prompt_len: int, max_new_tokens: int,
                            moe_k=None, roe=None) -> None:
    """Range-check the options of `method` that size memory against the context and a memory estimate, before
    anything is allocated. Unknown option names are left to the method (it raises TypeError)."""
    for name, value in options.items():
        if name in OPTION_BOUNDS and not (name == "exit_layer" and value is None):
            lo, hi = OPTION_BOUNDS[name]
            check_int(f"{method} option {name}", value, lo, hi)
    if "exit_layer" in options and options["exit_layer"] is not None:
        check_int("mirror option exit_layer", options["exit_layer"], 1, cfg.n_layers - 1)
    extra = _EXTRA_SLOTS.get(method, lambda o: 0)(options)
    slots = prompt_len + max_new_tokens + extra
    if extra > cfg.max_seq_len:
        raise ValueError(f"{method} options reserve {extra} extra cache slots, more than the context "
                         f"({cfg.max_seq_len})")
    batch = 1
    if (moe_k is not None or roe is not None) and not getattr(cfg, "is_moe", False):
        raise ValueError("moe_k / roe need an MoE model")
    if moe_k is not None:
        check_int("moe_k", moe_k, 1, cfg.n_experts)
    if roe is not None:  # a roster size, or a RoEConfig
        batch = check_int("roe roster size n", roe if isinstance(roe, numbers.Integral) else getattr(roe, "n", None),
                          1, MAX_ROSTER)
    need = kv_cache_bytes(cfg, slots, batch)
    if method == "mirror":  # kappa * (gamma + 1) batched branch rollouts of gamma + 1 tokens each
        if options.get("kappa", 2) > cfg.vocab_size:
            raise ValueError(f"mirror option kappa ({options['kappa']}) exceeds the vocabulary ({cfg.vocab_size})")
        gamma = options.get("gamma", 4)
        need += kv_cache_bytes(cfg, gamma + 1, options.get("kappa", 2) * (gamma + 1))
    check_memory(need, f"a KV cache of {slots} slots x {batch} row(s) (with the method's extra buffers)")


def validate_load_args(name_or_path, precision: str, device, precisions: Sequence[str]) -> str:
    """Model name/path type, precision and device, checked before any conversion."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    if not isinstance(precision, str) or precision not in precisions:
        raise ValueError(f"precision must be one of {tuple(precisions)}, got {precision!r}")
    if device is not None:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"invalid device {device!r}: {e}") from None
        if dev.type != "cpu" and precision != "fp32":
            from leaninfer.io import ModelLoadError

            raise ModelLoadError("weight-only quantised kernels are CPU kernels; use precision='fp32' on CUDA")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
    return precision
