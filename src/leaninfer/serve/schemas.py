"""Wire schemas of the OpenAI-compatible API (pydantic), the `leaninfer` extension object, and the OpenAI
error body. Unknown top-level fields are accepted and ignored (lm-eval and `vllm bench` send extras); the
extension object is strict."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered with the OpenAI error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.code = code if code is not None else status
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class LeaninferExt(BaseModel):
    """leaninfer's own per-request fields (the `leaninfer` object of a request body)."""

    model_config = ConfigDict(extra="forbid")
    method: str | None = Field(None, description="method spec name:key=value,... e.g. 'ngram:k=4'")
    moe_k: int | None = Field(None, ge=1, description="MoE models: experts per token")
    roe: int | None = Field(None, ge=1, description="MoE models: Roster of Experts members")
    roe_tau: float | None = Field(None, ge=0)
    kv: str | dict[str, Any] | None = Field(None, description="KV policy 'press:budget=N' or {press, budget, ...}")
    kv_budget: int | None = Field(None, ge=1, description="shorthand: KV budget with the default press")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False
    leaninfer: LeaninferExt | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "model"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type", "text") == "text")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokens: list[int]
