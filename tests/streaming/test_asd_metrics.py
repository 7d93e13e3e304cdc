"""AVA-style frame AP against hand-computed cases."""

import math

import numpy as np
import pytest

from leaninfer.streaming.asd.metrics import ava_map, average_precision


def test_ap_hand_computed():
    # ranks: 1(+) p=1 r=1/3, 2(-), 3(+) p=2/3 r=2/3, 4(-), 5(+) p=3/5 r=1  ->  (1 + 2/3 + 3/5) / 3 = 34/45
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 1])
    assert average_precision(scores, labels) == pytest.approx(34 / 45)
    assert ava_map(scores, labels) == pytest.approx(100 * 34 / 45)


def test_ap_uses_interpolated_precision():
    # ranks: 1(-), 2(+) p=1/2 r=1/2, 3(+) p=2/3 r=1; precision at r=1/2 is lifted to 2/3 -> AP = 2/3
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_ap_edge_cases():
    assert average_precision(np.array([0.1, 0.9]), np.array([0, 1])) == pytest.approx(1.0)
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    # ignored entries (-1) do not count; input order does not matter beyond ties
    assert average_precision(np.array([5.0, 0.9, 0.1]), np.array([-1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([[0.2, 0.8]]), np.array([[1, 0]])) == pytest.approx(0.5)
