"""`ServeConfig`: the server's settings and safety limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback by default; another address exposes the model to the network
    port: int = 8000
    model_name: str = "default"
    max_batch: int = 8  # plain requests decoded together
    max_queue: int = 64  # waiting requests (prompts) before answering 429
    max_model_len: int = 2048  # prompt + max_tokens, tokens
    max_tokens_cap: int = 1024  # largest max_tokens a request may ask for (also the chat default)
    max_body_bytes: int = 1 << 20
    max_prompts: int = 64  # prompts in one completion request
    max_stop: int = 16  # stop strings per request (each <= 256 characters)
    api_key: str | None = None  # when set, required as "Authorization: Bearer KEY" (all routes but /health)
    # named method profiles served as model ids "<model_name>:<name>" (for clients that can only set `model`)
    profiles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_model_len", "max_tokens_cap", "max_body_bytes", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        from leaninfer.request import MethodSpec

        for name, spec in self.profiles.items():
            if not name or ":" in name:
                raise ValueError(f"bad profile name {name!r}")
            MethodSpec.parse(spec)

    def profile_method(self, model: str | None) -> str | None:
        """The method spec of a profile model id ("<model_name>:<profile>"), None for any other model id."""
        if model and model.startswith(self.model_name + ":"):
            return self.profiles.get(model[len(self.model_name) + 1 :])
        return None
