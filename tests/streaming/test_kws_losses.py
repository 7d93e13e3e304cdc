"""SAL / focal variants and R^2 regularisers."""

import pytest
import torch

from leaninfer.streaming import sal
from leaninfer.streaming.r2 import REGULARIZERS, LInf, Margin, SoftMinMax, make_regularizer

torch.set_num_threads(1)  # tiny models; the machine is shared


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)
    y = (torch.rand(3, 40) > 0.7).float()
    dist = sal.anchor_distance([[10], [], [5, 30]], 40)
    return logits, y, dist


def test_sal_reduces_to_ce_with_zero_weight():
    logits, y, dist = _batch()
    ce = sal.frame_ce(logits, y)
    torch.testing.assert_close(sal.sal_loss(logits, y, dist, lam=0.0), ce)
    # focal variants reduce to CE with gamma = 0
    torch.testing.assert_close(sal.sal_loss(logits, y, dist, lam=0.0, variant="sa+fl", gamma=0.0), ce)
    torch.testing.assert_close(sal.sal_loss(logits, y, dist, variant="safl", gamma=0.0), ce)


def test_anchor_weights_shape_and_peak():
    _, _, dist = _batch()
    assert torch.isinf(dist[1]).all()
    w = sal.anchor_weights(dist, lam=4.0, tau=5.0)
    assert w[0, 10] == pytest.approx(5.0) and w[0, 0] < w[0, 9] < w[0, 10]
    assert torch.all(w[1] == 1.0)
    for kind in sal.KERNELS:
        k = sal.anchor_kernel(torch.tensor([0.0, 3.0, float("inf")]), 5.0, kind)
        assert k[0] == 1.0 and k[2] == 0.0
    one = sal.anchor_distance([[10]], 20, one_sided=True)
    assert torch.isinf(one[0, 11]) and one[0, 9] == 1


def test_sal_weights_anchor_frames_more():
    logits = torch.zeros(1, 40, requires_grad=True)
    y = torch.zeros(1, 40)
    dist = sal.anchor_distance([[20]], 40)
    sal.sal_loss(logits, y, dist, lam=9.0, tau=3.0).backward()
    g = logits.grad.abs()[0]
    assert g[20] > 5 * g[0]
    for variant in ("sa+fl", "safl"):
        assert torch.isfinite(sal.sal_loss(logits, y, dist, variant=variant))


@pytest.mark.parametrize("name", ["linf", "margin", "smm"])
def test_regulariser_gradients_match_finite_differences(name):
    torch.manual_seed(1)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    reg = make_regularizer(name)
    assert torch.autograd.gradcheck(lambda t: reg([t]), (w,), eps=1e-6, atol=1e-4)


def test_regularisers_target_the_extremes():
    w = torch.zeros(1, 10, requires_grad=True)
    with torch.no_grad():
        w[0, :] = torch.linspace(-0.1, 0.1, 10)
        w[0, 3] = 2.0
    LInf()([w]).backward()
    assert w.grad[0, 3] > 0 and (w.grad[0].abs() > 0).sum() == 1
    w.grad = None
    Margin()([w]).backward()
    assert w.grad[0, 3] > 0 and w.grad[0, 3] == w.grad[0].abs().max()
    smm = SoftMinMax(alpha=50)([w.detach()])
    assert smm == pytest.approx(2.1, abs=0.05)
    assert make_regularizer("none")([w]) == 0 and set(REGULARIZERS) == {"none", "linf", "margin", "smm"}
    with pytest.raises(ValueError):
        make_regularizer("l2")


def test_class_balanced_sal_keeps_class_totals():
    """Anchors sit inside positive regions: plain anchor weights shift the class balance; balanced ones do not."""
    logits, y, dist = _batch()
    torch.testing.assert_close(sal.sal_loss(logits, y, dist, lam=0.0, class_balanced=True), sal.frame_ce(logits, y))
    w = sal.anchor_weights(dist, lam=4.0, tau=5.0)
    wb = sal.balance_weights(w, y, torch.ones_like(w))
    for cls in (y > 0.5, y <= 0.5):
        assert float(wb[cls].sum()) == pytest.approx(float(cls.sum()), rel=1e-5)
    # within a class the temporal shape (ratio between frames) is unchanged
    pos = (y > 0.5).nonzero()
    (b0, t0), (b1, t1) = pos[0].tolist(), pos[1].tolist()
    assert float(wb[b0, t0] / wb[b1, t1]) == pytest.approx(float(w[b0, t0] / w[b1, t1]), rel=1e-5)
    # positive anchor frames: plain SAL raises the positives' share of the weight, balanced SAL keeps it
    y2 = torch.zeros(1, 40)
    y2[0, 15:25] = 1.0
    d2 = sal.anchor_distance([[20]], 40)
    w2 = sal.anchor_weights(d2, lam=4.0, tau=5.0)
    share = float(w2[y2 > 0].sum() / w2.sum())
    share_b = float(sal.balance_weights(w2, y2, torch.ones_like(w2))[y2 > 0].sum() / 40)
    assert share > 0.25 + 0.1 and share_b == pytest.approx(0.25, rel=1e-5)
    for variant in ("sal", "sa+fl"):
        assert torch.isfinite(sal.sal_loss(logits, y, dist, variant=variant, class_balanced=True))
