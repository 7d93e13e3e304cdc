"""Logits parity of every supported architecture against a tiny random-initialised transformers model."""

import pytest
import torch

from helpers import ARCHES, hf_model
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder


def _ours(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    cfg, state = read_hf_dir(tmp_path)
    return build_decoder(cfg, state)


@pytest.mark.parametrize("arch", ARCHES)
def test_logits_match_transformers(arch, tmp_path):
    hf = hf_model(arch)
    ours = _ours(hf, tmp_path)
    tokens = torch.randint(3, 96, (2, 14))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens).logits
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("arch", ARCHES)
def test_incremental_decoding_matches_full_forward(arch, tmp_path):
    ours = _ours(hf_model(arch), tmp_path)
    tokens = torch.randint(3, 96, (2, 12))
    with torch.no_grad():
        full = ours(tokens).logits
        cache = ours.new_cache(2, 32)
        parts = [ours(tokens[:, :7], cache=cache).logits]
        parts += [ours(tokens[:, i : i + 1], cache=cache).logits for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_rows_are_independent(tmp_path):
    ours = _ours(hf_model("gemma3"), tmp_path)
    a, b = torch.randint(3, 96, (1, 9)), torch.randint(3, 96, (1, 5))
    padded = torch.cat([b.new_zeros(1, 4), b], 1)
    pos = torch.cat([torch.arange(9)[None], torch.cat([torch.full((1, 4), -1), torch.arange(5)[None]], 1)])
    with torch.no_grad():
        batch = ours(torch.cat([a, padded]), positions=pos).logits
        torch.testing.assert_close(batch[0], ours(a).logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batch[1, 4:], ours(b).logits[0], atol=1e-4, rtol=1e-4)


def test_early_exit_then_resume_equals_full(tmp_path):
    ours = _ours(hf_model("llama"), tmp_path)
    tokens = torch.randint(3, 96, (1, 8))
    with torch.no_grad():
        full = ours(tokens).logits
        cache = ours.new_cache(1, 16)
        mid = ours(tokens, cache=cache, layers=(0, 2))
        assert mid.logits is None and mid.hidden.shape == (1, 8, 32)
        end = ours(hidden=mid.hidden, cache=cache, start=0, layers=(2, 3))
    torch.testing.assert_close(end.logits, full, atol=1e-5, rtol=1e-5)


def test_taps_equal_early_exit_hidden_states(tmp_path):
    ours = _ours(hf_model("gemma3"), tmp_path)
    tokens = torch.randint(3, 96, (1, 7))
    with torch.no_grad():
        out = ours(tokens, taps=(1, 3))
        torch.testing.assert_close(out.taps[1], ours(tokens, layers=(0, 1)).hidden)
        torch.testing.assert_close(out.taps[3], out.hidden)
        assert ours(tokens).taps is None
