"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over `Engine`: routes, schemas, queue, batching scheduler,
metrics. `leaninfer serve` runs it; `create_app(engine, ServeConfig(...))` builds it for tests and embedding."""

from leaninfer.serve.config import ServeConfig


def create_app(engine, cfg: ServeConfig | None = None):
    from leaninfer.serve.app import create_app as _create

    return _create(engine, cfg)


__all__ = ["ServeConfig", "create_app"]
