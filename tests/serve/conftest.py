"""A leaninfer server on a loopback port over a tiny random model, started once per module."""

import socket
import threading
import time
import urllib.request

import pytest

import leaninfer
from helpers import tiny_model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, engine, cfg):
        import uvicorn

        from leaninfer.serve import create_app

        self.engine, self.cfg = engine, cfg
        self.app = create_app(engine, cfg)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=cfg.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{cfg.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *a):
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model_dir(folder)
    return leaninfer.load(folder, precision="fp32")


@pytest.fixture(scope="module")
def server(tiny_engine):
    from leaninfer.serve import ServeConfig

    cfg = ServeConfig(port=free_port(), model_name="tiny", max_batch=4, max_queue=80, max_model_len=256,
                      max_tokens_cap=64, max_body_bytes=20000, profiles={"ngram": "ngram:k=3"})
    with Running(tiny_engine, cfg) as s:
        yield s
