"""Sensitivity tiers, B2B distillation and the communication model (pure, one process)."""

from __future__ import annotations

import pytest
import torch

from helpers import hf_model
from leaninfer.io.hf import read_hf_dir
from leaninfer.models.build import build_decoder
from leaninfer.parallel import commmodel as cm
from leaninfer.parallel.b2b import B2BConfig, capture_inputs, distill_block
from leaninfer.parallel.sensitivity import sensitivity, tiers


def _model(arch, tmp_path):
    hf_model(arch).save_pretrained(tmp_path)
    return build_decoder(*read_hf_dir(tmp_path))


def test_cumulative_sensitivities_add_up_to_the_all_blocks_increase(tmp_path):
    model = _model("llama", tmp_path)
    tokens = torch.randint(3, 96, (2, 12))

    def score(m):
        with torch.no_grad():
            return float(m(tokens).logits.float().pow(2).mean())  # any scalar of the output will do here

    s = sensitivity(model, 2, score)
    from leaninfer.parallel.spd import simulate_spd

    with simulate_spd(model, 2, range(3)):
        every = score(model)
    assert sum(s["sensitivity"]) == pytest.approx(every - s["base"], rel=1e-5)
    assert sorted(s["order"]) == [0, 1, 2]
    iso = sensitivity(model, 2, score, mode="isolated")
    assert iso["sensitivity"][2] == pytest.approx(s["sensitivity"][2], rel=1e-5)  # the last block starts both
    assert tiers([0.0, 0.05, 3.0], 10.0) == {"insensitive": [0], "sensitive": [1], "extreme": [2]}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_b2b_lowers_the_spd_block_error(arch, tmp_path):
    model = _model(arch, tmp_path)
    tokens = torch.randint(3, 96, (4, 10))
    inputs = capture_inputs(model, tokens, [1])[1]
    before = {k: v.clone() for k, v in model.layers[1].state_dict().items()}
    state, info = distill_block(model.layers[1], 2, inputs, B2BConfig(steps=25, lr=3e-3, batch=4))
    assert info["loss_after"] < 0.8 * info["loss_before"]
    assert all(torch.equal(v, model.layers[1].state_dict()[k]) for k, v in before.items())  # original untouched
    assert set(state) == set(before)


def test_ring_model_fit_and_sync_counts():
    alpha, beta = 20e-6, 2e9
    sizes = [4, 4096, 65536, 1 << 20]
    fit = cm.fit_ring(sizes, [cm.allreduce_s(m, 2, alpha, beta) for m in sizes], 2)
    assert fit.alpha_s == pytest.approx(alpha, rel=1e-6) and fit.beta_bytes_per_s == pytest.approx(beta, rel=1e-6)
    shape = cm.Shape(n_layers=4, dim=8, vocab=16)
    per = cm.allreduce_s(32, 2, alpha, beta)
    gather = cm.allgather_s(32, 2, alpha, beta)
    assert cm.comm_per_token_s(shape, 2, 0, alpha, beta) == pytest.approx(9 * per + gather)
    assert cm.comm_per_token_s(shape, 2, 4, alpha, beta) == pytest.approx(5 * per + gather)
    assert cm.comm_per_token_s(shape, 1, 0, alpha, beta) == 0.0
    p = cm.predict(shape, 1e-3, 1.0, 2, 4, alpha, beta)
    assert p["latency_s"] == pytest.approx(0.5e-3 + 5 * per + gather)
