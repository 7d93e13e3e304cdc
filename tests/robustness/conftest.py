"""Fixtures of the robustness suite: a tiny random model folder and its engine (fp32, word tokenizer)."""

import pytest

from helpers import tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model_dir(folder, "gemma3")
    return folder


@pytest.fixture(scope="session")
def engine(tiny_dir):
    import leaninfer

    return leaninfer.load(tiny_dir, precision="fp32")
