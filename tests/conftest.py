"""Shared pytest set-up: the `slow` tier (real default model, long runs) runs only with --runslow."""

import pytest
import torch

from leaninfer.models.kernels import kernels_root

_KERNELS_DIR = kernels_root()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests (real model)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path_factory, monkeypatch):
    """Fast tests write converted/quantised weights to a temporary cache; slow tests use the user cache."""
    if "slow" not in request.keywords:
        # the C++ kernels stay where collection built them, so spawned ranks and CLI subprocesses load that
        # library instead of compiling their own copy (two TP ranks used to race one build)
        monkeypatch.setenv("LEANINFER_KERNELS_DIR", str(_KERNELS_DIR))
        monkeypatch.setenv("LEANINFER_CACHE", str(tmp_path_factory.getbasetemp() / "leaninfer-cache"))
