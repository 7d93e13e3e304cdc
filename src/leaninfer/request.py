"""`GenerateRequest`: one typed request for every technique, and the one method-spec parser.

Every caller (Python API, `leaninfer generate`, the benches, the HTTP server) builds a `GenerateRequest` and hands
it to `Engine.generate`. A method is written `name:key=value,...` everywhere, e.g. `eagle:depth=5,top_k=3` or
`ngram:k=6`; `label=name:key=value` adds a display label (benches).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from leaninfer.generate.sampling import SamplingConfig

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def parse_value(v: str) -> Any:
    """A spec value: true/false/none, an int, a float, or the string itself."""
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v.strip()


@dataclass(frozen=True)
class MethodSpec:
    """A decoding method and its options: `MethodSpec.parse("eagle:depth=5,top_k=3")`."""

    name: str = "ar"
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"bad method name {self.name!r}")
        for k in self.options:
            if not k or not k.replace("_", "").isalnum():
                raise ValueError(f"bad option name {k!r} in method {self.name!r}")

    @classmethod
    def parse(cls, spec: str | MethodSpec | None) -> MethodSpec:
        """`[label=]name[:key=value,...]` -> MethodSpec; values are parsed as bool/None/int/float/str."""
        if spec is None:
            return cls()
        if isinstance(spec, MethodSpec):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"a method spec is a string like 'eagle:depth=5', got {type(spec).__name__}")
        head, _, opts = spec.strip().partition(":")
        label, _, name = head.rpartition("=")
        options: dict[str, Any] = {}
        for kv in filter(None, (s.strip() for s in opts.split(","))):
            k, eq, v = kv.partition("=")
            if not eq:
                raise ValueError(f"method option {kv!r} must be key=value (in {spec!r})")
            if k.strip() in options:
                raise ValueError(f"option {k.strip()!r} given twice in {spec!r}")
            options[k.strip()] = parse_value(v)
        return cls(name.strip().lower(), options, label.strip())

    @property
    def display(self) -> str:
        return self.label or str(self)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def parse_method_spec(spec: str | MethodSpec | None) -> MethodSpec:
    """The one method-spec parser (API, CLI, benches, server)."""
    return MethodSpec.parse(spec)


@dataclass(frozen=True)
class RoutingSpec:
    """MoE routing: `moe_k` experts per token (None = the model's own k); `roe` > 1 decodes with a Roster of
    Experts of that many members (docs/moe.md) with noise scale `roe_tau` (one value, or one per layer),
    `roe_clean_layers` clean first/last layers and noise seed `roe_seed` (None: the request's seed)."""

    moe_k: int | None = None
    roe: int | None = None
    roe_tau: float | tuple[float, ...] = 0.2
    roe_clean_layers: int = 1
    roe_seed: int | None = None

    def __post_init__(self) -> None:
        if self.moe_k is not None and (isinstance(self.moe_k, bool) or self.moe_k < 1):
            raise ValueError(f"moe_k must be an integer >= 1, got {self.moe_k}")
        if self.roe is not None and (isinstance(self.roe, bool) or self.roe < 1):
            raise ValueError(f"roe must be an integer >= 1 (roster members), got {self.roe}")
        taus = self.roe_tau if isinstance(self.roe_tau, tuple) else (self.roe_tau,)
        if any(t < 0 for t in taus) or self.roe_clean_layers < 0:
            raise ValueError("roe_tau and roe_clean_layers must be >= 0")

    @property
    def active(self) -> bool:
        return self.moe_k is not None or self.roe is not None

    @classmethod
    def from_roe(cls, moe_k: int | None, roe) -> RoutingSpec:
        """From a `leaninfer.moe.roe.RoEConfig` (or a roster size, or None)."""
        if roe is None or isinstance(roe, int):
            return cls(moe_k, roe)
        tau = tuple(roe.tau_per_layer) if isinstance(roe.tau_per_layer, list) else roe.tau_per_layer
        return cls(moe_k, roe.n, tau, roe.clean_layers, roe.seed)

    def roe_config(self, seed: int | None):
        """The `RoEConfig` of this routing (None without a roster)."""
        if self.roe is None:
            return None
        from leaninfer.moe.roe import RoEConfig

        tau = list(self.roe_tau) if isinstance(self.roe_tau, tuple) else self.roe_tau
        return RoEConfig(n=self.roe, tau_per_layer=tau, clean_layers=self.roe_clean_layers,
                         seed=self.roe_seed if self.roe_seed is not None else (seed if seed is not None else 0))


@dataclass(frozen=True)
class KVPolicy:
    """KV-cache compression of the prompt: a press (`leaninfer.cache.press.PRESSES`) evicts to `budget` tokens
    per head of every global layer (sliding layers keep their window), prefilling in blocks of `block`."""

    press: str = "snapkv"
    budget: int = 256
    block: int = 256
    sinks: int = 4

    def __post_init__(self) -> None:
        from leaninfer.cache.press import PRESSES

        if self.press not in PRESSES:
            raise ValueError(f"unknown press {self.press!r}; available: {', '.join(sorted(PRESSES))}")
        from leaninfer.validate import check_int

        check_int("kv budget", self.budget, 1)
        check_int("kv block", self.block, 1)
        check_int("kv sinks", self.sinks, 0)


@dataclass
class GenerateRequest:
    """Everything one generation needs besides the prompt.

    sampling: temperature / top-k / top-p / seed. method: a `MethodSpec` or its string. routing: MoE k / RoE.
    kv: prompt KV compression. max_new_tokens, stop strings, eos (stop at the model's EOS tokens)."""

    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    method: MethodSpec = field(default_factory=MethodSpec)
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    kv: KVPolicy | None = None
    stop: list[str] = field(default_factory=list)
    eos: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.method, str) or self.method is None:
            self.method = MethodSpec.parse(self.method)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a string or a list of strings")
        from leaninfer.generate.methods import METHODS

        if self.method.name not in METHODS:
            raise ValueError(f"unknown method {self.method.name!r}; available: {', '.join(sorted(METHODS))}")
        allowed = method_options(METHODS[self.method.name])
        unknown = sorted(set(self.method.options) - allowed)
        if unknown:
            raise ValueError(f"method {self.method.name!r} has no option {', '.join(unknown)}; options: "
                             f"{', '.join(sorted(allowed - {'draft'})) or 'none'}")
        if self.routing.roe is not None and self.method.name != "ar":
            raise ValueError("a Roster of Experts decodes with method 'ar'")
        if self.kv is not None and self.routing.active:
            raise ValueError("a KV policy cannot be combined with a MoE k or a Roster of Experts yet")

    @property
    def plain(self) -> bool:
        """Plain decoding (no method, routing or KV policy): what the server batches across requests."""
        return self.method.name == "ar" and not self.method.options and not self.routing.active and self.kv is None

    @classmethod
    def from_kwargs(cls, **kw) -> GenerateRequest:
        """The shorthand of `Engine.generate(prompt, **kw)`: max_new_tokens, temperature, top_k, top_p, seed,
        stop, eos, method (a spec string), moe_k, roe (an int or a `RoEConfig`), kv (a `KVPolicy`, a dict or a
        spec string `press:budget=...`), and any other keyword as a method option."""
        sampling = SamplingConfig(kw.pop("temperature", 0.0), kw.pop("top_k", None), kw.pop("top_p", None),
                                  kw.pop("seed", None))
        method = MethodSpec.parse(kw.pop("method", None))
        routing = RoutingSpec.from_roe(kw.pop("moe_k", None), kw.pop("roe", None))
        known = {f.name for f in fields(cls)} - {"sampling", "method", "routing", "kv"}
        plain = {k: kw.pop(k) for k in list(kw) if k in known}
        kv = kv_policy(kw.pop("kv", None))
        if kw:  # remaining keywords are method options
            method = MethodSpec(method.name, {**method.options, **kw}, method.label)
        return cls(sampling=sampling, method=method, routing=routing, kv=kv, **plain)


def method_options(fn) -> set[str]:
    """The options a METHODS function takes: its keyword parameters after the six common ones (ctx excluded)."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())[6:]
    return {p.name for p in params if p.name != "ctx" and p.kind is not p.VAR_KEYWORD}


def kv_policy(spec: KVPolicy | dict | str | None) -> KVPolicy | None:
    """A KV policy from a `KVPolicy`, a dict of its fields, or a spec string `press:budget=128,block=64`."""
    if spec is None or isinstance(spec, KVPolicy):
        return spec
    if isinstance(spec, str):
        m = MethodSpec.parse(spec)
        spec = {"press": m.name, **m.options}
    if not isinstance(spec, dict):
        raise ValueError("kv must be a KVPolicy, a dict or a 'press:budget=N' string")
    unknown = set(spec) - {f.name for f in fields(KVPolicy)}
    if unknown:
        raise ValueError(f"unknown kv field(s): {', '.join(sorted(unknown))}")
    return KVPolicy(**spec)
