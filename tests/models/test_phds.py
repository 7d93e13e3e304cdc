"""PHDS: the k sampler, the curriculum schedule and the eps soft mask."""

import pytest
import torch

from leaninfer.models.moe import route
from leaninfer.moe.phds import PHDSSchedule


def test_uniform_before_curriculum_and_anchor_after():
    s = PHDSSchedule([2, 3, 4], total_steps=100, anchor_k=2, anchor_start=0.8, ramp=0.1, seed=1)
    assert s.distribution(10) == pytest.approx({2: 1 / 3, 3: 1 / 3, 4: 1 / 3})
    assert s.anchor_weight(85) == pytest.approx(0.5)
    assert s.distribution(85)[2] == pytest.approx(0.5 + 0.5 / 3)
    assert s.distribution(95) == pytest.approx({2: 1.0, 3: 0.0, 4: 0.0})
    draws = [s.sample_k(5) for _ in range(3000)]
    assert set(draws) == {2, 3, 4} and abs(draws.count(2) / 3000 - 1 / 3) < 0.04
    assert {s.sample_k(99) for _ in range(50)} == {2}


def test_sampler_is_seeded():
    a = PHDSSchedule([1, 2, 3, 4], 10, seed=7)
    b = PHDSSchedule([1, 2, 3, 4], 10, seed=7)
    assert [a.sample_k(i) for i in range(10)] == [b.sample_k(i) for i in range(10)]


def test_bad_schedules():
    with pytest.raises(ValueError):
        PHDSSchedule([2, 3], 10, anchor_k=5)
    with pytest.raises(ValueError):
        PHDSSchedule([2, 9], 10, k_pre=4)
    with pytest.raises(ValueError):
        PHDSSchedule([], 10)


def test_soft_mask_scales_dropped_slots_and_renormalises():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    w, idx = route(logits, 3, renorm=False, keep=2, eps=1e-6)
    assert idx.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.4, 0.3, 0.2e-6]]))
    w, _ = route(logits, 3, renorm=True, keep=2, eps=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0]))
    assert w[0, 2] < 1e-5
    k, routing = PHDSSchedule([2, 3], 10, seed=0).routing(0)
    assert routing.top_k == 3 and routing.keep == k
