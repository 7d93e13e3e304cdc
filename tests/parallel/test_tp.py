"""Tensor parallelism over gloo (two spawned ranks) against the single-process model, on every family."""

from __future__ import annotations

import json

import pytest
import torch
from tp_workers import die_on_rank1, rank_outputs

from helpers import ARCHES, hf_model, tiny_model_dir
from leaninfer.generate.loop import decode_ar
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder
from leaninfer.parallel.launch import TPLaunchError, run_ranks
from leaninfer.parallel.spd import simulate_spd

CASES = [(arch, {}, "fp32", ()) for arch in ARCHES] + [
    ("gemma3", {"num_key_value_heads": 1}, "fp32", ()),  # 1 KV head: replicated on both ranks
    ("gemma3", {}, "fp32", (0, 1, 2)),  # SPD everywhere (sandwich norms)
    ("llama", {}, "fp32", (0, 2)),  # SPD on two blocks
    ("llama", {}, "int8", ()),  # shard, then quantise per shard
]


def _tiny(arch, overrides, tmp_path):
    hf = hf_model(arch, **overrides)
    hf.save_pretrained(tmp_path)
    return read_hf_dir(tmp_path)


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """One spawn of two gloo ranks runs every case; returns (case, reference model, rank-0 output) triples."""
    cases, refs = [], []
    for i, (arch, overrides, precision, drop) in enumerate(CASES):
        cfg, state = _tiny(arch, overrides, tmp_path_factory.mktemp(f"m{i}"))
        tokens = torch.randint(3, 96, (1, 11), generator=torch.Generator().manual_seed(i))
        cases.append({"cfg": cfg, "state": state, "tokens": tokens, "drop": drop, "precision": precision})
        refs.append(build_decoder(cfg, state))
    outs = run_ranks(rank_outputs, 2, cases, timeout_s=60)
    return list(zip(cases, refs, outs, strict=True))


def _ref_logits(case, ref):
    with torch.inference_mode(), simulate_spd(ref, 2, case["drop"]):
        return ref(case["tokens"]).logits


@pytest.mark.parametrize("i", range(len(ARCHES) + 1))
def test_tp2_logits_and_greedy_equal_one_process(tp2, i):
    case, ref, out = tp2[i]
    torch.testing.assert_close(out["logits"], _ref_logits(case, ref), atol=2e-5, rtol=2e-5)
    greedy = decode_ar(ref, case["tokens"][0].tolist(), 6, SamplingConfig(), set()).tokens
    assert out["greedy"] == greedy
    n_layers = case["cfg"].n_layers
    extra = 2 * n_layers if case["cfg"].qk_norm == "full" else 0  # OLMoE: the split QK-norms' mean squares
    assert out["calls"] == 2 * n_layers + 2 + extra  # embedding + 2 per block + logits gather


@pytest.mark.parametrize("i", [len(ARCHES) + 1, len(ARCHES) + 2])
def test_spd_ranks_match_single_process_simulation(tp2, i):
    case, ref, out = tp2[i]
    torch.testing.assert_close(out["logits"], _ref_logits(case, ref), atol=2e-5, rtol=2e-5)
    assert out["calls"] == 2 * case["cfg"].n_layers + 2 - len(case["drop"])  # one sync point fewer per SPD block
    with torch.inference_mode():
        dense = ref(case["tokens"]).logits
    assert (out["logits"] - dense).abs().max() > 1e-3  # SPD is an approximation, not a no-op


def test_quantised_shards_stay_close(tp2):
    case, ref, out = tp2[-1]
    with torch.inference_mode():
        dense = ref(case["tokens"]).logits
    assert out["logits"].shape == dense.shape
    assert (out["logits"] - dense).abs().max() < 0.05 * dense.abs().max()


def test_a_rank_that_raises_is_reported():
    with pytest.raises(TPLaunchError, match="rank 1 failed on purpose"):
        run_ranks(die_on_rank1, 2, "raise", timeout_s=20)


def test_a_rank_that_vanishes_gives_an_error_not_a_hang():
    with pytest.raises(TPLaunchError, match="collective failed"):
        run_ranks(die_on_rank1, 2, "exit", timeout_s=10)


def test_cli_generate_tp2_prints_the_same_token_ids(tmp_path):
    from typer.testing import CliRunner

    from leaninfer.cli import app

    tiny_model_dir(tmp_path, "llama")
    args = ["generate", "w5 w9 w17", "--model", str(tmp_path), "--precision", "fp32", "--json",
            "--max-new-tokens", "8"]
    one = CliRunner().invoke(app, args)
    two = CliRunner().invoke(app, args + ["--tp", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["token_ids"] == b["token_ids"] and b["tp"] == 2 and b["comm_calls"] > 0
