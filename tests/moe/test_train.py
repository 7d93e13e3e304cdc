"""The learning-rate schedule of the MoE training loop (build distillation and PHDS / oracle SFT)."""

import math

import pytest

from leaninfer.moe.train import TrainConfig, lr_scale


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_frac=0.1)
    assert lr_scale(cfg, 0) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert lr_scale(cfg, 9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    scales = [lr_scale(cfg, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(scales, scales[1:]))  # non-increasing after warmup
    assert lr_scale(cfg, 50) == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert lr_scale(cfg, 100) == pytest.approx(0.1)
    assert lr_scale(cfg, 500) == pytest.approx(0.1)  # past the end it stays at the floor


def test_time_budget_drives_the_decay_when_it_ends_first():
    cfg = TrainConfig(steps=1000, warmup=1, max_minutes=10, time_decay=True, min_lr_frac=0.0)
    assert lr_scale(cfg, 10, seconds=0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))
    assert lr_scale(cfg, 10, seconds=300.0) == pytest.approx(0.5)  # half the budget spent
    assert lr_scale(cfg, 10, seconds=600.0) == pytest.approx(0.0)
    plain = TrainConfig(steps=1000, warmup=1, max_minutes=10)  # without time_decay the clock is ignored
    assert lr_scale(plain, 10, seconds=600.0) == pytest.approx(lr_scale(plain, 10))


def test_constant_schedule_and_validation():
    cfg = TrainConfig(steps=20, warmup=4, schedule="constant")
    assert [lr_scale(cfg, s) for s in (0, 3, 19)] == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(ValueError):
        TrainConfig(steps=10, schedule="linear")
    with pytest.raises(ValueError):
        TrainConfig(steps=10, time_decay=True)
    with pytest.raises(ValueError):
        TrainConfig(steps=10, min_lr_frac=1.5)
