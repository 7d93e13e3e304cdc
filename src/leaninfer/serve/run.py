"""Run the server with uvicorn (the `leaninfer serve` command calls `serve`)."""

from __future__ import annotations

import logging

from leaninfer.serve.config import ServeConfig

log = logging.getLogger(__name__)


def serve(engine, cfg: ServeConfig) -> None:
    """Serve `engine` until interrupted. Warns when bound beyond loopback without an API key."""
    import uvicorn

    from leaninfer.serve.app import create_app

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    app = create_app(engine, cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
